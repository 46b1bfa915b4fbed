"""PipelineConfig: defaults that validate, YAML loading and the errors a user sees."""

from __future__ import annotations

import pytest

from trainer.pipeline.config import PipelineConfig, PipelineConfigError, check_run_id
from trainer.pipeline.stages import STAGES, stage_settings


def test_defaults_are_valid_and_cover_every_stage():
    config = PipelineConfig()
    assert config.data.path is None  # synthetic data by default
    assert (config.ray.num_workers, config.ray.torch_threads) == (1, 2)  # fastest on 2 cores
    assert set(stage_settings(config)) == set(STAGES)


def test_load_yaml_with_partial_sections(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("train:\n  model: yolov4-s\n  imgsz: 128\nsparse:\n  s: 0.01\n")
    config = PipelineConfig.load(path)
    assert config.train.model == "yolov4-s" and config.train.imgsz == 128
    assert config.sparse.s == 0.01 and config.sparse.epochs == 20
    assert PipelineConfig.load(config.dump(tmp_path / "again.yaml")) == config


def test_empty_yaml_is_the_defaults(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("")
    assert PipelineConfig.load(path) == PipelineConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: [unclosed\n", "pipeline.yaml:2:1: not valid YAML"),
        ("- a\n- b\n", "expected a mapping of sections"),
        ("trian:\n  model: x\n", "trian: Extra inputs are not permitted"),
        ("baseline:\n  epochs: 0\n", "baseline.epochs: Input should be greater than or equal to 1"),
        ("prune:\n  percent: 50\n  max_map_drop: 0.02\n", "exclude each other"),
        ("prune:\n  percent: null\n  layers: 0\n", "nothing to prune"),
        ("publish:\n  name: Bad Name\n", "invalid model name"),
        ("bench:\n  threads: [0]\n", "thread counts must be >= 1"),
        ("sparse:\n  s: -0.1\n", "sparse.s"),
        ("sparse:\n  s: often\n", "sparse.s"),
        ("sparse:\n  bn_lr_scale: 0\n", "sparse.bn_lr_scale: Input should be greater than 0"),
        ("sparse:\n  schedule: linear\n", "sparse.schedule: Input should be 'constant'"),
        ("ray:\n  augment_on: gpu\n", "ray.augment_on: Input should be 'worker' or 'ray_data'"),
        ("ray:\n  data_workers: 0\n", "ray.data_workers: Input should be greater than or"),
        ("ray:\n  cpus_per_data_worker: -1\n", "ray.cpus_per_data_worker: Input should be"),
    ],
)
def test_bad_yaml_names_file_and_field(tmp_path, text, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(PipelineConfigError) as info:
        PipelineConfig.load(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_sparse_defaults_are_the_calibrated_recipe():
    sparse = PipelineConfig().sparse  # BENCHMARKS.md: "Sparse training that ranks channels"
    assert sparse.s == "auto" and sparse.bn_lr_scale == 8.0
    assert sparse.schedule == "local_decay" and sparse.proximal is False


@pytest.mark.parametrize(("value", "expected"), [("auto", "auto"), (0, 0.0), ("1e-3", 1e-3)])
def test_sparse_s_is_a_number_or_auto(value, expected):
    assert PipelineConfig.from_dict({"sparse": {"s": value}}).sparse.s == expected


def test_sparse_options_reach_sparse_train():
    """The sparse stage passes s, schedule, proximal and bn_lr_scale, and each is a
    keyword of sparse_train; the sweep records the ones its trials share."""
    import inspect

    from trainer.compress.sparsity import sparse_train

    config = PipelineConfig()
    settings = stage_settings(config)
    keywords = set(inspect.signature(sparse_train).parameters)
    shared = settings["sweep"]["sparse"]
    assert set(shared) == {"schedule", "proximal", "bn_lr_scale"} and set(shared) <= keywords
    assert {"s", "schedule", "proximal", "bn_lr_scale"} <= set(settings["sparse"])
    assert settings["sparse"]["s"] == "auto" and settings["sparse"]["bn_lr_scale"] == 8.0


def test_augment_on_is_a_machine_setting():
    a = PipelineConfig()
    assert a.ray.augment_on == "worker"
    b = PipelineConfig.from_dict(
        {"ray": {"augment_on": "ray_data", "data_workers": 2, "cpus_per_data_worker": 0.5}}
    )
    assert b.ray.augment_on == "ray_data" and b.ray.data_workers == 2
    assert stage_settings(a) == stage_settings(b)


def test_missing_file(tmp_path):
    with pytest.raises(PipelineConfigError, match="cannot read"):
        PipelineConfig.load(tmp_path / "nope.yaml")


def test_machine_settings_are_not_stage_settings():
    a = PipelineConfig()
    b = PipelineConfig.from_dict({"train": {"device": "cuda"}, "ray": {"num_workers": 8}})
    assert stage_settings(a) == stage_settings(b)
    c = PipelineConfig.from_dict({"train": {"batch": 32}})
    assert stage_settings(a)["sparse"] != stage_settings(c)["sparse"]
    assert stage_settings(a)["prune"] == stage_settings(c)["prune"]


@pytest.mark.parametrize("run_id", ["r1", "20240501-120000-ab12cd", "a.b_c-d"])
def test_good_run_ids(run_id):
    assert check_run_id(run_id) == run_id


@pytest.mark.parametrize("run_id", ["", "-x", "a/b", "a b", "x" * 65, "../up"])
def test_bad_run_ids(run_id):
    with pytest.raises(PipelineConfigError):
        check_run_id(run_id)


def test_example_file_is_the_defaults():
    from pathlib import Path

    example = Path(__file__).parents[3] / "configs" / "pipeline.example.yaml"
    assert PipelineConfig.load(example) == PipelineConfig()


def test_publish_canary_needs_one_target_and_the_apis_url_and_key_before_the_run():
    from trainer.pipeline.canary import check_canary_env
    from trainer.pipeline.records import PipelineError

    for canary in ({}, {"share": 0.1, "stations": ["station-1"]}):
        with pytest.raises(PipelineConfigError, match="either share or stations"):
            PipelineConfig.from_dict({"publish": {"canary": canary}})
    config = PipelineConfig.from_dict({"publish": {"canary": {"stations": ["station-1"]}}})
    with pytest.raises(PipelineError, match="set SLIMSPECT_API_URL and SLIMSPECT_API_KEY"):
        check_canary_env(config, environ={})
    with pytest.raises(PipelineError, match="set SLIMSPECT_API_KEY"):
        check_canary_env(config, environ={"SLIMSPECT_API_URL": "http://api:8080"})
    check_canary_env(config, environ={"SLIMSPECT_API_URL": "http://a", "SLIMSPECT_API_KEY": "k"})
    check_canary_env(PipelineConfig.from_dict({}), environ={})  # no canary: nothing needed
    # the canary is part of the publish stage's settings (a rerun with another is refused)
    assert stage_settings(config)["publish"]["canary"]["stations"] == ["station-1"]


def test_train_recipe_is_applied_then_overrides_win(tmp_path):
    from trainer.pipeline.config import CPU_RECIPE
    from trainer.pipeline.stages import PipelineRun, _train_args

    def args(train: dict) -> dict:
        config = PipelineConfig.from_dict({"train": train})
        run = PipelineRun(config=config, runs=None, workdir=tmp_path, cache=tmp_path,
                          console=None, records={"data": {"outputs": {"data": "d.yaml"}}})  # fmt: skip
        return _train_args(run, 3)

    default = args({})
    assert (default["optimizer"], default["accumulate"], default["warmup_epochs"]) == (
        CPU_RECIPE["optimizer"], CPU_RECIPE["accumulate"], CPU_RECIPE["warmup_epochs"])  # fmt: skip
    assert default["augment"]["mosaic"]["p"] == 0.0 and default["batch"] == 8
    # one key changed in overrides: the rest of the recipe stays
    tuned = args({"overrides": {"lr0": 0.002, "augment.mosaic.p": 0.3}})
    assert (tuned["optimizer"], tuned["lr0"], tuned["augment"]["mosaic"]["p"]) == (
        "AdamW", 0.002, 0.3)  # fmt: skip
    # no recipe: TrainConfig's own defaults
    plain = args({"recipe": {}})
    assert plain["optimizer"] == "SGD" and plain["accumulate"] == "auto"
