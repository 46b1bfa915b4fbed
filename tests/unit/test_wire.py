"""The wire contracts: stubs match proto/, messages round-trip, a real gRPC server answers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf.message import Message

from slimspect.v1 import fleet_pb2, fleet_pb2_grpc, inspection_pb2, inspection_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "slimspect" / "v1"


def test_checked_in_stubs_match_proto(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "slimspect" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    checked_in = sorted(p.name for p in STUBS.iterdir() if p.is_file())
    hint = "slimspect/v1 is stale against proto/: run `make proto` and commit the result"
    assert checked_in == names, hint
    stale = [n for n in names if (fresh / n).read_bytes() != (STUBS / n).read_bytes()]
    assert not stale, f"{hint} (differs: {', '.join(stale)})"


def _event(
    event_id: str = "0192f3a0-7c1e-7000-8000-000000000001",
) -> inspection_pb2.InspectionEvent:
    det = inspection_pb2.Detection(
        box=inspection_pb2.Box(x1=10.5, y1=20.25, x2=110.0, y2=64.75),
        score=0.875,
        class_id=3,
        class_name="scratches",
        crop_jpeg=b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9",
    )
    return inspection_pb2.InspectionEvent(
        event_id=event_id,
        station="line1-st3",
        camera="cam0",
        captured_at_ms=1_767_225_600_123,
        model_name="neu-det",
        model_version="2026.01.05-3",
        image_width=640,
        image_height=480,
        detections=[det],
        inference_ms=41.5,
        frame_count=1,
    )


def _heartbeat() -> fleet_pb2.HeartbeatRequest:
    return fleet_pb2.HeartbeatRequest(
        station="line1-st3",
        agent_version="0.1.0",
        model_name="neu-det",
        model_version="2026.01.05-3",
        health=fleet_pb2.DEGRADED,
        fps=23.5,
        spool_depth=12,
        spool_bytes=40_960,
        events_dropped=2,
        last_update=fleet_pb2.UpdateResult(
            version="2026.01.05-3",
            status=fleet_pb2.UPDATE_ROLLED_BACK,
            reason="smoke test: mAP below floor",
            at_ms=1_767_225_000_000,
        ),
        cameras=[
            fleet_pb2.CameraStatus(
                camera="cam0", state=fleet_pb2.CAMERA_RETRYING, fps=11.75, error="timeout"
            )
        ],
        sent_at_ms=1_767_225_600_999,
    )


def _assert_all_set(msg: Message) -> None:
    """Every field of msg (and of every nested message) holds a non-default value."""
    set_fields = {fd.name for fd, _ in msg.ListFields()}
    missing = {fd.name for fd in msg.DESCRIPTOR.fields} - set_fields
    assert not missing, f"{msg.DESCRIPTOR.name}: fields not set: {sorted(missing)}"
    for fd in msg.DESCRIPTOR.fields:
        if fd.message_type is not None:
            value = getattr(msg, fd.name)
            for item in value if fd.is_repeated else [value]:
                _assert_all_set(item)


def test_messages_round_trip_with_all_fields_set() -> None:
    batch = inspection_pb2.ReportBatch(sequence=2**40 + 7, events=[_event()])
    ack = inspection_pb2.Ack(
        sequence=2**40 + 7,
        accepted=1,
        duplicate=2,
        rejected=1,
        rejections=[
            inspection_pb2.Rejection(
                event_id="e9", reason=inspection_pb2.BOX_OUTSIDE_IMAGE, message="x2 > 640"
            )
        ],
    )
    reply = fleet_pb2.HeartbeatReply(
        model_name="neu-det",
        model_version="2026.01.06-1",
        channel="canary",
        heartbeat_interval_s=10,
        server_time_ms=1_767_225_601_000,
    )
    for msg in (batch, ack, _heartbeat(), reply):
        _assert_all_set(msg)
        back = type(msg).FromString(msg.SerializeToString())
        assert back == msg
    event = inspection_pb2.ReportBatch.FromString(batch.SerializeToString()).events[0]
    assert event.detections[0].box.x2 == 110.0 and event.captured_at_ms == 1_767_225_600_123


class _Ingest(inspection_pb2_grpc.IngestServicer):
    """Toy aggregator: dedupes on event_id in memory, rejects events without one."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    async def Report(
        self, request_iterator: AsyncIterator[inspection_pb2.ReportBatch], context: object
    ) -> AsyncIterator[inspection_pb2.Ack]:
        async for batch in request_iterator:
            ack = inspection_pb2.Ack(sequence=batch.sequence)
            for ev in batch.events:
                if not ev.event_id:
                    ack.rejected += 1
                    ack.rejections.add(reason=inspection_pb2.MISSING_ID, message="no event_id")
                elif ev.event_id in self.seen:
                    ack.duplicate += 1
                else:
                    self.seen.add(ev.event_id)
                    ack.accepted += 1
            yield ack


class _Fleet(fleet_pb2_grpc.FleetServicer):
    async def Heartbeat(
        self, request: fleet_pb2.HeartbeatRequest, context: object
    ) -> fleet_pb2.HeartbeatReply:
        return fleet_pb2.HeartbeatReply(
            model_name=request.model_name,
            model_version="2026.01.06-1",
            channel="stable",
            heartbeat_interval_s=10,
            server_time_ms=1_767_225_601_000,
        )


async def _exercise_server() -> None:
    server = grpc.aio.server()
    inspection_pb2_grpc.add_IngestServicer_to_server(_Ingest(), server)
    fleet_pb2_grpc.add_FleetServicer_to_server(_Fleet(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            batches = [
                inspection_pb2.ReportBatch(sequence=1, events=[_event("a"), _event("b")]),
                inspection_pb2.ReportBatch(
                    sequence=2, events=[_event("b"), _event(""), _event("c")]
                ),
                inspection_pb2.ReportBatch(sequence=3),
            ]

            async def requests() -> AsyncIterator[inspection_pb2.ReportBatch]:
                for b in batches:
                    yield b

            call = inspection_pb2_grpc.IngestStub(channel).Report(requests())
            acks = [ack async for ack in call]
            assert [(a.sequence, a.accepted, a.duplicate, a.rejected) for a in acks] == [
                (1, 2, 0, 0),
                (2, 1, 1, 1),
                (3, 0, 0, 0),
            ]
            for batch, ack in zip(batches, acks, strict=True):
                assert ack.accepted + ack.duplicate + ack.rejected == len(batch.events)
            assert acks[1].rejections[0].reason == inspection_pb2.MISSING_ID

            reply = await fleet_pb2_grpc.FleetStub(channel).Heartbeat(_heartbeat(), timeout=5)
            assert (reply.model_name, reply.model_version) == ("neu-det", "2026.01.06-1")
            assert reply.channel == "stable" and reply.heartbeat_interval_s == 10
    finally:
        await server.stop(grace=None)


def test_grpc_aio_ingest_and_fleet_round_trip() -> None:
    asyncio.run(asyncio.wait_for(_exercise_server(), timeout=10))
