"""``slimspect up`` / ``status`` / ``down`` on real parts: every process of the stack runs and
answers, the stations reach the API, and ``down`` leaves no process behind.

Each command runs as a sub-process, the way a user types it. The process tree is read from
``/proc`` by the test (stack_harness.py): every recorded pid, everything in their sessions,
every descendant, and every process whose working directory is in the state directory.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from stack_harness import process_tree, slimspect, stack_json, survivors

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

UP_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``slimspect up --stations 2 --no-ray`` in a fresh state dir; ``down`` at the end anyway."""
    state_dir = tmp_path_factory.mktemp("stack") / "state"
    result = slimspect("up", "--stations", "2", "--no-ray", "--state-dir", str(state_dir),
                       timeout_s=UP_TIMEOUT_S)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("redis", "s3", "aggregator", "api", "station-1", "station-2"):
        assert name in result.stdout
    try:
        yield state_dir
    finally:
        slimspect("down", "--state-dir", str(state_dir))


def test_status_shows_every_process_running(stack: Path) -> None:
    result = slimspect("status", "--state-dir", str(stack), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"redis", "s3", "aggregator", "api", "station-1", "station-2"}
    assert all(r["alive"] and r["answering"] for r in rows.values()), rows
    assert rows["aggregator"]["detail"] == "SERVING"
    # No model is published yet: the stations run, and say so.
    assert "no model yet" in rows["station-1"]["detail"]

    table = slimspect("status", "--state-dir", str(stack))
    assert table.returncode == 0 and "running" in table.stdout


def test_api_answers_and_lists_both_stations_after_their_heartbeat(stack: Path) -> None:
    recorded = stack_json(stack)
    api = recorded["endpoints"]["api"]
    key = Path(recorded["credentials"]["operator_key"]).read_text().strip()
    assert httpx.get(f"{api}/healthz", timeout=10).status_code == 200
    deadline = time.monotonic() + 60
    while True:
        reply = httpx.get(f"{api}/v1/stations", headers={"X-API-Key": key}, timeout=10)
        assert reply.status_code == 200, reply.text
        online = {s["station"] for s in reply.json() if s["status"] == "online"}
        if online == {"station-1", "station-2"} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert online == {"station-1", "station-2"}
    assert httpx.get(f"{api}/v1/stations", timeout=10).status_code == 401  # keys are enforced


def test_aggregator_health_answers(stack: Path) -> None:
    address = stack_json(stack)["endpoints"]["aggregator"]
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_env_file_describes_the_stack(stack: Path) -> None:
    recorded = stack_json(stack)
    env = (stack / "env.sh").read_text()
    assert f"SLIMSPECT_API_URL='{recorded['endpoints']['api']}'" in env
    assert f"SLIMSPECT_STORE_ENDPOINT='{recorded['endpoints']['s3']}'" in env
    assert (stack / "env.sh").stat().st_mode & 0o077 == 0  # secrets: owner only


def test_up_again_while_running_is_refused(stack: Path) -> None:
    before = stack_json(stack)
    result = slimspect("up", "--stations", "2", "--no-ray", "--state-dir", str(stack))
    assert result.returncode != 0
    assert "already runs" in result.stderr
    assert stack_json(stack)["services"] == before["services"]  # nothing touched


def test_down_leaves_no_process_behind(stack: Path) -> None:
    recorded = stack_json(stack)
    tree = process_tree([s["pid"] for s in recorded["services"]], stack)
    assert len(tree) >= len(recorded["services"])

    result = slimspect("down", "--state-dir", str(stack))
    assert result.returncode == 0, result.stdout + result.stderr
    order = [
        line.split(": ")[1].split(" ")[0] for line in result.stdout.splitlines() if ": " in line
    ]
    assert order[:2] == ["station-2", "station-1"] or order[:2] == ["station-1", "station-2"]
    assert order[2:] == ["api", "aggregator", "s3", "redis"]  # reverse start order
    assert survivors(tree) == []
    assert not (stack / "stack.json").exists()

    again = slimspect("down", "--state-dir", str(stack))
    assert again.returncode == 0 and "nothing to stop" in again.stdout

    status = slimspect("status", "--state-dir", str(stack))
    assert status.returncode == 3 and "nothing running" in status.stdout
    # Data and credentials stay for the next `up`.
    assert (stack / "redis").is_dir() and (stack / "credentials" / "operator.key").is_file()


def test_a_process_that_fails_to_start_stops_the_rest(tmp_path: Path) -> None:
    # A rollout setting that does not validate: `api serve` (and nothing else) exits at once.
    env = {**os.environ, "SLIMSPECT_ROLLOUT_SOAK_S": "-1"}
    state_dir = tmp_path / "state"
    result = slimspect("up", "--stations", "1", "--no-ray", "--state-dir", str(state_dir),
                       timeout_s=UP_TIMEOUT_S, env=env)  # fmt: skip
    assert result.returncode == 1
    assert "api exited while starting" in result.stderr
    assert "soak_s" in result.stderr  # the tail of the API's log
    assert "stopped: redis" in result.stdout
    assert not (state_dir / "stack.json").exists()
    assert survivors(process_tree([], state_dir)) == []
