"""The Fleet gRPC server: ``Fleet.Heartbeat`` over :class:`RolloutService`, health, reflection.

A library, not a daemon: the HTTP API process builds it with :func:`build_fleet_server` and
runs it beside its HTTP app (``await fleet.start()`` ... ``await fleet.stop(grace)``).

Authentication is the aggregator's: the agent sends its station token as
``authorization: Bearer <token>`` metadata, and the same token store (services.aggregator.auth)
names its station. Missing or unknown token: UNAUTHENTICATED; a heartbeat whose ``station``
is not the token's: PERMISSION_DENIED (a station reports only for itself); a heartbeat that
cannot be recorded: INVALID_ARGUMENT; Redis unreachable: UNAVAILABLE (the agent retries).

The server also sweeps every ``sweep_interval_s``: it evaluates every active rollout, so a
canary whose stations all fell silent is still rolled back or promoted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health
from redis.exceptions import RedisError

from services.aggregator.auth import TokenStore, token_store
from services.grpc_server import GrpcService, authenticate_station, bind
from services.rollout.errors import InvalidHeartbeat
from services.rollout.service import RolloutService, wall_ms
from services.rollout.settings import RolloutSettings
from slimspect.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger("slimspect.rollout.fleet")

FLEET_SERVICE = fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    """``Fleet.Heartbeat``: authenticate the station, record, answer what it should run."""

    def __init__(self, *, service: RolloutService, tokens: TokenStore) -> None:
        self._service = service
        self._tokens = tokens

    async def Heartbeat(
        self, request: fleet_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> fleet_pb2.HeartbeatReply:
        station = await self._authenticate(context)
        if request.station != station:
            log.warning(
                "heartbeat for another station",
                extra={"station": station, "claimed": request.station, "peer": context.peer()},
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token belongs to station {station!r}, not {request.station!r}",
            )
        try:
            return await self._service.record_heartbeat(request)
        except InvalidHeartbeat as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except RedisError as exc:
            log.error("heartbeat not recorded", extra={"station": station, "error": str(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "fleet store unavailable; retry")
        raise AssertionError("context.abort raises")  # pragma: no cover

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> str:
        return await authenticate_station(context, self._tokens, what="heartbeat")


class FleetServer(GrpcService):
    """A built (not yet started) Fleet server with its health servicer and the rollout
    sweep (every ``sweep_interval_s``; 0: none)."""

    def __init__(
        self,
        *,
        server: grpc.aio.Server,
        port: int,
        service: RolloutService,
        health: health.aio.HealthServicer,
        sweep_interval_s: float,
    ) -> None:
        super().__init__(
            server=server,
            port=port,
            health=health,
            service_name=FLEET_SERVICE,
            periodic=self._sweep,
            interval_s=sweep_interval_s,
        )
        self.service = service

    async def _sweep(self) -> None:
        try:
            for progress in await self.service.sweep():
                if progress.rollout.final:
                    log.info(
                        "sweep decided",
                        extra={"rollout": progress.rollout.id, "state": progress.rollout.state},
                    )
        except RedisError as exc:
            log.warning("rollout sweep failed", extra={"error": str(exc)})


def build_fleet_server(
    settings: RolloutSettings,
    redis: aioredis.Redis,
    *,
    service: RolloutService | None = None,
    tokens: TokenStore | None = None,
    now_ms: Callable[[], int] = wall_ms,
) -> tuple[FleetServer, int]:
    """The Fleet server on ``settings.host:port`` (port 0: a free one), bound, not started.

    Pass the API's ``service`` to share it (else one is made on ``redis`` with ``now_ms``).
    Returns the :class:`FleetServer` (``.server`` is the ``grpc.aio.Server``) and the bound
    port. Must be called with an event loop running.
    """
    service = service or RolloutService(redis, settings, now_ms=now_ms)
    servicer = FleetServicer(service=service, tokens=tokens or token_store(settings, redis))
    server, health_servicer, port = bind(
        FLEET_SERVICE,
        lambda srv: fleet_pb2_grpc.add_FleetServicer_to_server(servicer, srv),
        settings,
        [("grpc.max_receive_message_length", settings.max_message_bytes)],
    )
    fleet = FleetServer(
        server=server,
        port=port,
        service=service,
        health=health_servicer,
        sweep_interval_s=settings.sweep_interval_s,
    )
    return fleet, port
