"""What every slimspect gRPC server shares: binding, health, reflection, a periodic task,
the graceful stop, and the station-token check of its calls.

The aggregator (``Ingest``) and the Fleet server (``Fleet``) are each one service over this:
:func:`bind` makes the ``grpc.aio.Server`` with health and reflection on a plain or TLS
port, :class:`GrpcService` starts it (health SERVING) and runs its periodic task (a sweep),
and stops it in order: NOT_SERVING, ``before_stop`` (the aggregator drains its streams),
``server.stop(grace)``, then the periodic task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

from services.aggregator.auth import TokenStore, bearer_token
from services.server_settings import StationServerSettings
from slimspect.grpc_tls import server_credentials

log = logging.getLogger("slimspect.grpc")


def bind(
    service_name: str,
    add_servicer: Callable[[grpc.aio.Server], None],
    settings: StationServerSettings,
    options: Sequence[tuple[str, int]] = (),
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """A server with the service that ``add_servicer`` adds, health and reflection, bound
    to ``settings.host:port`` (port 0: a free one; TLS when the settings have a
    certificate), not started. Returns it, its health servicer and the bound port."""
    health_servicer = health.aio.HealthServicer()
    server = grpc.aio.server(options=list(options))
    add_servicer(server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port}"
    if settings.tls:
        credentials = server_credentials(settings.tls_cert, settings.tls_key, settings.tls_ca)
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    return server, health_servicer, port


class GrpcService:
    """A bound server, its health, and an optional task run every ``interval_s`` seconds."""

    def __init__(
        self,
        *,
        server: grpc.aio.Server,
        port: int,
        health: health.aio.HealthServicer,
        service_name: str,
        periodic: Callable[[], Awaitable[None]] | None = None,
        interval_s: float = 0.0,
        run_at_start: bool = False,
        before_stop: Callable[[], None] | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.health = health
        self._service_name = service_name
        self._periodic = periodic
        self._interval_s = interval_s
        self._run_at_start = run_at_start
        self._before_stop = before_stop
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self.server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        await self.health.set(self._service_name, serving)
        if self._periodic is not None and self._interval_s > 0:
            name = f"{self._service_name}-periodic"
            self._task = asyncio.create_task(self._run_forever(), name=name)

    async def stop(self, grace: float | None) -> None:
        """Graceful stop: NOT_SERVING, ``before_stop``, ``server.stop(grace)``, the task."""
        await self.health.enter_graceful_shutdown()
        if self._before_stop is not None:
            self._before_stop()
        await self.server.stop(grace)
        if self._task is not None:
            # The event ends the loop even if a client library swallows the cancellation.
            self._stopping.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_forever(self) -> None:
        assert self._periodic is not None
        first = self._run_at_start
        while not self._stopping.is_set():
            if not first:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._interval_s)
                if self._stopping.is_set():
                    return
            first = False
            await self._periodic()


async def authenticate_station(
    context: grpc.aio.ServicerContext,
    tokens: TokenStore,
    *,
    what: str,
    on_refused: Callable[[], None] | None = None,
) -> str:
    """The station whose token the call presents (``authorization: Bearer <token>``).

    Aborts the call with UNAVAILABLE when the token store cannot be read and with
    UNAUTHENTICATED (after ``on_refused``) when the token is missing or unknown; ``what``
    names the call in the log ("stream", "heartbeat").
    """
    token = bearer_token(context.invocation_metadata())
    station: str | None = None
    try:
        station = await tokens.station_for(token) if token else None
    except RedisError as exc:
        log.warning("token lookup failed", extra={"error": str(exc)})
        await context.abort(grpc.StatusCode.UNAVAILABLE, "token store unavailable")
    if station is None:
        if on_refused is not None:
            on_refused()
        log.warning(f"unauthenticated {what}", extra={"peer": context.peer()})
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "missing or unknown token (metadata 'authorization: Bearer <token>')",
        )
    assert station is not None
    return station
