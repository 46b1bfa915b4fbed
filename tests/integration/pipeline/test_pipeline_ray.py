"""The pipeline end to end on a real local Ray (2 Ray Train workers) and a real S3 store
(SeaweedFS): every stage runs, a rerun with the same run id skips them all, a stage whose
record is gone is redone with the stages after it, and the published model, fetched back
and verified, passes the edge smoke test on its golden image through ONNX Runtime."""

from __future__ import annotations

import cv2
import pytest
from pipeline_helpers import quiet_console, tiny_config

from edge_agent.runtime import Detector
from edge_agent.settings import RuntimeSettings
from edge_agent.smoke import smoke_test
from slimspect.detection import to_array
from slimspect.store import ModelStore
from trainer.pipeline.run_store import RunStore
from trainer.pipeline.runner import run_pipeline
from trainer.pipeline.stages import enabled_stages
from trainer.predict import Predictor

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.timeout(1800)]


def test_pipeline_runs_resumes_and_publishes(ray_local, store_settings, tmp_path):
    config = tiny_config(tmp_path)
    run_id = "tiny-1"
    stages = list(enabled_stages(config))  # the sweep is off

    # ---- the whole pipeline ---------------------------------------------------------------
    first = run_pipeline(
        config, store_settings, run_id=run_id, workdir=tmp_path / "a", console=quiet_console()
    )
    assert first.ran == stages and first.skipped == [] and first.off == ["sweep"]
    runs = RunStore(store_settings, run_id)
    for stage in stages:
        record = runs.read_json(f"{stage}/done.json")
        assert record is not None and record["stage"] == stage, stage
        assert record == first.records[stage]
    # the training stages ran data-parallel: 2 workers, each on half of the 12 train images
    for stage in ("baseline", "sparse", "distill"):
        record = first.records[stage]
        assert record["workers"] == 2, stage
        assert record["images_per_worker"] == 6, stage
        checkpoints = [rel for rel, _ in runs.list(f"{stage}/ray") if rel.endswith("last.pt")]
        assert checkpoints, f"{stage}: no Ray Train checkpoint in the store"
    assert {r["stage"] for r in first.rows} >= {"baseline", "sparse", "pruned", "distilled"}
    assert first.published is not None

    # ---- rerun, same run id, another machine's workdir: nothing runs ------------------------
    second = run_pipeline(
        config, store_settings, run_id=run_id, workdir=tmp_path / "b", console=quiet_console()
    )
    assert second.ran == [] and second.skipped == stages
    for stage in stages:
        assert second.records[stage]["id"] == first.records[stage]["id"]
        assert (
            runs.read_json(f"{stage}/done.json")["finished_at"]
            == (first.records[stage]["finished_at"])
        )
    assert second.rows == first.rows

    # ---- an unfinished stage is redone, with the stages after it ----------------------------
    runs.delete("bench/done.json")
    third = run_pipeline(
        config, store_settings, run_id=run_id, workdir=tmp_path / "b", console=quiet_console()
    )
    assert third.ran == ["bench", "publish"]
    assert third.skipped == stages[: stages.index("bench")]
    assert third.records["bench"]["id"] != first.records["bench"]["id"]
    assert third.published["sha256"] == first.published["sha256"]  # the version is adopted

    # ---- the published model: fetched, verified, smoke-tested -----------------------------
    store = ModelStore.from_settings(store_settings)
    name, version = first.published["name"], first.published["version"]
    assert version == run_id
    fetched = store.fetch(name, version, tmp_path / "fetched")  # sha256 + signature checked
    manifest = fetched.manifest
    assert manifest.lineage.run_id == run_id
    assert manifest.lineage.dataset_hash == first.records["data"]["dataset_hash"]
    assert manifest.lineage.stage.startswith("baseline+sparse+prune+distill")
    assert manifest.metrics.params and manifest.metrics.map50 is not None
    assert manifest.golden is not None and fetched.golden_path is not None

    golden = cv2.imread(str(fetched.golden_path), cv2.IMREAD_UNCHANGED)
    found = Predictor(fetched.model_path)(golden, conf=manifest.thresholds.score)
    expected = to_array(manifest.golden.expected)
    assert found.shape == expected.shape
    assert abs(found - expected).max(initial=0.0) < 1e-3
    detector = Detector(fetched, RuntimeSettings(intra_op_threads=1, inter_op_threads=1))
    assert smoke_test(detector) == len(manifest.golden.expected)
