"""``Fleet.Heartbeat``: report the station's state, learn which model it should run.

Every ``heartbeat_interval_s`` (the fleet's reply sets the next interval) the agent sends
its status snapshot (status.py) with a deadline of ``timeout_s``. When the reply names a
model version other than the one running, the updater installs it in the background
(updater.py); as soon as an install finishes a heartbeat goes out at once, so the fleet
learns the result (``last_update``) without waiting a whole interval. A failed heartbeat
is logged and counted; the next one is tried at the next interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from edge_agent.aio import wait_first
from edge_agent.channel import bearer, make_channel
from edge_agent.metrics import AgentMetrics
from edge_agent.model_cache import ModelRef
from edge_agent.settings import FleetSettings
from edge_agent.status import AgentStatus
from edge_agent.updater import ModelUpdater
from slimspect.v1 import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger("slimspect.agent.heartbeat")


class Heartbeat:
    """The heartbeat loop; :attr:`last_reply` is the fleet's last answer."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        token: str,
        status: Callable[[], AgentStatus],
        updater: ModelUpdater,
        metrics: AgentMetrics,
    ) -> None:
        self.settings = settings
        self.status = status
        self.updater = updater
        self.metrics = metrics
        self.last_reply: fleet_pb2.HeartbeatReply | None = None
        self.last_error = ""
        self._metadata = bearer(token)

    async def run(self, stop: asyncio.Event) -> None:
        channel = make_channel(self.settings.endpoint, self.settings.tls)
        stub = fleet_pb2_grpc.FleetStub(channel)
        interval = self.settings.heartbeat_interval_s
        try:
            while not stop.is_set():
                self.updater.finished.clear()
                reply = await self.beat(stub)
                if reply is not None:
                    interval = reply.heartbeat_interval_s or interval
                    self._act(reply)
                await wait_first(stop.wait(), self.updater.finished.wait(), timeout=interval)
        finally:
            await channel.close(grace=None)

    async def beat(self, stub: fleet_pb2_grpc.FleetStub) -> fleet_pb2.HeartbeatReply | None:
        request = self.status().heartbeat(sent_at_ms=int(time.time() * 1000))
        try:
            reply = await stub.Heartbeat(
                request, timeout=self.settings.timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as exc:
            self.last_error = f"{exc.code().name}: {exc.details()}"
            self.metrics.heartbeats.labels("error").inc()
            log.warning("heartbeat failed", extra={"error": self.last_error})
            return None
        self.last_error = ""
        self.last_reply = reply
        self.metrics.heartbeats.labels("ok").inc()
        return reply

    def _act(self, reply: fleet_pb2.HeartbeatReply) -> None:
        if not reply.model_version or not reply.model_name:
            return  # keep what runs
        try:
            ref = ModelRef(reply.model_name, reply.model_version)
        except ValueError as exc:
            log.error("the fleet named an invalid model", extra={"error": str(exc)})
            return
        self.updater.request(ref)
