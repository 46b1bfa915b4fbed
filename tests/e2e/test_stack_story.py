"""The whole system on the embedded stack, as `slimspect demo --quick` leaves it.

The demo runs once (module fixture): `slimspect up` with two stations, the tiny pipeline
on the stack's Ray into its store, a canary on station-1 promoted by the rollout gate,
defects streaming. Then, on the same stack: a second version rolled out as a canary and
promoted; a third whose model bytes were tampered with in the store after signing, which
the canary station refuses and the gate rolls back; and finally the stations are stopped
and what each says it had acknowledged is compared with what the API counts.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from stack_helpers import slimspect, stop_gracefully, stopped_totals, store_from_env

from slimspect.api_client import Api
from slimspect.demo.api_watch import wait_until
from slimspect.embedded.stack_env import read_env_file
from slimspect.embedded.stack_state import StackState
from slimspect.store import MODEL_OBJECT, ModelStore, version_prefix

pytestmark = pytest.mark.timeout(1800)

MODEL = "slimspect-demo"
STATIONS = ["station-1", "station-2"]


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str]
    demo_output: str
    api: Api
    store: ModelStore

    @property
    def state_dir(self) -> Path:
        return self.workdir / "stack"

    def slimspect(self, *args: str) -> subprocess.CompletedProcess:
        return slimspect(*args, env=self.env)

    def versions(self) -> dict[str, str | None]:
        return {s["station"]: s["model_version"] for s in self.api.stations()}

    def rollout(self, version: str) -> dict | None:
        return next((r for r in self.api.rollouts() if r["version"] == version), None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    work = tmp_path_factory.mktemp("story")
    try:
        demo = subprocess.run(
            [sys.executable, "-m", "slimspect.cli", "demo", "--quick", "--workdir", str(work),
             "--stream-s", "5", "--timeout", "300"],
            capture_output=True, text=True, timeout=1500, check=False,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
        env = read_env_file(work / "stack" / "env.sh")
        yield Stack(work, env, demo.stdout, Api(env["SLIMSPECT_API_URL"], env["SLIMSPECT_API_KEY"]),
                    store_from_env(env))  # fmt: skip
    finally:
        if (work / "stack" / "stack.json").exists():
            subprocess.run(
                [sys.executable, "-m", "slimspect.cli", "down", "--state-dir", str(work / "stack")],
                timeout=180, check=False,
            )  # fmt: skip


def _first_version(stack: Stack) -> str:
    return next(r["version"] for r in stack.api.rollouts() if r["version"].startswith("demo-"))


def _publish_copy(stack: Stack, version: str, tmp_path: Path) -> None:
    """Publish the demo's model again as ``version`` (signed with the stack's key)."""
    fetched = stack.store.fetch(MODEL, _first_version(stack), tmp_path / "fetched")
    manifest = fetched.manifest.model_copy(update={"version": version})
    stack.store.publish(fetched.model_path, manifest, golden_png=fetched.golden_path)


def _start_canary(stack: Stack, version: str) -> None:
    started = stack.slimspect("rollout", "start", MODEL, version, "--station", STATIONS[0],
                              "--soak-s", "5", "--reason", "e2e")  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr


def test_the_demo_trains_publishes_and_promotes_its_canary_to_every_station(stack):
    version = _first_version(stack)
    assert "promoted by rollout-gate" in stack.demo_output
    assert "demo finished" in stack.demo_output
    assert stack.versions() == dict.fromkeys(STATIONS, version)
    rollout = stack.rollout(version)
    assert rollout["state"] == "promoted" and rollout["stations"] == [STATIONS[0]]
    assert [m["version"] for m in stack.api.get("/v1/models") if m["name"] == MODEL] == [version]
    # defects went through the aggregator into Redis, made by the rolled-out model
    page = stack.api.defects(limit=20)
    assert page["items"], "no defect reached the API"
    assert {d["model_version"] for d in page["items"]} == {version}


def test_a_second_version_goes_to_the_canary_then_to_every_station(stack, tmp_path):
    _publish_copy(stack, "e2e-v2", tmp_path)
    _start_canary(stack, "e2e-v2")
    wait_until(lambda: stack.versions()[STATIONS[0]] == "e2e-v2", timeout_s=120,
               what="the canary runs e2e-v2", describe=lambda: str(stack.versions()))  # fmt: skip
    rollout = wait_until(
        lambda: (r := stack.rollout("e2e-v2")) and r["state"] != "active" and r,
        timeout_s=120, what="e2e-v2 decided", describe=lambda: str(stack.rollout("e2e-v2")),
    )  # fmt: skip
    assert rollout["state"] == "promoted", rollout
    assert rollout["previous_version"] == _first_version(stack)
    wait_until(lambda: set(stack.versions().values()) == {"e2e-v2"}, timeout_s=120,
               what="every station runs e2e-v2", describe=lambda: str(stack.versions()))  # fmt: skip


def test_a_tampered_version_is_refused_by_the_canary_and_rolled_back(stack, tmp_path):
    _publish_copy(stack, "e2e-v3", tmp_path)
    key = version_prefix(MODEL, "e2e-v3") + MODEL_OBJECT
    original = stack.store.client.get_object(stack.store.bucket, key).read()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0xFF
    stack.store.client.put_object(
        stack.store.bucket, key, io.BytesIO(bytes(tampered)), len(tampered)
    )
    _start_canary(stack, "e2e-v3")
    rollout = wait_until(
        lambda: (r := stack.rollout("e2e-v3")) and r["state"] != "active" and r,
        timeout_s=180, what="e2e-v3 decided", describe=lambda: str(stack.rollout("e2e-v3")),
    )  # fmt: skip
    assert rollout["state"] == "rolled_back", rollout
    assert rollout["decided_by"] == "rollout-gate"
    canary = next(s for s in stack.api.stations() if s["station"] == STATIONS[0])
    assert canary["model_version"] == "e2e-v2"  # it never ran the tampered bytes
    update = canary["fleet"]["last_update"]
    assert update["version"] == "e2e-v3" and "sha256" in update["reason"].lower(), update
    assert set(stack.versions().values()) == {"e2e-v2"}


def test_the_api_counts_exactly_what_each_station_had_acknowledged(stack):
    state = StackState.load(stack.state_dir)
    stations = [s for s in state.services if s.name in STATIONS]
    assert len(stations) == len(STATIONS)
    stop_gracefully(stations)
    by_station = {g["key"]: g for g in stack.api.stats("station")["groups"]}
    for service in stations:
        totals = stopped_totals(service)
        stored = by_station[service.name]
        assert totals["frames"] > 0 and totals.get("events_rejected", 0) == 0, totals
        # one event per frame (the spool never summarised: it stayed small), each stored once
        assert stored["frames"] == totals["events_accepted"] + totals.get("events_duplicate", 0)
        assert stored["frames"] <= totals["frames"]
