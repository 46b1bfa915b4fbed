"""PipelineConfig: defaults that validate, YAML loading and the errors a user sees."""

from __future__ import annotations

import pytest

from trainer.pipeline.config import PipelineConfig, PipelineConfigError, check_run_id
from trainer.pipeline.stages import STAGES, stage_settings


def test_defaults_are_valid_and_cover_every_stage():
    config = PipelineConfig()
    assert config.data.path is None  # synthetic data by default
    assert config.ray.num_workers == 2
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
    ],
)
def test_bad_yaml_names_file_and_field(tmp_path, text, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    with pytest.raises(PipelineConfigError) as info:
        PipelineConfig.load(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


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
