"""The tiny pipeline of the tests: yolov4-n at 64 px, 16 synthetic images, 1 epoch a stage;
and a run whose data stage is done, for tests that start at a later stage."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from trainer.pipeline.config import PipelineConfig
from trainer.pipeline.run_store import RunStore
from trainer.pipeline.stages import PipelineRun, run_data


def tiny_config(tmp_path: Path, **sections: Any) -> PipelineConfig:
    data: dict[str, Any] = {
        "data": {"images": 16, "size": 64, "seed": 2, "val_fraction": 0.25},
        "train": {
            "model": "yolov4-n",
            "imgsz": 64,
            "batch": 8,
            "overrides": {"warmup_min_iters": 0, "plots": False},
        },
        "baseline": {"epochs": 1},
        "sparse": {"epochs": 1, "s": 1e-2},
        "prune": {"percent": 50, "layers": 1},
        "distill": {"epochs": 1},
        "export": {"int8": True, "calibration_images": 4},
        "bench": {"threads": [1], "repeats": 2, "warmup": 1},
        "publish": {"name": "tiny-pipeline", "score": 0.05},
        "ray": {
            "num_workers": 2,
            "torch_threads": 1,
            "worker_cache": str(tmp_path / "worker-cache"),
        },
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return PipelineConfig.from_dict(data)


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def run_with_data(config: PipelineConfig, store_settings, tmp_path: Path, run_id: str):
    """A PipelineRun whose data stage ran and is in the store as the runner leaves it;
    returns ``(run, data stage info)``."""
    runs = RunStore(store_settings, run_id)
    runs.ensure_bucket()
    run = PipelineRun(
        config=config, runs=runs, workdir=tmp_path / "work", cache=tmp_path / "cache",
        console=quiet_console(), store_settings=store_settings,
    )  # fmt: skip
    (run.workdir / "data").mkdir(parents=True)
    outputs, info = run_data(run, run.workdir / "data", "a")
    runs.upload_dir(run.workdir / "data", "data")
    run.records["data"] = {"outputs": outputs, "id": "data-1", **info}
    return run, info
