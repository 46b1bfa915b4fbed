"""The aggregator's gRPC server: ``Ingest.Report`` into Redis, health, reflection, metrics.

One stream belongs to one station, the one its bearer token names (checked once when the
stream opens; missing or unknown token: UNAUTHENTICATED). For each ReportBatch, in order:
validate every event (a bad one is rejected alone, see validate.py), write the valid ones
(writer.py), then answer one Ack. The Ack is sent only after Redis answered the pipeline;
when the write fails the stream ends with UNAVAILABLE and no Ack, and the agent resends.

Shutdown (SIGTERM/SIGINT, or :meth:`Aggregator.stop`): health turns NOT_SERVING, every
stream finishes the batch it is writing, acks it and ends with UNAVAILABLE ("reconnect"),
idle streams end at once, then ``server.stop(grace)`` waits at most ``grace_s`` for what
is left. A batch cut off after that is simply not acked; each event is written atomically,
so its resend stores the missing ones and acks the others as duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health
from prometheus_client import start_http_server
from redis.exceptions import RedisError

from services.aggregator.auth import TokenStore, token_store
from services.aggregator.metrics import Metrics
from services.aggregator.settings import AggregatorSettings
from services.aggregator.validate import Limits, validate_event
from services.aggregator.writer import IngestWriter
from services.grpc_server import GrpcService, authenticate_station, bind
from services.heap import freeze_startup_objects
from slimspect.logs import configure_logging
from slimspect.v1 import inspection_pb2, inspection_pb2_grpc

log = logging.getLogger("slimspect.aggregator")

INGEST_SERVICE = inspection_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name
_DRAINED = object()


class IngestServicer(inspection_pb2_grpc.IngestServicer):
    """``Ingest.Report``: authenticate the stream, then validate, write and ack each batch."""

    def __init__(
        self,
        *,
        writer: IngestWriter,
        tokens: TokenStore,
        limits: Limits,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._tokens = tokens
        self._limits = limits
        self._metrics = metrics
        self._clock = clock
        self._draining = asyncio.Event()

    def drain(self) -> None:
        """Ends every stream after the batch it is handling (and idle streams at once)."""
        self._draining.set()

    async def Report(
        self,
        request_iterator: AsyncIterator[inspection_pb2.ReportBatch],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[inspection_pb2.Ack]:
        station = await self._authenticate(context)
        self._metrics.streams.inc()
        log.info("stream opened", extra={"station": station, "peer": context.peer()})
        try:
            while True:
                batch = await self._next_batch(context)
                if batch is None:
                    return
                if batch is _DRAINED:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, "aggregator shutting down; reconnect"
                    )
                yield await self._handle(station, batch, context)
        finally:
            self._metrics.streams.dec()
            log.info("stream closed", extra={"station": station})

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> str:
        return await authenticate_station(
            context, self._tokens, what="stream", on_refused=self._metrics.auth_failures.inc
        )

    async def _next_batch(self, context: grpc.aio.ServicerContext) -> object:
        """The next batch, None when the client closed its side, _DRAINED on shutdown."""
        if self._draining.is_set():
            return _DRAINED
        read = asyncio.ensure_future(context.read())
        drained = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({read, drained}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the RPC was cancelled: leave no read behind
            read.cancel()
            raise
        finally:
            drained.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
            return _DRAINED
        message = read.result()
        return None if message is grpc.aio.EOF else message

    async def _handle(
        self,
        station: str,
        batch: inspection_pb2.ReportBatch,
        context: grpc.aio.ServicerContext,
    ) -> inspection_pb2.Ack:
        started = time.perf_counter()
        now_ms = int(self._clock() * 1000)
        valid: list[inspection_pb2.InspectionEvent] = []
        rejections: list[inspection_pb2.Rejection] = []
        for event in batch.events:
            refused = validate_event(event, station=station, now_ms=now_ms, limits=self._limits)
            if refused is None:
                valid.append(event)
                continue
            rejections.append(
                inspection_pb2.Rejection(
                    event_id=event.event_id, reason=refused.reason, message=refused.message
                )
            )
            self._metrics.rejections.labels(refused.reason_name).inc()
        try:
            stored = await self._writer.write(station, valid, now_ms=now_ms)
        except RedisError as exc:
            self._metrics.write_errors.inc()
            log.error(
                "batch write failed; not acked",
                extra={"station": station, "sequence": batch.sequence, "error": str(exc)},
            )
            await context.abort(grpc.StatusCode.UNAVAILABLE, "storage unavailable; resend")
        accepted = sum(stored)
        ack = inspection_pb2.Ack(
            sequence=batch.sequence,
            accepted=accepted,
            duplicate=len(stored) - accepted,
            rejected=len(rejections),
            rejections=rejections,
        )
        self._metrics.events.labels("accepted").inc(ack.accepted)
        self._metrics.events.labels("duplicate").inc(ack.duplicate)
        self._metrics.events.labels("rejected").inc(ack.rejected)
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        level = logging.INFO if rejections else logging.DEBUG
        log.log(
            level,
            "batch",
            extra={
                "station": station,
                "sequence": batch.sequence,
                "accepted": ack.accepted,
                "duplicate": ack.duplicate,
                "rejected": ack.rejected,
                "reasons": sorted({inspection_pb2.RejectReason.Name(r.reason) for r in rejections}),
            },
        )
        return ack


class Aggregator(GrpcService):
    """A built (not yet started) server with its health, ingest servicer and the retention
    sweep (at start, catching up after downtime, then every ``sweep_interval_s``)."""

    def __init__(
        self,
        *,
        server: grpc.aio.Server,
        port: int,
        ingest: IngestServicer,
        health: health.aio.HealthServicer,
        writer: IngestWriter,
        metrics: Metrics,
        sweep_interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(
            server=server,
            port=port,
            health=health,
            service_name=INGEST_SERVICE,
            periodic=self._sweep,
            interval_s=sweep_interval_s,
            run_at_start=True,
            before_stop=ingest.drain,  # every stream acks its batch and ends
        )
        self.ingest = ingest
        self.writer = writer
        self.metrics = metrics
        self._clock = clock

    async def _sweep(self) -> None:
        try:
            removed = await self.writer.sweep(now_ms=int(self._clock() * 1000))
            self.metrics.swept.inc(removed)
            if removed:
                log.info("retention sweep", extra={"removed": removed})
        except RedisError as exc:
            log.warning("retention sweep failed", extra={"error": str(exc)})


def server_options(settings: AggregatorSettings) -> list[tuple[str, int]]:
    """gRPC channel arguments: message size and HTTP/2 keepalive."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Server side: clients may ping this often without a strike (GOAWAY after 2).
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            int(settings.keepalive_min_client_interval_s * 1000),
        ),
    ]


def build_server(
    settings: AggregatorSettings,
    redis: aioredis.Redis,
    *,
    metrics: Metrics | None = None,
    tokens: TokenStore | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[Aggregator, int]:
    """The aggregator on ``settings.host:port`` (port 0: a free one), bound, not started.

    Returns the :class:`Aggregator` (``.server`` is the ``grpc.aio.Server``) and the bound
    port. Must be called with an event loop running.
    """
    metrics = metrics or Metrics()
    writer = IngestWriter(redis, retention_ms=settings.retention_ms)
    ingest = IngestServicer(
        writer=writer,
        tokens=tokens or token_store(settings, redis),
        limits=Limits.from_settings(settings),
        metrics=metrics,
        clock=clock,
    )
    server, health_servicer, port = bind(
        INGEST_SERVICE,
        lambda srv: inspection_pb2_grpc.add_IngestServicer_to_server(ingest, srv),
        settings,
        server_options(settings),
    )
    aggregator = Aggregator(
        server=server,
        port=port,
        ingest=ingest,
        health=health_servicer,
        writer=writer,
        metrics=metrics,
        sweep_interval_s=settings.sweep_interval_s,
        clock=clock,
    )
    return aggregator, port


async def serve(settings: AggregatorSettings) -> None:
    """Runs the aggregator until SIGTERM or SIGINT, then stops gracefully."""
    configure_logging(settings.log_level)
    redis = aioredis.Redis.from_url(settings.redis_url)
    metrics_http = None
    try:
        await redis.ping()
        metrics = Metrics()
        if settings.metrics_port:
            metrics_http, _ = start_http_server(
                settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
            )
        aggregator, port = build_server(settings, redis, metrics=metrics)
        await aggregator.start()
        freeze_startup_objects()
        log.info(
            "serving",
            extra={
                "address": f"{settings.host}:{port}",
                "tls": "mutual" if settings.tls_ca else bool(settings.tls),
                "metrics_port": settings.metrics_port,
                "token_store": settings.token_store,
            },
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("stopping", extra={"grace_s": settings.grace_s})
            await aggregator.stop(settings.grace_s)
            log.info("stopped")
    finally:
        if metrics_http is not None:
            metrics_http.shutdown()
        await redis.aclose()
