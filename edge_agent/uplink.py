"""The uplink: spooled events to the aggregator over the bidi ``Ingest.Report`` stream.

One stream at a time. The sender takes the oldest spooled events not yet on this stream
and writes them as a ReportBatch once ``batch_max_events`` are waiting or the first of
them has waited ``batch_max_delay_s``; a batch also stops at ``batch_max_bytes``. At most
``max_inflight_batches`` are unacknowledged at once. The receiver matches each Ack to
its batch by sequence and only then deletes the batch's events from the spool (accepted,
duplicate and rejected alike: a rejection is final, the event would be refused again).

Anything that ends the stream (the aggregator restarting or draining, a network fault
noticed by keepalive, an ack overdue by ``ack_timeout_s``) drops the unacked batches from
memory, not from the spool; the next stream sends them again, and the aggregator answers
those it already stored as duplicates. So each event is stored exactly once. Reconnects
wait an exponential backoff with jitter (backoff.py), reset by a stream that got acks.

On stop, the sender writes no new batch, waits up to ``drain_s`` for the acks of those in
flight, and closes its side; whatever is left is in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from edge_agent.aio import wait_first
from edge_agent.backoff import backoff_delay
from edge_agent.channel import bearer, make_channel
from edge_agent.metrics import AgentMetrics
from edge_agent.settings import UplinkSettings
from edge_agent.spool import Spool, SpooledEvent
from slimspect.v1 import inspection_pb2, inspection_pb2_grpc

log = logging.getLogger("slimspect.agent.uplink")

_POLL_S = 1.0  # the longest the sender sleeps without looking at the spool


class StreamLost(Exception):
    """The current stream cannot go on (no connection, ack overdue, stream ended)."""


@dataclass
class _Batch:
    ids: list[int]
    sent_at: float


class Uplink:
    """Sends the spool to the aggregator until stopped; see the module docstring."""

    def __init__(
        self, settings: UplinkSettings, *, token: str, spool: Spool, metrics: AgentMetrics
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.metrics = metrics
        self.connected = False
        self.last_error = ""
        self._metadata = bearer(token)
        self._changed = asyncio.Event()
        self._inflight: OrderedDict[int, _Batch] = OrderedDict()
        self._sequence = 0
        self._next_id = 0  # spool ids up to this one are on the current stream
        self._acked_on_stream = 0

    def wake(self) -> None:
        """New events in the spool (call on the event loop thread)."""
        self._changed.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Streams until ``stop`` is set, reconnecting as needed."""
        s = self.settings
        channel = make_channel(
            s.endpoint,
            s.tls,
            keepalive_time_s=s.keepalive_time_s,
            keepalive_timeout_s=s.keepalive_timeout_s,
            reconnect_backoff_s=(s.backoff_initial_s, s.backoff_max_s),
        )
        stub = inspection_pb2_grpc.IngestStub(channel)
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    await self._stream(channel, stub, stop)
                except (StreamLost, grpc.aio.AioRpcError) as exc:
                    self.last_error = _describe(exc)
                    self.metrics.uplink_errors.inc()
                    log.warning("uplink stream lost", extra={"error": self.last_error})
                finally:
                    self.connected = False
                    self._inflight.clear()  # still in the spool: resent on the next stream
                    self._next_id = 0
                if stop.is_set():
                    break
                attempt = 0 if self._acked_on_stream else attempt + 1
                delay = backoff_delay(max(attempt, 1), s.backoff_initial_s, s.backoff_max_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await channel.close(grace=None)

    async def _stream(
        self, channel: grpc.aio.Channel, stub: inspection_pb2_grpc.IngestStub, stop: asyncio.Event
    ) -> None:
        self._acked_on_stream = 0
        await wait_first(
            channel.channel_ready(), stop.wait(), timeout=self.settings.connect_timeout_s
        )
        if stop.is_set():
            return
        if channel.get_state() != grpc.ChannelConnectivity.READY:
            raise StreamLost(
                f"no connection to {self.settings.endpoint} within "
                f"{self.settings.connect_timeout_s:g} s{await self._connect_error(stub)}"
            )
        call = stub.Report(metadata=self._metadata)
        self.connected = True
        self.metrics.uplink_connects.inc()
        log.info("uplink stream open", extra={"endpoint": self.settings.endpoint})
        sender = asyncio.create_task(self._send(call, stop), name="uplink-send")
        receiver = asyncio.create_task(self._receive(call), name="uplink-receive")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:
                sender.result()  # raises StreamLost when an ack is overdue
                # Stopping: our side is closed after the drain; the aggregator ends the call.
                with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError, StreamLost):
                    await asyncio.wait_for(asyncio.shield(receiver), self.settings.drain_s)
                return
            receiver.result()  # raises the stream's error, if any
            raise StreamLost("the aggregator ended the stream")
        finally:
            for task in (sender, receiver):
                task.cancel()
            call.cancel()
            for task in (sender, receiver):
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, StreamLost):
                    await task

    async def _connect_error(self, stub: inspection_pb2_grpc.IngestStub) -> str:
        """Why the channel does not connect (``": <gRPC's last error>"``), else ``""``.

        ``channel_ready`` only times out; a call that fails fast is told the channel's last
        error: connection refused, a name that does not resolve, a TLS handshake that failed
        (``CERTIFICATE_VERIFY_FAILED``: the server's certificate is not signed by
        ``uplink.tls.ca``), which is what the log and /healthz should say.
        """
        call = stub.Report(
            metadata=self._metadata,
            wait_for_ready=False,
            timeout=min(1.0, self.settings.connect_timeout_s),
        )
        try:
            await call.read()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and exc.details():
                return f": {exc.details()}"
        except Exception as exc:  # noqa: BLE001 (only an explanation is at stake)
            log.debug("no reason for the missing connection", extra={"error": repr(exc)})
        finally:
            call.cancel()
        return ""

    async def _send(self, call: grpc.aio.StreamStreamCall, stop: asyncio.Event) -> None:
        s = self.settings
        waiting_since: float | None = None  # when the first event of a partial batch was seen
        while not stop.is_set():
            self._changed.clear()  # before looking: a wake from now on ends the wait below
            self._check_acks_due()
            timeout = _POLL_S
            if len(self._inflight) < s.max_inflight_batches:
                backlog = await asyncio.to_thread(self.spool.backlog, after_id=self._next_id)
                now = time.monotonic()
                if backlog:
                    waiting_since = waiting_since or now
                    if backlog >= s.batch_max_events or now - waiting_since >= s.batch_max_delay_s:
                        await self._write(call)
                        waiting_since = None
                        continue
                    timeout = waiting_since + s.batch_max_delay_s - now
                else:
                    waiting_since = None
            if self._inflight:
                oldest = next(iter(self._inflight.values())).sent_at
                timeout = min(timeout, oldest + s.ack_timeout_s - time.monotonic())
            await self._wait(stop, max(0.0, timeout))
        await self._drain()
        await call.done_writing()

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        s = self.settings
        rows: list[SpooledEvent] = await asyncio.to_thread(
            self.spool.take,
            after_id=self._next_id,
            max_events=s.batch_max_events,
            max_bytes=int(s.batch_max_bytes),
        )
        if not rows:
            return
        self._sequence += 1
        self._inflight[self._sequence] = _Batch([r.id for r in rows], time.monotonic())
        self._next_id = rows[-1].id
        batch = inspection_pb2.ReportBatch(sequence=self._sequence, events=[r.event for r in rows])
        await call.write(batch)
        self.metrics.events_sent.inc(len(rows))

    async def _receive(self, call: grpc.aio.StreamStreamCall) -> None:
        async for ack in call:
            batch = self._inflight.pop(ack.sequence, None)
            if batch is None:
                log.warning("ack for an unknown batch", extra={"sequence": ack.sequence})
                continue
            await asyncio.to_thread(self.spool.remove, batch.ids)
            self._acked_on_stream += len(batch.ids)
            self.metrics.events_acked.labels("accepted").inc(ack.accepted)
            self.metrics.events_acked.labels("duplicate").inc(ack.duplicate)
            self.metrics.events_acked.labels("rejected").inc(ack.rejected)
            for rejection in ack.rejections:
                log.error(
                    "event rejected by the aggregator (dropped from the spool)",
                    extra={
                        "event_id": rejection.event_id,
                        "reason": inspection_pb2.RejectReason.Name(rejection.reason),
                        "detail": rejection.message,
                    },
                )
            self._changed.set()

    def _check_acks_due(self) -> None:
        if not self._inflight:
            return
        sequence, oldest = next(iter(self._inflight.items()))
        if time.monotonic() - oldest.sent_at > self.settings.ack_timeout_s:
            raise StreamLost(
                f"batch {sequence} not acknowledged within {self.settings.ack_timeout_s:g} s"
            )

    async def _drain(self) -> None:
        """Waits up to ``drain_s`` for the acks of the batches in flight."""
        deadline = time.monotonic() + self.settings.drain_s
        while True:
            self._changed.clear()
            if not self._inflight or time.monotonic() >= deadline:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())

    async def _wait(self, stop: asyncio.Event, timeout: float) -> None:
        """Until new events, an ack, ``stop``, or ``timeout`` seconds."""
        await wait_first(self._changed.wait(), stop.wait(), timeout=timeout)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
