"""The agent as a process (``python -m edge_agent``), killed with SIGKILL mid-stream and
started again: nothing that was stored is lost, no frame is stored twice, every frame of
the camera arrives; SIGTERM stops it cleanly; and it logs JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from agent_harness import (
    aggregator_for_station,
    folder_camera,
    frame_indexes,
    stored_events,
    wait_until,
    write_config,
    write_frames,
)
from agent_models import publish_good
from aggregator_harness import run_async

from edge_agent.spool import Spool

pytestmark = [pytest.mark.s3, pytest.mark.timeout(600)]


def start_agent(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


async def wait_exit(process: subprocess.Popen, timeout: float) -> int:
    await wait_until(lambda: process.poll() is not None, timeout=timeout, what="the agent to exit")
    return process.returncode


def test_sigkill_mid_stream_then_restart_loses_nothing_and_stores_nothing_twice(
    tmp_path, ns, client, model_store, store_settings, tiny_model
):
    publish_good(model_store, tiny_model, "1.0.0")
    station = ns.station(0)
    frames = 40
    scans = tmp_path / "scans"
    write_frames(scans, range(20))  # the rest lands while the agent is dead
    log = tmp_path / "agent.log"

    async def scenario():
        async with aggregator_for_station(
            ns,
            tmp_path,
            station,
            store_settings,
            cameras=[folder_camera(scans, fps=15)],
            metrics={"host": "127.0.0.1", "port": None},
        ) as (_agg, data):
            config = write_config(tmp_path / "station.yaml", data)
            first = start_agent(config, log)
            try:
                await wait_until(
                    lambda: len(stored_events(client, station)) >= 10 or first.poll() is not None,
                    timeout=240,
                    what="10 events from the agent process",
                )
                assert first.poll() is None, log.read_text()[-3000:]
                before_kill = {e["event_id"] for e in stored_events(client, station)}
                first.send_signal(signal.SIGKILL)
                assert await wait_exit(first, 30) == -signal.SIGKILL
            finally:
                if first.poll() is None:
                    first.kill()
            write_frames(scans, range(20, frames), seed=1)
            second = start_agent(config, log)
            try:
                await wait_until(
                    lambda: (
                        len(stored_events(client, station)) >= frames or second.poll() is not None
                    ),
                    timeout=240,
                    what="every frame stored after the restart",
                )
                await asyncio.sleep(1.0)  # a duplicate sent late would show up now
                second.send_signal(signal.SIGTERM)
                code = await wait_exit(second, 60)
            finally:
                if second.poll() is None:
                    second.kill()
            return before_kill, code, Path(data["state_dir"]) / "spool.sqlite"

    before_kill, code, spool_path = run_async(scenario())
    events = stored_events(client, station)
    assert before_kill <= {e["event_id"] for e in events}  # nothing stored is lost
    assert sorted(frame_indexes(events)) == list(range(frames))  # each frame exactly once
    assert code == 0, log.read_text()[-3000:]  # SIGTERM: a clean stop
    spool = Spool(spool_path, max_bytes=1 << 30)
    assert spool.stats().depth == 0  # everything acked and removed; the file is sound
    spool.close()
    # Its logs are JSON, one object a line (OpenCV and gRPC write plain text to stderr).
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    starts = [r for r in records if r["msg"] == "agent starting"]
    assert len(starts) == 2 and all(r["station"] == station for r in starts)
    assert [r["msg"] for r in records].count("agent stopped") == 1  # SIGKILL leaves no word
