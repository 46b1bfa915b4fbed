"""The pipeline as a user runs it against a Ray cluster: ``slimspect pipeline run
--address`` (a separate driver process) on a two-node cluster started on this machine
(``ray start --head`` and ``ray start --address``, one CPU each, loopback ports), with the
real S3 store (SeaweedFS).

* the training workers run on both nodes (their node ids, in each stage's record) and
  the model is published; the cluster stops with nothing of it left running;
* the driver killed (SIGKILL) once a stage has finished and a later one has started,
  then rerun with the same run id: the finished stages are skipped, their records
  untouched, and the run completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_helpers import tiny_config
from ray_cluster import RayCluster

from slimspect.store import ModelStore
from trainer.pipeline.run_store import RunStore
from trainer.pipeline.stages import enabled_stages

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.timeout(1800)]

SLIMSPECT = str(Path(sys.executable).with_name("slimspect"))
TRAINING = ("baseline", "sparse", "distill")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    """Two Ray nodes of one CPU each, for this module; checked to stop cleanly."""
    c = RayCluster(nodes=2, cpus_per_node=1).start()
    try:
        yield c
    finally:
        leftover = c.stop()
    assert leftover == [], f"Ray processes still running after the stop: {leftover}"


def _env(store_env: dict[str, str], cluster: RayCluster) -> dict[str, str]:
    """The driver's environment: the store, the cluster's token, a wide console."""
    env = {**os.environ, **store_env, **cluster.client_env, "COLUMNS": "200"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    return env


def _command(config_file: Path, cluster: RayCluster, run_id: str, workdir: Path) -> list[str]:
    return [
        SLIMSPECT, "pipeline", "run", str(config_file), "--address", cluster.address,
        "--run-id", run_id, "--workdir", str(workdir),
    ]  # fmt: skip


def test_pipeline_on_a_two_node_cluster(cluster, store_settings, store_env, tmp_path):
    nodes = cluster.node_ids()
    assert len(set(nodes)) == 2
    config_file = tiny_config(tmp_path).dump(tmp_path / "pipeline.yaml")
    run_id = "two-nodes"
    done = subprocess.run(
        _command(config_file, cluster, run_id, tmp_path / "work"), env=_env(store_env, cluster),
        capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    runs = RunStore(store_settings, run_id)
    for stage in TRAINING:
        record = runs.read_json(f"{stage}/done.json")
        assert record is not None, stage
        # one worker per node: each node has one CPU and each worker takes one
        assert record["workers"] == 2, stage
        assert sorted(record["worker_nodes"]) == sorted(nodes), (stage, record["worker_nodes"])
    publish = runs.read_json("publish/done.json")
    assert publish is not None and publish["published"]
    fetched = ModelStore.from_settings(store_settings).fetch(
        publish["name"], publish["version"], tmp_path / "fetched"
    )  # sha256 and signature verified
    assert fetched.manifest.lineage.run_id == run_id
    cluster.remember()  # the workers this run started are checked at the stop too


def _wait_for(runs: RunStore, keys: tuple[str, ...], proc: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(runs.exists(k) for k in keys):
            return
        if proc.poll() is not None:
            pytest.fail(f"the pipeline ended (rc {proc.returncode}) before {keys} were stored")
        time.sleep(0.3)
    pytest.fail(f"{keys} not stored in {timeout:.0f} s")


def test_killed_driver_rerun_skips_finished_stages(cluster, store_settings, store_env, tmp_path):
    config = tiny_config(tmp_path, export={"int8": False})  # INT8 is not the point here
    config_file = config.dump(tmp_path / "pipeline.yaml")
    stages = enabled_stages(config)
    run_id = "killed-driver"
    runs = RunStore(store_settings, run_id)
    runs.ensure_bucket()  # watched from the start: the driver makes it too, a moment later
    env = _env(store_env, cluster)
    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            _command(config_file, cluster, run_id, tmp_path / "first"), env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # baseline finished (its record stored) and sparse started: kill the driver
        _wait_for(runs, ("baseline/done.json", "sparse/started.json"), proc, timeout=1200)
        cluster.remember()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    finished = {s: runs.read_json(f"{s}/done.json") for s in stages}
    assert finished["data"] is not None and finished["baseline"] is not None
    assert finished["publish"] is None
    skipped = [s for s in stages if finished[s] is not None]

    second = tmp_path / "second.log"
    with second.open("w") as out:
        rerun = subprocess.run(
            _command(config_file, cluster, run_id, tmp_path / "second"), env=env, stdout=out,
            stderr=subprocess.STDOUT, timeout=1500, check=False,
        )  # fmt: skip
    output = second.read_text()
    assert rerun.returncode == 0, log.read_text()[-3000:] + output[-5000:]
    for i, stage in enumerate(stages, 1):
        line = f"stage {i}/{len(stages)} {stage}: skipped"
        assert (line in output) == (stage in skipped), (stage, output[-5000:])
    for stage in skipped:  # untouched: the very record of the first run
        assert runs.read_json(f"{stage}/done.json") == finished[stage], stage
    for stage in stages:
        record = runs.read_json(f"{stage}/done.json")
        assert record is not None, stage
        if stage not in skipped:
            assert record["finished_at"] >= finished["baseline"]["finished_at"]
    publish = runs.read_json("publish/done.json")
    assert publish["published"] and publish["version"] == run_id
    cluster.remember()
