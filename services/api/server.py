"""The API process: uvicorn (HTTP) and the Fleet gRPC server in ONE event loop.

fleet.proto says the API serves ``Fleet.Heartbeat``: both servers share one
:class:`~services.rollout.service.RolloutService`, so what a heartbeat records is what
``/v1/stations`` and the rollout routes read, with no second process to deploy.

Signals are handled here, not by uvicorn (whose own handler re-raises the signal after
its shutdown, which would cut the Fleet server's graceful stop short): SIGTERM/SIGINT
stop the HTTP server (in-flight requests finish), then the Fleet server within
``grace_s``, then Redis is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI

from services.api.app import create_app
from services.api.context import ApiContext
from services.api.keys import ApiKeyStore
from services.api.metrics import Metrics
from services.api.settings import ApiSettings
from services.heap import freeze_startup_objects
from services.rollout.fleet import build_fleet_server
from services.rollout.service import RolloutService
from services.rollout.settings import RolloutSettings
from slimspect.logs import configure_logging
from slimspect.settings import StoreSettings
from slimspect.store import ModelStore

log = logging.getLogger("slimspect.api")

GRACE_S = 5.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the caller owns the signals (see the module docstring)


@dataclass
class HttpServer:
    """A started uvicorn server on a bound port."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await self.task


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket whose accepted connections get TCP_NODELAY.

    asyncio turns Nagle off only for sockets whose ``proto`` is IPPROTO_TCP; the sockets
    ``socket.create_server`` makes have proto 0 (and so do the connections they accept),
    which left Nagle on and put a 40 ms delayed-ACK stall on responses written in two
    parts (headers, then body): the query benchmark's p99 was ~80 ms because of it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def start_http(app: FastAPI, host: str, port: int) -> HttpServer:
    """Starts uvicorn on ``host:port`` (0: a free port) in this loop; returns once it listens."""
    sock = _listen(host, port)
    config = uvicorn.Config(
        app,
        log_config=None,  # uvicorn's loggers propagate to the root logger: JSON like ours
        access_log=False,  # MetricsMiddleware logs each request
        lifespan="off",
        timeout_graceful_shutdown=GRACE_S,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    while not server.started:
        if task.done():
            sock.close()
            await task  # raises what stopped it
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    return HttpServer(server=server, task=task, port=sock.getsockname()[1])


def rollout_redis_url(api: ApiSettings, rollout: RolloutSettings) -> str:
    """The rollout service's Redis: its own when SLIMSPECT_ROLLOUT_REDIS_URL is set, else the API's."""
    return rollout.redis_url if "redis_url" in rollout.model_fields_set else api.redis_url


async def serve(
    settings: ApiSettings,
    rollout_settings: RolloutSettings,
    store_settings: StoreSettings | None = None,
) -> None:
    """Runs the API (and the Fleet server) until SIGTERM or SIGINT."""
    configure_logging(settings.log_level)
    redis = aioredis.Redis.from_url(settings.redis_url)
    fleet_url = rollout_redis_url(settings, rollout_settings)
    fleet_redis = redis if fleet_url == settings.redis_url else aioredis.Redis.from_url(fleet_url)
    fleet = http = None
    try:
        await redis.ping()
        await fleet_redis.ping()
        store = None
        if settings.model_store:
            store = ModelStore.from_settings(store_settings or StoreSettings())
        rollout = RolloutService(fleet_redis, rollout_settings)
        ctx = ApiContext(
            settings=settings,
            redis=redis,
            keys=ApiKeyStore(redis),
            store=store,
            rollout=rollout,
            metrics=Metrics(),
        )
        fleet_port = None
        if settings.fleet:
            fleet, fleet_port = build_fleet_server(rollout_settings, fleet_redis, service=rollout)
            await fleet.start()
        http = await start_http(create_app(ctx), settings.host, settings.port)
        freeze_startup_objects()  # full GC passes were the queries' p99 stalls
        log.info(
            "serving",
            extra={
                "address": f"{settings.host}:{http.port}",
                "fleet_address": f"{rollout_settings.host}:{fleet_port}" if fleet else None,
                "model_store": store.url if store else None,
            },
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopped, http.task}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        log.info("stopping")
    finally:
        if http is not None:
            await http.stop()
        if fleet is not None:
            await fleet.stop(GRACE_S)
        if fleet_redis is not redis:
            await fleet_redis.aclose()
        await redis.aclose()
        log.info("stopped")
