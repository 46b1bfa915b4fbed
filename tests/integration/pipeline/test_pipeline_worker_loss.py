"""A training worker is killed mid-stage: Ray Train restarts the worker group, which
resumes from the last checkpoint in the S3 store and finishes the stage."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from pipeline_helpers import run_with_data, tiny_config

from trainer.pipeline.ray_train import fit_stage
from trainer.pipeline.stages import _train_args

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.timeout(1800)]

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train v2 writes it on registering
EPOCHS = 8  # the kill comes after the first checkpoint: the rest must still be ahead


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below ``root`` (from /proc)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = {}
    for pid in parents:
        p = pid
        while p in parents and p > 1:
            p = parents[p]
            if p == root:
                found[pid] = commands.get(pid, "")
                break
    return found


def _train_workers() -> dict[int, str]:
    return {
        pid: cmd
        for pid, cmd in _descendants(os.getpid()).items()
        if cmd.startswith("ray::RayTrainWorker")
    }


def _registered_checkpoint(runs) -> bool:
    """Whether Ray Train's checkpoint manager snapshot in the store names a checkpoint."""
    for rel, _ in runs.list("baseline/ray"):
        if rel.endswith(SNAPSHOT):
            state = runs.read_json(rel) or {}
            if state.get("latest_checkpoint_result"):
                return True
    return False


def test_lost_worker_resumes_from_last_checkpoint(ray_local, store_settings, tmp_path):
    config = tiny_config(tmp_path, ray={"max_failures": 2})
    run, _ = run_with_data(config, store_settings, tmp_path, "lost-worker")
    runs, data = run.runs, run.records["data"]["outputs"]["data"]

    result: dict = {}
    earlier = set(_train_workers())  # idle workers of earlier tests on the session's Ray

    def fit() -> None:
        try:
            result["metrics"] = fit_stage(
                kind="baseline", stage="baseline", runs=runs, attempt="a1",
                train_args={**_train_args(run, EPOCHS), "data": data}, files=[],
                options={}, out_dir=tmp_path / "out", num_workers=2, cpus_per_worker=1.0,
                torch_threads=1, max_failures=2, cache=run.cache,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    # wait for checkpoints in the store, then kill a training worker
    killed = None
    deadline = time.monotonic() + 1200
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        # Kill only once Ray Train's controller has registered a checkpoint: it writes its
        # snapshot to the store then. An uploaded checkpoint is not enough (under load the
        # controller may register it seconds later, and a restart before that starts afresh).
        if _registered_checkpoint(runs):
            workers = [pid for pid in _train_workers() if pid not in earlier]
            if workers:
                killed = max(workers)
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.5)
    assert killed is not None, "no checkpoint appeared, or no training worker to kill"
    thread.join(timeout=1500)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    metrics = result["metrics"]
    assert metrics["epoch"] == EPOCHS
    # the restarted group went on from a checkpoint: it trained fewer than all epochs' images
    assert 0 < metrics["images_per_worker"] < EPOCHS * 6
    assert (tmp_path / "out" / "weights" / "last.pt").is_file()
    rows = (tmp_path / "out" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + EPOCHS
