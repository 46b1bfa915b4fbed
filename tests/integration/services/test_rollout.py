"""The rollout service on the real Redis, and Fleet.Heartbeat over real gRPC on loopback.

Every test owns a key prefix (``t<10 hex>:{fleet}:*``, deleted afterwards) and a fake clock,
so soak times pass without sleeping. Station names are fixed (``st-00`` .. ``st-09``): the
prefix isolates them, and fixed names give a known canary (policy.py): share 0.25 selects
st-05 and st-09, share 0.5 adds st-06.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from aggregator_harness import REDIS_URL, Namespace, run_async
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.aggregator.auth import RedisTokenStore
from services.rollout import policy
from services.rollout.errors import (
    InvalidRollout,
    PromotionRefused,
    RolloutNotFound,
    RolloutStateError,
    StationNotFound,
)
from services.rollout.fleet import FLEET_SERVICE, build_fleet_server
from services.rollout.keys import FleetKeys
from services.rollout.service import RolloutService
from services.rollout.settings import RolloutSettings
from slimspect.v1 import fleet_pb2 as pb
from slimspect.v1 import fleet_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)

MODEL = "steel-yolo"
STATIONS = [f"st-{i:02d}" for i in range(10)]
CANARY_25 = ["st-05", "st-09"]  # buckets 0.241 and 0.075 (see test_rollout_policy.py)
START_MS = 1_750_000_000_000


class Clock:
    """A fake ``now_ms``: tests move it forward."""

    def __init__(self, ms: int = START_MS) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    doomed = list(client.scan_iter(match=FleetKeys(name).pattern, count=1000))
    if doomed:
        client.delete(*doomed)


def settings(prefix: str, **overrides: Any) -> RolloutSettings:
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "key_prefix": prefix,
        "host": "127.0.0.1",
        "port": 0,
        "heartbeat_interval_s": 10,
        "soak_s": 60.0,
        "min_fps_ratio": 0.9,
        "max_update_failures": 0,
        "max_unhealthy_heartbeats": 2,
        "sweep_interval_s": 0,
        "default_model": None,
    }
    values.update(overrides)
    return RolloutSettings(**values)


def heartbeat(
    station: str,
    version: str = "1.0.0",
    *,
    at_ms: int,
    model: str = MODEL,
    health: int = pb.HEALTHY,
    fps: float = 30.0,
    update: tuple[str, int, str] | None = None,
) -> pb.HeartbeatRequest:
    """A heartbeat; ``update`` = (version, status, reason) of an update finished at ``at_ms``."""
    request = pb.HeartbeatRequest(
        station=station,
        agent_version="0.1.0",
        model_name=model,
        model_version=version,
        health=health,  # type: ignore[arg-type]
        fps=fps,
        spool_depth=3,
        spool_bytes=2048,
        events_dropped=1,
        cameras=[pb.CameraStatus(camera="cam0", state=pb.CAMERA_RUNNING, fps=fps)],
        sent_at_ms=at_ms,
    )
    if update is not None:
        v, status, reason = update
        request.last_update.CopyFrom(
            pb.UpdateResult(version=v, status=status, reason=reason, at_ms=at_ms)  # type: ignore[arg-type]
        )
    return request


@dataclass
class Fleet:
    """A RolloutService on the test's prefix, its clock, and shorthands."""

    svc: RolloutService
    clock: Clock

    async def beat(self, station: str, version: str = "1.0.0", **kw: Any) -> pb.HeartbeatReply:
        return await self.svc.record_heartbeat(
            heartbeat(station, version, at_ms=self.clock(), **kw)
        )

    async def target(self, station: str, version: str = "1.0.0", **kw: Any) -> tuple[str, str]:
        reply = await self.beat(station, version, **kw)
        return reply.model_version, reply.channel

    async def stable(self, version: str = "1.0.0") -> None:
        await self.svc.start(MODEL, version, channel="stable", actor="alice", reason="baseline")

    async def follow(self, stations: list[str], seconds: float, fps: float = 30.0) -> None:
        """Every station beats every 10 s for ``seconds``, running what it is told.

        Updates succeed; 1.0.0 runs at 30 fps, any other version at ``fps``.
        """
        running = {s: (await self.beat(s)).model_version for s in stations}
        for _ in range(int(seconds // 10)):
            self.clock.advance(10)
            for s in stations:
                v = running[s]
                kw: dict[str, Any] = {}
                if v != "1.0.0":
                    kw = {"fps": fps, "update": (v, pb.UPDATE_OK, "")}
                running[s] = (await self.beat(s, v, **kw)).model_version or v


@asynccontextmanager
async def fleet(prefix: str, clock: Clock | None = None, **overrides: Any) -> AsyncIterator[Fleet]:
    client = aioredis.Redis.from_url(REDIS_URL)
    clock = clock or Clock()
    try:
        yield Fleet(RolloutService(client, settings(prefix, **overrides), now_ms=clock), clock)
    finally:
        await client.aclose()


async def bring_up(f: Fleet, stations: list[str] = STATIONS, fps: float = 30.0) -> None:
    """Stable 1.0.0, and every station reported running it."""
    await f.stable()
    for s in stations:
        assert await f.target(s, fps=fps) == ("1.0.0", "stable")


def actions(entries: list[Any]) -> list[str]:
    return [e.action for e in entries]


# ---- targets and canary selection ---------------------------------------------------------------


def test_canary_stations_get_the_new_version_and_the_others_stable(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            await bring_up(f)
            f.clock.advance(1)
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice", reason="faster")
            assert (ro.state, ro.previous_version, ro.channel) == ("active", "1.0.0", "canary")
            assert ro.id.startswith("ro-") and len(ro.id) == 15
            assert await f.svc.channels(MODEL) == {"stable": "1.0.0", "canary": "2.0.0"}
            expected = policy.select_canary(STATIONS, share=0.25, stations=None)
            assert expected == CANARY_25
            for s in STATIONS:
                want = ("2.0.0", "canary") if s in CANARY_25 else ("1.0.0", "stable")
                assert await f.target(s) == want, s
            progress = await f.svc.progress(ro.id)
            assert [c.station for c in progress.stations] == CANARY_25
            assert all(c.baseline_fps == 30.0 and not c.on_version for c in progress.stations)
            state = await f.svc.station("st-05")
            assert (state.target_version, state.channel, state.online) == ("2.0.0", "canary", True)

            for s in CANARY_25:  # the canary runs 2.0.0, slower
                assert await f.target(s, "2.0.0", fps=20.0) == ("2.0.0", "canary")

            # A wider canary supersedes this one: the ring only grows (st-06 joins).
            f.clock.advance(1)
            wider = await f.svc.start(MODEL, "2.0.0", share=0.5, actor="bob")
            progress = await f.svc.progress(wider.id)
            assert [c.station for c in progress.stations] == ["st-05", "st-06", "st-09"]
            # st-05 and st-09 keep the baseline the first canary recorded on 1.0.0.
            assert {c.station: c.baseline_fps for c in progress.stations} == dict.fromkeys(
                ["st-05", "st-06", "st-09"], 30.0
            )
            assert {c.station: c.fps_ratio for c in progress.stations} == {
                "st-05": round(20 / 30, 4),
                "st-06": None,
                "st-09": round(20 / 30, 4),
            }
            old = await f.svc.get(ro.id)
            assert old.state == "superseded" and old.decided_by == "bob"
            assert wider.id in old.decision_reason
            for s in STATIONS:
                want = (
                    ("2.0.0", "canary") if s in ("st-05", "st-06", "st-09") else ("1.0.0", "stable")
                )
                assert await f.target(s) == want, s
            assert [r.id for r in await f.svc.list(MODEL, active_only=True)] == [wider.id]
            assert [r.id for r in await f.svc.list()][:2] == [wider.id, ro.id]
            log = await f.svc.audit(ro.id)
            assert actions(log) == ["supersede", "start"]
            assert log[1].reason == "faster" and log[1].actor == "alice"

    run_async(main())


def test_explicit_station_list(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            await bring_up(f, STATIONS[:4])
            ro = await f.svc.start(MODEL, "2.0.0", stations=["st-01", "st-03", "st-99"], actor="a")
            assert ro.stations == ["st-01", "st-03", "st-99"] and ro.share is None
            got = {s: await f.target(s) for s in STATIONS[:4]}
            assert got == {
                "st-00": ("1.0.0", "stable"),
                "st-01": ("2.0.0", "canary"),
                "st-02": ("1.0.0", "stable"),
                "st-03": ("2.0.0", "canary"),
            }
            progress = await f.svc.progress(ro.id)
            by_name = {c.station: c for c in progress.stations}
            assert set(by_name) == {"st-01", "st-03", "st-99"}
            assert not by_name["st-99"].seen  # never reported: shown, ignored by the gate

    run_async(main())


def test_default_model_and_explicit_assignment(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            reply = await f.beat("st-00", "", model="")
            assert (reply.model_name, reply.model_version, reply.channel) == ("", "", "")
            assert reply.heartbeat_interval_s == 10 and reply.server_time_ms == f.clock()
            await f.stable()
            await f.svc.start("other-net", "7.1", channel="stable", actor="alice")
            await f.svc.assign("st-00", "other-net", actor="carol", reason="line 2")
            reply = await f.beat("st-00", "", model="")
            assert (reply.model_name, reply.model_version, reply.channel) == (
                "other-net",
                "7.1",
                "stable",
            )
            # The assignment wins over what the station reports running.
            reply = await f.beat("st-00", "1.0.0")
            assert (reply.model_name, reply.model_version) == ("other-net", "7.1")
            assert (await f.svc.station("st-00")).assigned_model == "other-net"
            await f.svc.assign("st-00", None, actor="carol")
            reply = await f.beat("st-00", "7.1", model="other-net")
            assert (reply.model_name, reply.model_version) == ("other-net", "7.1")
            assert await f.svc.assignments() == {}
            log = await f.svc.audit()
            assert actions(log)[:2] == ["assign", "assign"]
            assert log[1].reason == "st-00 -> other-net; line 2" and log[1].station == "st-00"
            assert sorted(await f.svc.models()) == ["other-net", MODEL]

        async with fleet(prefix, default_model=MODEL) as f:
            reply = await f.beat("st-01", "", model="")
            assert (reply.model_name, reply.model_version, reply.channel) == (
                MODEL,
                "1.0.0",
                "stable",
            )

    run_async(main())


# ---- promotion ------------------------------------------------------------------------------------


def test_promotes_after_the_soak_and_not_before(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            await bring_up(f, ["st-00", *CANARY_25])
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice")
            promoted_at = None
            running = {s: (await f.beat(s)).model_version for s in CANARY_25}
            assert running == dict.fromkeys(CANARY_25, "2.0.0")
            t0 = f.clock()  # the canary runs 2.0.0 from the next heartbeat on
            for _ in range(10):
                f.clock.advance(10)
                for s in CANARY_25:
                    reply = await f.beat(s, "2.0.0", fps=29.0, update=("2.0.0", pb.UPDATE_OK, ""))
                    if reply.channel == "stable" and promoted_at is None:
                        promoted_at = f.clock()
                if promoted_at is None:
                    assert (await f.svc.get(ro.id)).state == "active"
                    with pytest.raises(PromotionRefused, match="of the 60 s soak"):
                        await f.svc.promote(ro.id, actor="impatient")
            assert promoted_at is not None and promoted_at - t0 >= 70_000  # 60 s after first on it
            done = await f.svc.get(ro.id)
            assert (done.state, done.decided_by) == ("promoted", "rollout-gate")
            assert await f.svc.channels(MODEL) == {"stable": "2.0.0", "canary": None}
            assert await f.target("st-00") == ("2.0.0", "stable")
            log = await f.svc.audit(ro.id)
            assert actions(log)[0] == "auto_promote" and "promote_refused" in actions(log)
            assert "2 canary stations ran 2.0.0 for at least 60 s" in log[0].reason
            refused = next(e for e in log if e.action == "promote_refused")
            assert refused.actor == "impatient" and "soak" in refused.reason

    run_async(main())


def test_no_promotion_while_fps_is_below_the_ratio_unless_forced(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            await bring_up(f, CANARY_25, fps=30.0)
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice")
            await f.follow(CANARY_25, 120, fps=20.0)
            assert (await f.svc.get(ro.id)).state == "active"
            progress = await f.svc.progress(ro.id)
            assert not progress.gate.can_promote and progress.gate.verdict == "wait"
            assert {c.fps_ratio for c in progress.stations} == {round(20 / 30, 4)}
            with pytest.raises(PromotionRefused) as refused:
                await f.svc.promote(ro.id, actor="bob")
            assert "below 0.9 x its 30.0 fps on the previous version" in refused.value.reason
            assert len(refused.value.blockers) == 2

            done = await f.svc.promote(
                ro.id, actor="bob", reason="known slower, accepted", force=True
            )
            assert (done.state, done.decided_by) == ("promoted", "bob")
            entry = (await f.svc.audit(ro.id, limit=1))[0]
            assert entry.action == "force_promote"
            assert entry.reason.startswith("known slower, accepted; forced past the gate: ")

    run_async(main())


def test_manual_promote_with_auto_promote_off(prefix):
    async def main() -> None:
        async with fleet(prefix, auto_promote=False) as f:
            await bring_up(f, CANARY_25)
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice")
            await f.follow(CANARY_25, 90)
            progress = await f.svc.progress(ro.id)
            assert progress.gate.can_promote and progress.rollout.state == "active"
            assert all(c.soaked_s >= 60 for c in progress.stations)
            done = await f.svc.promote(ro.id, actor="bob")
            assert done.state == "promoted"
            assert (await f.svc.audit(ro.id, limit=1))[0].action == "promote"

    run_async(main())


def test_sweep_promotes_without_a_heartbeat(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            await bring_up(f, CANARY_25)
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice")
            await f.follow(CANARY_25, 60)  # on 2.0.0 from the 2nd beat: 50 s so far
            assert [p.rollout.state for p in await f.svc.sweep()] == ["active"]
            f.clock.advance(15)  # soaked now, and the stations are still online (30 s)
            (progress,) = await f.svc.sweep()
            assert progress.gate.verdict == "promote" and progress.rollout.state == "promoted"
            assert (await f.svc.get(ro.id)).state == "promoted"
            assert await f.svc.sweep() == []

    run_async(main())


# ---- rollback -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [pb.UPDATE_FAILED, pb.UPDATE_ROLLED_BACK])
def test_a_failed_update_rolls_the_canary_back(prefix, status):
    async def main() -> None:
        async with fleet(prefix) as f:
            await bring_up(f, CANARY_25)
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice")
            assert await f.target("st-05") == ("2.0.0", "canary")
            f.clock.advance(10)
            reply = await f.beat("st-05", "1.0.0", update=("2.0.0", status, "smoke test: 0 boxes"))
            assert (reply.model_version, reply.channel) == ("1.0.0", "stable")
            done = await f.svc.get(ro.id)
            assert (done.state, done.decided_by) == ("rolled_back", "rollout-gate")
            assert await f.target("st-09") == ("1.0.0", "stable")
            entry = (await f.svc.audit(ro.id, limit=1))[0]
            assert entry.action == "auto_rollback" and entry.actor == "rollout-gate"
            name = pb.UpdateStatus.Name(status)
            assert f"st-05: {name} at {f.clock()} (smoke test: 0 boxes)" in entry.reason

    run_async(main())


def test_failures_are_counted_once_and_only_for_this_rollout(prefix):
    async def main() -> None:
        async with fleet(prefix, max_update_failures=1) as f:
            await bring_up(f, CANARY_25)
            earlier = f.clock() - 5_000  # a failure of 2.0.0 before this rollout began
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice")
            stale = heartbeat(
                "st-05", "1.0.0", at_ms=f.clock(), update=("2.0.0", pb.UPDATE_FAILED, "x")
            )
            stale.last_update.at_ms = earlier
            await f.svc.record_heartbeat(stale)
            assert (await f.svc.progress(ro.id)).stations[0].failures == []

            f.clock.advance(10)
            failed_at = f.clock()
            for _ in range(3):  # the same report, repeated by later heartbeats
                req = heartbeat(
                    "st-05", "1.0.0", at_ms=f.clock(), update=("2.0.0", pb.UPDATE_FAILED, "sig")
                )
                req.last_update.at_ms = failed_at
                await f.svc.record_heartbeat(req)
                f.clock.advance(10)
            progress = await f.svc.progress(ro.id)
            st05 = next(c for c in progress.stations if c.station == "st-05")
            assert st05.failures == [f"UPDATE_FAILED at {failed_at} (sig)"]
            assert st05.update_status == "UPDATE_FAILED"
            assert progress.rollout.state == "active" and progress.gate.verdict == "wait"
            assert "st-05 runs 1.0.0, not 2.0.0 yet" in progress.gate.reason

            # A second, distinct failure is over the tolerance of 1.
            await f.beat("st-05", "1.0.0", update=("2.0.0", pb.UPDATE_FAILED, "sig again"))
            assert (await f.svc.get(ro.id)).state == "rolled_back"

    run_async(main())


def test_repeated_unhealthy_heartbeats_roll_the_canary_back(prefix):
    async def main() -> None:
        async with fleet(prefix, max_unhealthy_heartbeats=2) as f:
            await bring_up(f, CANARY_25)
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice")
            ok = ("2.0.0", pb.UPDATE_OK, "")
            for health in (pb.DEGRADED, pb.UNHEALTHY, pb.DEGRADED, pb.UNHEALTHY):
                f.clock.advance(10)
                reply = await f.beat("st-09", "2.0.0", health=health, update=ok)
                assert reply.channel == "canary"
            assert (await f.svc.get(ro.id)).state == "active"
            f.clock.advance(10)
            reply = await f.beat("st-09", "2.0.0", health=pb.UNHEALTHY, update=ok)
            assert (reply.model_version, reply.channel) == ("1.0.0", "stable")
            done = await f.svc.get(ro.id)
            assert done.state == "rolled_back"
            assert (
                done.decision_reason == "st-09 reported UNHEALTHY 3 times on 2.0.0 (tolerated: 2)"
            )

    run_async(main())


def test_manual_rollback_and_final_states_do_not_change(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            await bring_up(f, CANARY_25)
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice")
            done = await f.svc.rollback(ro.id, actor="bob", reason="customer complaint")
            assert (done.state, done.decided_by, done.decision_reason) == (
                "rolled_back",
                "bob",
                "customer complaint",
            )
            assert await f.target("st-05") == ("1.0.0", "stable")
            with pytest.raises(RolloutStateError, match="rolled_back"):
                await f.svc.promote(ro.id, actor="bob", force=True)
            with pytest.raises(RolloutStateError):
                await f.svc.rollback(ro.id, actor="bob")
            progress = await f.svc.evaluate(ro.id)
            assert progress.gate.verdict == "final" and progress.rollout.state == "rolled_back"
            assert await f.svc.get(ro.id) == done
            assert actions(await f.svc.audit(ro.id)) == ["rollback", "start"]

    run_async(main())


# ---- concurrency ----------------------------------------------------------------------------------


def test_concurrent_promote_and_rollback_exactly_one_wins(prefix):
    async def main() -> None:
        clock = Clock()
        clients = [aioredis.Redis.from_url(REDIS_URL) for _ in range(6)]
        replicas = [RolloutService(c, settings(prefix), now_ms=clock) for c in clients]
        try:
            await replicas[0].start(MODEL, "1.0.0", channel="stable", actor="alice")
            outcomes = []
            for round_ in range(6):
                ro = await replicas[0].start(
                    MODEL, f"2.0.{round_}", stations=["st-00"], actor="alice"
                )
                calls = [
                    r.promote(ro.id, actor=f"p{i}", force=True)
                    if i % 2
                    else r.rollback(ro.id, actor=f"r{i}")
                    for i, r in enumerate(replicas)
                ]
                results = await asyncio.gather(*calls, return_exceptions=True)
                winners = [r for r in results if not isinstance(r, BaseException)]
                losers = [r for r in results if isinstance(r, BaseException)]
                assert len(winners) == 1, results
                assert all(isinstance(e, RolloutStateError) for e in losers), losers
                final = await replicas[0].get(ro.id)
                assert final == winners[0]
                decisions = [e for e in await replicas[0].audit(ro.id) if e.action != "start"]
                assert len(decisions) == 1 and decisions[0].actor == final.decided_by
                stable = (await replicas[0].channels(MODEL))["stable"]
                if final.state == "promoted":
                    assert stable == f"2.0.{round_}"
                else:
                    assert final.state == "rolled_back" and stable != f"2.0.{round_}"
                outcomes.append(final.state)
            assert set(outcomes) <= {"promoted", "rolled_back"}
        finally:
            for c in clients:
                await c.aclose()

    run_async(main())


def test_concurrent_starts_leave_one_active_canary(prefix):
    async def main() -> None:
        clock = Clock()
        clients = [aioredis.Redis.from_url(REDIS_URL) for _ in range(5)]
        replicas = [RolloutService(c, settings(prefix), now_ms=clock) for c in clients]
        try:
            started = await asyncio.gather(
                *(
                    r.start(MODEL, f"3.0.{i}", share=0.5, actor=f"op{i}")
                    for i, r in enumerate(replicas)
                )
            )
            rollouts = [await replicas[0].get(r.id) for r in started]
            active = [r for r in rollouts if r.state == "active"]
            assert len(active) == 1
            assert sorted(r.state for r in rollouts).count("superseded") == 4
            assert (await replicas[0].channels(MODEL))["canary"] == active[0].version
            log = await replicas[0].audit()
            assert actions(log).count("start") == 5 and actions(log).count("supersede") == 4
        finally:
            for c in clients:
                await c.aclose()

    run_async(main())


# ---- other surfaces -------------------------------------------------------------------------------


def test_stable_channel_sets_the_version_directly_and_supersedes_a_canary(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            await bring_up(f, CANARY_25)
            ro = await f.svc.start(MODEL, "2.0.0", share=0.25, actor="alice")
            direct = await f.svc.start(
                MODEL, "1.0.1", channel="stable", actor="bob", reason="hotfix"
            )
            assert (direct.state, direct.previous_version, direct.decided_by) == (
                "promoted",
                "1.0.0",
                "bob",
            )
            assert (await f.svc.get(ro.id)).state == "superseded"
            assert await f.svc.channels(MODEL) == {"stable": "1.0.1", "canary": None}
            assert await f.target("st-05", "2.0.0") == ("1.0.1", "stable")
            entry = (await f.svc.audit(direct.id))[0]
            assert (entry.action, entry.actor, entry.reason) == ("set_stable", "bob", "hotfix")

    run_async(main())


def test_invalid_requests_are_refused(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            await f.stable()
            bad: list[dict[str, Any]] = [
                {"share": 0.0},
                {"share": 1.5},
                {"share": None},
                {"share": 0.5, "stations": ["st-00"]},
                {"stations": []},
                {"stations": ["bad name"]},
                {"stations": "st-00"},
                {"share": 0.5, "actor": ""},
                {"share": 0.5, "channel": "beta"},
                {"share": 0.5, "channel": "stable"},
                {"share": 0.5, "version": ""},
                {"share": 0.5, "version": "1.0.0"},  # the stable one already
                {"share": 0.5, "model": "Bad Model"},
                {"share": 0.5, "min_fps_ratio": 1.5},
            ]
            for case in bad:
                case = dict(case)
                model = case.pop("model", MODEL)
                version = case.pop("version", "2.0.0")
                case.setdefault("actor", "alice")
                with pytest.raises(InvalidRollout):
                    await f.svc.start(model, version, **case)
            assert await f.svc.list(active_only=True) == []
            for missing in ("ro-000000000000", "nope", "../x"):
                with pytest.raises(RolloutNotFound):
                    await f.svc.get(missing)
            with pytest.raises(StationNotFound):
                await f.svc.station("st-00")
            with pytest.raises(InvalidRollout):
                await f.svc.assign("bad name", MODEL)

    run_async(main())


def test_station_state_round_trip_and_staleness(prefix):
    async def main() -> None:
        async with fleet(prefix) as f:
            await f.stable()
            await f.beat("st-00", update=("1.0.0", pb.UPDATE_OK, ""), fps=12.25)
            f.clock.advance(25)
            await f.beat("st-01", health=pb.DEGRADED)
            states = {s.station: s for s in await f.svc.stations()}
            assert set(states) == {"st-00", "st-01"}
            s0 = states["st-00"]
            assert (s0.model_name, s0.model_version, s0.health, s0.fps) == (
                MODEL,
                "1.0.0",
                "HEALTHY",
                12.25,
            )
            assert (s0.spool_depth, s0.spool_bytes, s0.events_dropped) == (3, 2048, 1)
            assert s0.last_update is not None and s0.last_update.status == "UPDATE_OK"
            assert s0.cameras[0].state == "CAMERA_RUNNING" and s0.cameras[0].fps == 12.25
            assert s0.online and states["st-01"].health == "DEGRADED"
            assert s0.model_dump(mode="json")["last_seen_ms"] == START_MS
            f.clock.advance(10)  # st-00 silent for 35 s > 3 x 10 s
            states = {s.station: s for s in await f.svc.stations()}
            assert not states["st-00"].online and states["st-01"].online

    run_async(main())


# ---- Fleet.Heartbeat over gRPC --------------------------------------------------------------------


def test_fleet_heartbeat_over_grpc_with_station_tokens(prefix, ns: Namespace):
    async def main() -> None:
        client = aioredis.Redis.from_url(REDIS_URL)
        tokens = RedisTokenStore(client, key=ns.token_key)
        clock = Clock()
        service = RolloutService(client, settings(prefix), now_ms=clock)
        server, port = build_fleet_server(settings(prefix), client, service=service, tokens=tokens)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.FleetStub(channel)

        async def call(request: pb.HeartbeatRequest, token: str | None) -> Any:
            metadata = [("authorization", f"Bearer {token}")] if token else []
            try:
                return await stub.Heartbeat(request, metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        try:
            await service.start(MODEL, "1.0.0", channel="stable", actor="alice")
            token = await tokens.add("st-05")
            other = await tokens.add("st-00")
            beat = heartbeat("st-05", "0.9.0", at_ms=clock())
            reply = await call(beat, token)
            assert isinstance(reply, pb.HeartbeatReply)
            assert (reply.model_name, reply.model_version, reply.channel) == (
                MODEL,
                "1.0.0",
                "stable",
            )
            assert (reply.heartbeat_interval_s, reply.server_time_ms) == (10, clock())
            assert (await service.station("st-05")).model_version == "0.9.0"

            assert await call(beat, None) == grpc.StatusCode.UNAUTHENTICATED
            assert await call(beat, "sst_not-a-token") == grpc.StatusCode.UNAUTHENTICATED
            assert await call(beat, other) == grpc.StatusCode.PERMISSION_DENIED
            bad = heartbeat("st-05", at_ms=clock(), model="Not A Model")
            assert await call(bad, token) == grpc.StatusCode.INVALID_ARGUMENT
            # Refused heartbeats leave no trace: st-00 never reported.
            with pytest.raises(StationNotFound):
                await service.station("st-00")

            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", FLEET_SERVICE):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await channel.close()
            await server.stop(1)
            await client.aclose()

    run_async(main())
