"""Faults on the embedded stack while 10 stations stream: ``kill -9`` the aggregator, a
station and Redis (AOF on), each brought back with ``slimspect restart``.

What must hold, counted per station after the stations were stopped gracefully:

* nothing stored twice: the stored events' frame counts add up to the hourly counters
  (an event written twice would be counted twice);
* nothing acknowledged lost: for every station that was not killed, the events it was told
  were stored (accepted, or duplicate when a first ack was lost with the aggregator) are
  exactly the events in Redis, Redis's own ``kill -9`` included;
* nothing produced lost: every frame such a station inspected is in Redis or still in its
  durable spool (a graceful stop does not wait for a backlog to be sent);
* the killed station came back and stored again, from its durable spool.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from agent_harness import stored_events
from agent_models import MODEL_NAME, build_tiny_model, publish_good
from stack_helpers import slimspect, stop_gracefully, stopped_totals, store_from_env

from edge_agent.spool import Spool
from slimspect.api_client import Api
from slimspect.demo.api_watch import wait_until
from slimspect.embedded.stack_env import read_env_file
from slimspect.embedded.stack_state import StackState
from slimspect.embedded.station_config import station_name

pytestmark = pytest.mark.timeout(900)

STATIONS = [station_name(i) for i in range(1, 11)]
KILLED_STATION = "station-3"


def _pid(state_dir, name: str) -> int:
    return next(s.process.pid for s in StackState.load(state_dir).services if s.name == name)


def _frames(api: Api) -> int:
    return api.stats("station")["total"]["frames"]


def _grows(api: Api, what: str, timeout_s: float = 90) -> None:
    """Wait until the stored frame count rises by some frames: the stack stores again."""
    before = _frames(api)
    wait_until(lambda: _frames(api) >= before + 20, timeout_s=timeout_s,
               what=f"frames stored again after {what}",
               describe=lambda: f"{_frames(api)} frames (was {before})")  # fmt: skip


def test_kill_9_aggregator_station_and_redis_loses_nothing_acked_and_stores_nothing_twice(
    tmp_path,
):
    state_dir = tmp_path / "stack"
    fleet_env = {"SLIMSPECT_ROLLOUT_HEARTBEAT_INTERVAL_S": "2", "OMP_NUM_THREADS": "1"}
    up = slimspect("up", "--stations", len(STATIONS), "--no-ray", "--state-dir", state_dir,
                   "--model-name", MODEL_NAME, env=fleet_env, timeout=300)  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        env = {**fleet_env, **read_env_file(state_dir / "env.sh")}
        api = Api(env["SLIMSPECT_API_URL"], env["SLIMSPECT_API_KEY"])
        publish_good(store_from_env(env), build_tiny_model(tmp_path / "model"), "v1")
        started = slimspect("rollout", "start", MODEL_NAME, "v1", "--channel", "stable", env=env)
        assert started.returncode == 0, started.stdout + started.stderr
        wait_until(
            lambda: all(s["model_version"] == "v1" for s in api.stations())
            and len(api.stations()) == len(STATIONS),
            timeout_s=180, what="every station runs v1",
            describe=lambda: str([(s["station"], s["model_version"]) for s in api.stations()]),
        )  # fmt: skip
        _grows(api, "the rollout")

        # ---- the faults, each while the others stream ------------------------------------
        for name, down_s in (("aggregator", 3.0), (KILLED_STATION, 1.0), ("redis", 2.0)):
            os.kill(_pid(state_dir, name), signal.SIGKILL)
            time.sleep(down_s)
            restarted = slimspect("restart", name, "--state-dir", state_dir, env=env)
            assert restarted.returncode == 0, restarted.stdout + restarted.stderr
            _grows(api, f"kill -9 {name}")

        state = StackState.load(state_dir)
        stations = [s for s in state.services if s.name in STATIONS]
        stop_gracefully(stations)
        client = redis.Redis.from_url(env["SLIMSPECT_AGGREGATOR_REDIS_URL"])
        counted = {g["key"]: g["frames"] for g in api.stats("station")["groups"]}
        for service in stations:
            events = stored_events(client, service.name)
            totals = stopped_totals(service)
            assert events, f"{service.name} stored nothing"
            # nothing stored twice: each stored event counted once in the hourly counters
            assert sum(e["frame_count"] for e in events) == counted[service.name], service.name
            acked = totals.get("events_accepted", 0) + totals.get("events_duplicate", 0)
            assert totals.get("events_rejected", 0) == 0, totals
            if service.name == KILLED_STATION:  # its totals cover only its second run
                assert 0 < acked <= len(events), (service.name, acked, len(events))
            else:  # every acknowledged event is in Redis, and nothing else is
                assert acked == len(events), (service.name, totals, len(events))
                # and every frame it inspected is stored or still in its spool
                spool = Spool(state_dir / "stations" / service.name / "state" / "spool.sqlite",
                              max_bytes=1 << 30)  # fmt: skip
                left = spool.stats().depth
                spool.close()
                assert len(events) + left == totals["frames"], (service.name, totals, left)
        client.close()
    finally:
        slimspect("down", "--state-dir", state_dir, env={}, timeout=300)
