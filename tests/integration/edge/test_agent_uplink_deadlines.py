"""The uplink's deadlines against a server that hangs: an aggregator that takes the batches
but never acknowledges them (a stuck Redis behind it, say). The real aggregator acks or
fails; this fault needs a server of the test's own, speaking the real Ingest service.

An overdue ack ends the stream (``ack_timeout_s``); the events stay in the spool and go
out again on the next stream, and stopping does not wait on the hung server longer than
``drain_s``.
"""

from __future__ import annotations

import asyncio
import re
import time

import grpc
import pytest
from aggregator_harness import run_async

from edge_agent.metrics import AgentMetrics
from edge_agent.settings import UplinkSettings
from edge_agent.spool import Spool
from edge_agent.uplink import Uplink
from slimspect.v1 import inspection_pb2, inspection_pb2_grpc

pytestmark = pytest.mark.timeout(120)


class HungIngest(inspection_pb2_grpc.IngestServicer):
    """Reads every batch, acknowledges none."""

    def __init__(self) -> None:
        self.streams: list[list[str]] = []  # the event ids each stream carried

    async def Report(self, request_iterator, context):
        seen: list[str] = []
        self.streams.append(seen)
        async for batch in request_iterator:
            seen.extend(e.event_id for e in batch.events)
        return
        yield  # a stream-stream handler that yields nothing


def test_an_overdue_ack_ends_the_stream_and_the_events_go_out_again(tmp_path):
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    for i in range(3):
        spool.append(
            inspection_pb2.InspectionEvent(
                event_id=f"e{i}", station="st", camera="c", captured_at_ms=1_750_000_000_000 + i
            )
        )
    servicer = HungIngest()

    async def scenario():
        server = grpc.aio.server()
        inspection_pb2_grpc.add_IngestServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        settings = UplinkSettings(
            endpoint=f"127.0.0.1:{port}",
            batch_max_delay_s=0,
            ack_timeout_s=0.5,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            drain_s=1.0,
        )
        uplink = Uplink(settings, token="sst_t", spool=spool, metrics=AgentMetrics())
        stop = asyncio.Event()
        task = asyncio.create_task(uplink.run(stop))
        deadline = time.monotonic() + 60
        while len([s for s in servicer.streams if s]) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        error = uplink.last_error
        await asyncio.sleep(0.2)  # a batch in flight again, unacked
        stopping = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
        stopped_in = time.monotonic() - stopping
        await server.stop(0)
        return error, stopped_in

    error, stopped_in = run_async(scenario())
    carried = [s for s in servicer.streams if s]
    assert len(carried) >= 3
    assert all(s == ["e0", "e1", "e2"] for s in carried)  # sent again, whole, each stream
    assert re.fullmatch(r"batch \d+ not acknowledged within 0.5 s", error), error
    assert spool.stats().depth == 3  # nothing acked: nothing left the spool
    assert stopped_in < 1.0 + 1.5  # drain_s, and a little for closing
    spool.close()
