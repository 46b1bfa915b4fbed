"""The sweep stage on a real local Ray (Ray Tune, ASHA) and a real S3 store (SeaweedFS):
a tiny model, tiny images, 2 x 2 trials of 2 sparse epochs and 1 fine-tune epoch. The
report lists every trial, the choice keeps the mAP50 budget and is the smallest that
does, the Pareto plot is a PNG; the prune stage then prunes at the chosen ratio."""

from __future__ import annotations

import json

import cv2
import pytest
from pipeline_helpers import run_with_data, tiny_config

from trainer.model import build, get_spec, save_checkpoint
from trainer.pipeline.stages import run_prune
from trainer.pipeline.sweep import FINISHED, STOPPED, choose, pareto_front, run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.timeout(900)]

DROP = 0.05


def test_sweep_stage_chooses_the_smallest_model_within_the_budget(
    ray_local, store_settings, tmp_path
):
    config = tiny_config(
        tmp_path,
        sweep={
            "enabled": True,
            "s": [1e-3, 1e-2],
            "percent": [30.0, 60.0],
            "epochs": 2,
            "finetune_epochs": 1,
            "max_map_drop": DROP,
            "grace_period": 1,
            "reduction_factor": 2,
        },
    )
    # the stages before the sweep, in the store as the runner leaves them: the data set
    # and a baseline checkpoint (untrained: the sweep only needs one to start from)
    run, info = run_with_data(config, store_settings, tmp_path, "sweep-1")
    runs = run.runs
    spec = get_spec("yolov4-n", class_names=info["class_names"], input_size=64)
    baseline = run.workdir / "baseline" / "weights" / "best.pt"
    save_checkpoint(baseline, build(spec, seed=0), {"class_names": info["class_names"]})
    runs.upload_dir(run.workdir / "baseline", "baseline")
    run.records["baseline"] = {"outputs": {"checkpoint": run.rel(baseline)}, "id": "base-1"}

    stage_dir = run.workdir / "sweep"
    stage_dir.mkdir()
    outputs, info = run_sweep(run, stage_dir, "att1")

    report = json.loads((run.workdir / outputs["report"]).read_text())
    trials = report["trials"]
    assert sorted((t["s"], t["percent"]) for t in trials) == [
        (1e-3, 30.0), (1e-3, 60.0), (1e-2, 30.0), (1e-2, 60.0),
    ]  # fmt: skip
    assert {t["status"] for t in trials} <= {FINISHED, STOPPED}
    finished = [t for t in trials if t["status"] == FINISHED]
    assert finished, "ASHA lets the first trial at each rung go on: one at least finishes"
    for t in trials:
        # ASHA's view: the pruned model's mAP50 after each sparse epoch
        assert 1 <= t["epochs"] <= 2 and len(t["map50_pruned_per_epoch"]) == t["epochs"]
        assert "prune_error" not in t, t["prune_error"]
        if t["status"] == FINISHED:
            assert t["epochs"] == 2
            assert 0 < t["params"] < t["params_before"] and t["mib"] > 0
            assert 0.0 <= t["map50"] <= 1.0
    # a larger ratio at the same s gives a smaller model
    for s in (1e-3, 1e-2):
        pair = {t["percent"]: t for t in finished if t["s"] == s}
        if len(pair) == 2:
            assert pair[60.0]["params"] < pair[30.0]["params"]

    baseline_map50 = report["baseline"]["map50"]
    chosen = report["chosen"]
    assert [t for t in trials if t["chosen"]] == [chosen]
    expected, within = choose(finished, baseline_map50, DROP)
    assert chosen["trial"] == expected["trial"] and report["within_budget"] == within
    if within:  # the smallest of those within the budget
        ok = [t for t in finished if t["map50"] >= baseline_map50 - DROP - 1e-12]
        assert chosen["map50"] >= baseline_map50 - DROP - 1e-12
        assert chosen["params"] == min(t["params"] for t in ok)
    assert chosen["trial"] in report["pareto"]
    assert report["pareto"] == [t["trial"] for t in pareto_front(finished)]
    assert (info["s"], info["percent"]) == (chosen["s"], chosen["percent"])

    image = cv2.imread(str(run.workdir / outputs["plot"]))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100

    # the prune stage takes the chosen ratio (here from the baseline as the sparse model)
    run.records["sweep"] = {"outputs": outputs, "id": "sweep-1", **info}
    run.records["sparse"] = {"outputs": {"checkpoint": run.rel(baseline)}, "id": "sparse-1"}
    (run.workdir / "prune").mkdir()
    _, pruned = run_prune(run, run.workdir / "prune", "att2")
    assert pruned["percent"] == chosen["percent"]
    assert pruned["params_after"] < pruned["params_before"]
