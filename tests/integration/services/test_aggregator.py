"""The aggregator end to end: real gRPC on loopback, real Redis, the real Lua script.

What is stored is counted independently of the acks (SCAN for event keys, ZCARD of the
indexes, the hourly counters summed) to show each event is stored exactly once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import grpc
import pytest
import redis
from aggregator_harness import (
    CLASSES,
    JPEG,
    batch,
    event,
    keys_of,
    now_ms,
    run_async,
    running,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.aggregator import schema
from slimspect.v1 import inspection_pb2 as pb

R = pb.RejectReason
pytestmark = pytest.mark.timeout(60)


def stored_counts(client: redis.Redis, station: str) -> dict[str, int]:
    """What Redis holds for ``station``, counted from the keys themselves."""
    totals: Counter[str] = Counter()
    for key in keys_of(client, station, "cnt"):
        for field, value in client.hgetall(key).items():
            totals[field.decode()] += int(value)
    return {
        "events": len(keys_of(client, station, "ev")),
        "indexed": client.zcard(schema.index_key(station)),
        **totals,
    }


def check_invariants(client: redis.Redis, station: str) -> None:
    """Every index member has its event; counters equal what the stored events say."""
    index = {m.decode() for m in client.zrange(schema.index_key(station), 0, -1)}
    events = {k.rsplit(":", 1)[1] for k in keys_of(client, station, "ev")}
    assert index == events
    expected: Counter[str] = Counter()
    per_class: dict[str, dict[str, float]] = {}  # class -> event id -> top score
    crops = set()
    for event_id in events:
        ev = schema.decode_event(client.get(schema.event_key(station, event_id)))
        assert ev["event_id"] == event_id and ev["station"] == station
        assert client.zscore(schema.index_key(station), event_id) == ev["captured_at_ms"]
        expected[schema.FRAMES] += ev["frame_count"]
        expected[schema.DEFECT_FRAMES] += 1 if ev["detections"] else 0
        expected[schema.DEFECTS] += len(ev["detections"])
        for i, det in enumerate(ev["detections"]):
            expected[f"defects:{det['class_name']}"] += 1
            members = per_class.setdefault(det["class_name"], {})
            members[event_id] = max(members.get(event_id, 0.0), det["score"])
            if det["crop"]:
                crops.add(schema.crop_key(station, event_id, i))
    counts = stored_counts(client, station)
    assert {k: v for k, v in counts.items() if k not in ("events", "indexed") and v} == {
        k: v for k, v in expected.items() if v
    }
    for name, tops in per_class.items():
        members = client.zrange(schema.class_index_key(station, name), 0, -1)
        assert dict(schema.class_member_parts(m.decode()) for m in members) == tops, name
    assert set(keys_of(client, station, "crop")) == crops
    assert {c.decode() for c in client.smembers(schema.classes_key(station))} == set(per_class)
    for key in keys_of(client, station):
        assert client.pttl(key) > 0, f"{key} has no TTL"


def random_event(rng: random.Random, station: str) -> pb.InspectionEvent:
    if rng.random() < 0.4:
        return event(station, frame_count=rng.randint(1, 5))  # a clean (summary) event
    classes = rng.choices(CLASSES, k=rng.randint(1, 3))
    return event(station, classes=classes, crop=rng.random() < 0.5)


def test_concurrent_streams_ack_and_store_every_event_once(client, ns):
    streams, batches, per_batch = 10, 20, 10
    rng = random.Random(7)
    sent = {
        ns.station(s): [
            batch(b, (random_event(rng, ns.station(s)) for _ in range(per_batch)))
            for b in range(batches)
        ]
        for s in range(streams)
    }

    async def main() -> dict[str, list[pb.Ack]]:
        async with running(ns) as run:
            tokens = {st: await run.token(st) for st in sent}
            results = await asyncio.gather(*(run.send(tokens[st], *sent[st]) for st in sent))
            return dict(zip(sent, results, strict=True))

    started = time.perf_counter()
    acks = run_async(main())
    elapsed = time.perf_counter() - started

    for station, batches_sent in sent.items():
        assert sorted(a.sequence for a in acks[station]) == list(range(batches))
        assert all(
            (a.accepted, a.duplicate, a.rejected) == (per_batch, 0, 0) for a in acks[station]
        )
        events = [e for b in batches_sent for e in b.events]
        counts = stored_counts(client, station)
        assert counts["events"] == counts["indexed"] == batches * per_batch
        assert counts[schema.FRAMES] == sum(e.frame_count for e in events)
        assert counts[schema.DEFECTS] == sum(len(e.detections) for e in events)
        assert counts[schema.DEFECT_FRAMES] == sum(1 for e in events if e.detections)
        per_class = Counter(d.class_name for e in events for d in e.detections)
        for name, n in per_class.items():
            assert counts[f"defects:{name}"] == n
        check_invariants(client, station)
    assert set(sent) <= {s.decode() for s in client.smembers(schema.STATIONS_KEY)}
    assert elapsed < 20, f"{streams * batches * per_batch} events took {elapsed:.1f} s"


def test_batch_resent_after_dropped_stream_is_stored_once(client, ns):
    station = ns.station()
    events = [event(station, classes=["scratches"], crop=True) for _ in range(10)]

    async def main() -> tuple[pb.Ack, pb.Ack, pb.Ack]:
        async with running(ns) as run:
            token = await run.token(station)
            # The ack of this batch is lost: the stream drops right after sending it.
            call = await run.report(token)
            await call.write(batch(1, events))
            deadline = time.monotonic() + 5
            while client.zcard(schema.index_key(station)) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            call.cancel()
            # The agent reconnects and resends the unacked batch, then more overlap.
            (resent,) = await run.send(token, batch(1, events))
            more = [event(station) for _ in range(5)]
            (mixed,) = await run.send(token, batch(2, events[:5] + more))
            (again,) = await run.send(token, batch(2, events[:5] + more))
            return resent, mixed, again

    resent, mixed, again = run_async(main())
    assert (resent.sequence, resent.accepted, resent.duplicate, resent.rejected) == (1, 0, 10, 0)
    assert (mixed.accepted, mixed.duplicate) == (5, 5)
    assert (again.accepted, again.duplicate) == (0, 10)
    counts = stored_counts(client, station)
    assert counts["events"] == counts["indexed"] == counts[schema.FRAMES] == 15
    assert counts["defects:scratches"] == 10
    check_invariants(client, station)


def test_duplicate_ids_within_a_batch_and_across_streams_race_to_one_copy(client, ns):
    station = ns.station()
    rng = random.Random(3)
    pool = [random_event(rng, station) for _ in range(60)]

    def shuffled_batches() -> list[pb.ReportBatch]:
        picks = [rng.choice(pool) for _ in range(120)]  # repeats within and across batches
        return [batch(i, picks[i * 12 : (i + 1) * 12]) for i in range(10)]

    async def main() -> list[list[pb.Ack]]:
        async with running(ns) as run:
            token = await run.token(station)
            plans = [shuffled_batches() for _ in range(4)]
            return await asyncio.gather(*(run.send(token, *p) for p in plans))

    acks = [a for stream in run_async(main()) for a in stream]
    accepted = sum(a.accepted for a in acks)
    assert sum(a.accepted + a.duplicate for a in acks) == 480
    counts = stored_counts(client, station)
    assert accepted == counts["events"] == counts["indexed"]
    assert counts["events"] <= len(pool)
    check_invariants(client, station)


def test_every_rejection_reason_is_reported_and_good_events_are_stored(client, ns):
    station = ns.station()
    good = [event(station, classes=["pitted"]), event(station), event(station, classes=["patches"])]

    def with_detection(**det) -> pb.InspectionEvent:
        ev = event(station, classes=["pitted"])
        for name, value in det.items():
            if name == "box":
                ev.detections[0].box.CopyFrom(value)
            else:
                setattr(ev.detections[0], name, value)
        return ev

    bad = {
        R.MISSING_ID: event(station, event_id="", classes=["pitted"]),
        R.BOX_OUTSIDE_IMAGE: with_detection(box=pb.Box(x1=10, y1=10, x2=641, y2=20)),
        R.UNKNOWN_CLASS: with_detection(class_id=1, class_name="pitted"),
        R.SCORE_OUT_OF_RANGE: with_detection(score=1.5),
        R.CROP_TOO_LARGE: with_detection(crop_jpeg=JPEG + b"\x00" * 2048),
        R.CAPTURED_IN_FUTURE: event(station, captured_at_ms=now_ms() + 3_600_000),
        R.STATION_MISMATCH: event(ns.station(9)),
        R.MALFORMED: event(station, image_width=0),
    }
    assert set(bad) == set(R.values()) - {R.REJECT_REASON_UNSPECIFIED}
    mixed = [good[0], *list(bad.values())[:4], good[1], *list(bad.values())[4:], good[2]]
    later = event(station)

    async def main() -> list[pb.Ack]:
        async with running(
            ns, known_classes={"steel-yolo": list(CLASSES)}, max_crop_bytes=1024
        ) as run:
            token = await run.token(station)
            return await run.send(token, batch(1, mixed), batch(2, [later]))

    first, second = run_async(main())
    assert (first.accepted, first.duplicate, first.rejected) == (3, 0, 8)
    by_reason = {r.reason: r for r in first.rejections}
    assert set(by_reason) == set(bad)
    for reason, ev in bad.items():
        assert by_reason[reason].event_id == ev.event_id
        assert by_reason[reason].message
    assert second.accepted == 1  # the stream went on
    stored = {k.rsplit(":", 1)[1] for k in keys_of(client, station, "ev")}
    assert stored == {e.event_id for e in [*good, later]}
    assert not keys_of(client, ns.station(9))
    check_invariants(client, station)


@pytest.mark.parametrize(
    "metadata",
    [[], [("authorization", "Bearer sst_not-a-real-token")], [("authorization", "Basic eDp5")]],
    ids=["missing", "wrong", "not-bearer"],
)
def test_missing_or_wrong_token_is_unauthenticated(client, ns, metadata):
    station = ns.station()

    async def main() -> grpc.aio.AioRpcError:
        async with running(ns) as run:
            await run.token(station)  # a real token exists, but is not the one presented
            call = run.stub.Report(metadata=metadata)
            # The stream is refused when it opens, before any batch. (Writing into it can race
            # with the refusal and fail on the client with INTERNAL "execute_batch"; the
            # call's own status is the answer.)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            failures = run.aggregator.metrics.registry.get_sample_value(
                "slimspect_aggregator_auth_failures_total"
            )
            assert failures == 1
            return info.value

    error = run_async(main())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.debug_error_string()
    assert not keys_of(client, station)


def test_a_token_only_writes_for_its_own_station(client, ns):
    mine, other = ns.station(1), ns.station(2)

    async def main() -> pb.Ack:
        async with running(ns) as run:
            token = await run.token(mine)
            await run.token(other)
            (ack,) = await run.send(token, batch(7, [event(other), event(other), event(mine)]))
            return ack

    ack = run_async(main())
    assert (ack.sequence, ack.accepted, ack.rejected) == (7, 1, 2)
    assert {r.reason for r in ack.rejections} == {R.STATION_MISMATCH}
    assert not keys_of(client, other)
    assert stored_counts(client, mine)["events"] == 1


def test_retention_rejects_old_events_and_sweeps_old_index_entries(client, ns):
    station = ns.station()
    day = 86_400_000
    clock = {"now": time.time()}
    t0 = int(clock["now"] * 1000)

    async def main() -> tuple[pb.Ack, int]:
        async with running(ns, retention_days=1, clock=lambda: clock["now"]) as run:
            token = await run.token(station)
            old = event(station, "old", classes=["pitted"], captured_at_ms=t0 - 2 * day)
            fresh = event(station, "fresh", classes=["pitted"], captured_at_ms=t0 - day // 2)
            (ack,) = await run.send(token, batch(1, [old, fresh]))
            # Later, with no further events of that class: the sweep trims what fell out.
            removed = await run.aggregator.writer.sweep(now_ms=t0 + day // 2 + 1)
            return ack, removed

    ack, removed = run_async(main())
    assert (ack.accepted, ack.rejected) == (1, 1)
    assert ack.rejections[0].reason == R.MALFORMED and "retention" in ack.rejections[0].message
    assert removed == 3  # the station index, the defect index and the class index
    assert client.zcard(schema.index_key(station)) == 0
    assert client.zcard(schema.defect_index_key(station)) == 0
    assert client.zcard(schema.class_index_key(station, "pitted")) == 0
    ttl = client.pttl(schema.event_key(station, "fresh"))  # expires a slack after leaving
    expected = (t0 - day // 2) + day + schema.EXPIRY_SLACK_MS - now_ms()
    assert abs(ttl - expected) < 60_000


def test_health_turns_not_serving_and_stop_drains_streams(client, ns):
    station = ns.station()

    async def main() -> None:
        async with running(ns) as run:
            token = await run.token(station)
            health = health_pb2_grpc.HealthStub(run.channel)
            check = await health.Check(health_pb2.HealthCheckRequest(service="slimspect.v1.Ingest"))
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

            # One stream is idle; another is in the middle of a (slow) batch write.
            idle = await run.report(token)
            await idle.write(batch(1, [event(station)]))
            await idle.read()
            writer = run.aggregator.writer
            original = writer.write
            write_started = asyncio.Event()

            async def slow_write(*args, **kwargs):
                write_started.set()
                await asyncio.sleep(0.5)
                return await original(*args, **kwargs)

            writer.write = slow_write
            busy = await run.report(token)
            await busy.write(batch(2, [event(station) for _ in range(3)]))
            await write_started.wait()

            started = time.monotonic()
            stopping = asyncio.create_task(run.aggregator.stop(10))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # a Watch stream would otherwise run until the grace ends
            ack = await busy.read()  # the in-flight batch is finished and acked
            assert (ack.sequence, ack.accepted) == (2, 3)
            await stopping
            assert time.monotonic() - started < 5  # drained, not waiting out the grace
            for call in (busy, idle):
                assert await call.code() == grpc.StatusCode.UNAVAILABLE

    run_async(main())
    assert stored_counts(client, station)["events"] == 4


def test_reflection_lists_the_services(ns):
    async def main() -> set[str]:
        async with running(ns) as run:
            stub = reflection_pb2_grpc.ServerReflectionStub(run.channel)
            call = stub.ServerReflectionInfo()
            await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
            response = await call.read()
            await call.done_writing()
            return {s.name for s in response.list_services_response.service}

    assert {"slimspect.v1.Ingest", "grpc.health.v1.Health"} <= run_async(main())


def test_metrics_count_outcomes_and_reasons(ns):
    station = ns.station()

    async def main():
        async with running(ns) as run:
            token = await run.token(station)
            e = event(station)
            await run.send(token, batch(1, [e, e, event(station, image_height=0)]))
            return run.aggregator.metrics.registry

    registry = run_async(main())

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("slimspect_aggregator_events_total", outcome="accepted") == 1
    assert sample("slimspect_aggregator_events_total", outcome="duplicate") == 1
    assert sample("slimspect_aggregator_rejections_total", reason="MALFORMED") == 1
    assert sample("slimspect_aggregator_batch_seconds_count") == 1
    assert sample("slimspect_aggregator_streams") == 0


def test_stored_event_reads_back_as_sent(client, ns):
    station = ns.station()
    sent = event(station, "e-1", classes=["scratches", "pitted"], crop=True, inference_ms=12.25)

    async def main() -> None:
        async with running(ns) as run:
            await run.send(await run.token(station), batch(1, [sent]))

    run_async(main())
    stored = schema.decode_event(client.get(schema.event_key(station, "e-1")))
    assert stored["camera"] == "cam0" and stored["model_version"] == "1.0.0"
    assert stored["captured_at_ms"] == sent.captured_at_ms
    assert stored["inference_ms"] == 12.25 and stored["frame_count"] == 1
    assert stored["detections"][1] == {
        "box": [11.0, 20.0, 111.0, 64.5],
        "score": 0.875,
        "class_id": CLASSES.index("pitted"),
        "class_name": "pitted",
        "crop": True,
    }
    assert client.get(schema.crop_key(station, "e-1", 1)) == JPEG
    assert stored["detections"] and stored["n_detections"] == 2
