"""The tiny pipeline end to end with ``ray.augment_on: ray_data``: the training stages'
workers stream their batches from Ray Data (real local Ray, real S3 store); every stage
runs and the model is published; and the baseline it trained is, weight for weight, the
one the same stage trains augmenting in the workers' own processes."""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import quiet_console, tiny_config

from trainer.pipeline.ray_train import fit_stage
from trainer.pipeline.run_store import RunStore
from trainer.pipeline.runner import run_pipeline
from trainer.pipeline.stages import PipelineRun, _train_args, enabled_stages

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.timeout(1800)]


def _weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_pipeline_with_ray_data_augmentation(ray_local, store_settings, tmp_path):
    # 2 training workers of 0.5 CPU and one augmentation task of 0.5 CPU each: the
    # session's Ray has 2 CPUs
    ray = {"augment_on": "ray_data", "cpus_per_worker": 0.5, "cpus_per_data_worker": 0.5}
    config = tiny_config(tmp_path, ray=ray)
    run_id = "tiny-ray-data"
    stages = list(enabled_stages(config))
    result = run_pipeline(
        config, store_settings, run_id=run_id, workdir=tmp_path / "a", console=quiet_console()
    )
    assert result.ran == stages and result.published is not None
    for stage in ("baseline", "sparse", "distill"):
        record = result.records[stage]
        assert record["augment_on"] == "ray_data", stage  # as the workers reported
        assert record["workers"] == 2 and record["images_per_worker"] == 6, stage

    # the same baseline, augmenting in the workers: the same weights
    runs = RunStore(store_settings, run_id)
    run = PipelineRun(
        config=config, runs=runs, workdir=tmp_path / "a" / run_id,
        cache=tmp_path / "worker-cache" / run_id, console=quiet_console(),
        store_settings=store_settings, records=result.records,
    )  # fmt: skip
    data_rel = result.records["data"]["outputs"]["data"]
    metrics = fit_stage(
        kind="baseline", stage="check", runs=runs, attempt="in-process",
        train_args={**_train_args(run, config.baseline.epochs), "data": data_rel}, files=[],
        options={}, out_dir=tmp_path / "in-process", num_workers=2, cpus_per_worker=1.0,
        torch_threads=1, max_failures=0, cache=run.cache,
        versions={"data": str(result.records["data"]["id"])}, augment_on="worker",
    )  # fmt: skip
    assert metrics["ray_data"] == 0  # the workers say where they augmented
    ray_data = _weights(run.workdir / "baseline" / "weights" / "last.pt")
    in_process = _weights(tmp_path / "in-process" / "weights" / "last.pt")
    assert ray_data.keys() == in_process.keys()
    for key, value in ray_data.items():
        assert torch.equal(value, in_process[key]), key


def test_ray_data_needs_a_free_cpu(ray_local, store_settings, tmp_path):
    """Training workers that hold every CPU leave an augmentation task none: an error
    that says what to change, not a stage that waits forever."""
    runs = RunStore(store_settings, "no-cpu")
    with pytest.raises(ValueError, match="cpus_per_data_worker"):
        fit_stage(
            kind="baseline", stage="baseline", runs=runs, attempt="a", train_args={},
            files=[], options={}, out_dir=tmp_path / "out", num_workers=2,
            cpus_per_worker=1.0, torch_threads=1, max_failures=0, cache=tmp_path / "c",
            augment_on="ray_data",
        )  # fmt: skip
