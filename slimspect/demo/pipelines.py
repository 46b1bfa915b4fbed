"""The pipeline YAML the demo runs: the full story or ``--quick``.

Both train ``yolov4-n`` with the pipeline's CPU recipe (``train.recipe``) on the synthetic
data set through every stage (data, baseline, sparse, prune, distill, export, bench,
publish); they differ in data, image size and epochs. Their synthetic defects are drawn
at 3x the default contrast (``data.contrast``): at the default NEU-DET-like faintness a
model from scratch needs far more than the demo's few CPU minutes (held-out mAP50 after 10
epochs 0.023, at 3x 0.094, and 0.26 after 20; BENCHMARKS.md "The demo"). The manifest's score threshold
is set low: a model trained for minutes scores its detections low, and the demo wants
the stations' defects to stream (the quick story, two epochs, shows the system, not a
detector).
The YAML is written into the demo's folder, so a user can read it and run it again with
``slimspect pipeline run``.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["pipeline_config", "pipeline_yaml"]

_FULL: dict[str, Any] = {
    "data": {"images": 400, "size": 192, "seed": 0, "val_fraction": 0.2, "contrast": 3.0},
    "train": {"model": "yolov4-n", "imgsz": 192, "batch": 8},
    "baseline": {"epochs": 20},
    "sparse": {"epochs": 4},
    "prune": {"percent": None, "max_map_drop": 0.05, "layers": 2},
    "distill": {"epochs": 4, "teacher": "baseline"},
    "export": {"int8": True, "calibration_images": 32},
    "bench": {"threads": [1, 2], "repeats": 20, "warmup": 5},
    "publish": {"score": 0.1},
    "ray": {"num_workers": 1, "torch_threads": 2, "cpus_per_worker": 1.0},
}  # fmt: skip

_QUICK: dict[str, Any] = {
    "data": {"images": 40, "size": 96, "seed": 0, "val_fraction": 0.25, "contrast": 3.0},
    "train": {"model": "yolov4-n", "imgsz": 96, "batch": 8,
              "overrides": {"warmup_min_iters": 0, "plots": False}},
    "baseline": {"epochs": 2},
    "sparse": {"epochs": 1, "s": 0.001},  # too few steps to measure s ("auto")
    "prune": {"percent": 30, "layers": 1},
    "distill": {"epochs": 1, "teacher": "baseline"},
    "export": {"int8": False},
    "bench": {"threads": [1], "repeats": 5, "warmup": 1},
    "publish": {"score": 0.05},
    "ray": {"num_workers": 1, "torch_threads": 2, "cpus_per_worker": 1.0},
}  # fmt: skip


def pipeline_config(
    *, quick: bool, model_name: str, version: str, canary: str = "station-1"
) -> dict[str, Any]:
    """The demo's pipeline settings: publish ``model_name/version``, then start its canary
    rollout on the station ``canary`` (through the stack's API)."""
    config = {k: dict(v) for k, v in (_QUICK if quick else _FULL).items()}
    config["publish"] = {**config["publish"], "name": model_name, "version": version,
                         "canary": {"stations": [canary]}}  # fmt: skip
    return config


def pipeline_yaml(config: dict[str, Any], *, quick: bool) -> str:
    kind = "slimspect demo --quick" if quick else "slimspect demo"
    header = (
        f"# Written by '{kind}'. Every key: configs/pipeline.example.yaml.\n"
        "# Run it again: slimspect pipeline run THIS_FILE (source the stack's env.sh first)\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)
