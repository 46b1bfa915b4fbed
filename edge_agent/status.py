"""What the agent says about itself: one snapshot for the heartbeat, /healthz and /metrics.

Health, from the worst down:

- ``UNHEALTHY`` (not inspecting): no model loaded, or no camera that is running, starting
  or played out (every camera retrying or failed).
- ``DEGRADED`` (inspecting, but something needs attention): a camera retrying or failed,
  the uplink down, the spool summarising clean frames, or events dropped.
- ``HEALTHY`` otherwise.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from edge_agent.model_cache import ModelRef
from edge_agent.spool import SpoolStats
from slimspect.v1 import fleet_pb2

_BAD_CAMERA = (fleet_pb2.CAMERA_RETRYING, fleet_pb2.CAMERA_FAILED)


class RateMeter:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def tick(self, now: float | None = None) -> None:
        self._times.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()
        if not self._times:
            return 0.0
        span = max(now - self._times[0], 1.0)
        return len(self._times) / min(span, self.window_s)


@dataclass(frozen=True)
class CameraReport:
    camera: str
    state: int  # fleet_pb2.CameraState
    fps: float
    error: str = ""


@dataclass(frozen=True)
class AgentStatus:
    """One consistent view of the agent."""

    station: str
    agent_version: str
    model: ModelRef | None
    cameras: tuple[CameraReport, ...]
    spool: SpoolStats
    spool_pressure: bool
    uplink_connected: bool
    last_update: fleet_pb2.UpdateResult | None = None
    uplink_error: str = ""  # why the uplink is down (a refused connection, a TLS failure, ...)
    fleet_error: str = ""  # why the last heartbeat failed ("" when it got its reply)
    health: int = field(init=False)
    problems: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        health, problems = assess(self)
        object.__setattr__(self, "health", health)
        object.__setattr__(self, "problems", problems)

    @property
    def fps(self) -> float:
        return sum(c.fps for c in self.cameras)

    @property
    def health_name(self) -> str:
        return fleet_pb2.Health.Name(self.health)

    def heartbeat(self, *, sent_at_ms: int) -> fleet_pb2.HeartbeatRequest:
        """The ``Fleet.Heartbeat`` request of this snapshot."""
        request = fleet_pb2.HeartbeatRequest(
            station=self.station,
            agent_version=self.agent_version,
            model_name=self.model.name if self.model else "",
            model_version=self.model.version if self.model else "",
            health=self.health,  # type: ignore[arg-type]
            fps=self.fps,
            spool_depth=self.spool.depth,
            spool_bytes=self.spool.bytes,
            events_dropped=self.spool.dropped_events,
            cameras=[
                fleet_pb2.CameraStatus(
                    camera=c.camera, state=c.state, fps=c.fps, error=c.error[:500]
                )  # type: ignore[arg-type]
                for c in self.cameras
            ],
            sent_at_ms=sent_at_ms,
        )
        if self.last_update is not None:
            request.last_update.CopyFrom(self.last_update)
        return request

    def to_dict(self) -> dict[str, object]:
        """For /healthz."""
        return {
            "station": self.station,
            "health": self.health_name,
            "problems": list(self.problems),
            "model": str(self.model) if self.model else None,
            "fps": round(self.fps, 2),
            "uplink_connected": self.uplink_connected,
            "uplink_error": self.uplink_error,
            "fleet_error": self.fleet_error,
            "spool": {
                "depth": self.spool.depth,
                "bytes": self.spool.bytes,
                "dropped_events": self.spool.dropped_events,
            },
            "cameras": [
                {
                    "camera": c.camera,
                    "state": fleet_pb2.CameraState.Name(c.state),
                    "fps": round(c.fps, 2),
                    "error": c.error,
                }
                for c in self.cameras
            ],
        }


def assess(status: AgentStatus) -> tuple[int, tuple[str, ...]]:
    """(health, the reasons it is not HEALTHY) of a snapshot; see the module docstring."""
    problems: list[str] = []
    if status.model is None:
        problems.append("no model loaded")
    inspecting = any(c.state not in _BAD_CAMERA for c in status.cameras)
    if not inspecting:
        problems.append("no camera is delivering frames")
    if problems:
        return fleet_pb2.UNHEALTHY, tuple(problems)
    for c in status.cameras:
        if c.state in _BAD_CAMERA:
            problems.append(f"camera {c.camera} {fleet_pb2.CameraState.Name(c.state)}: {c.error}")
    if not status.uplink_connected:
        why = f": {status.uplink_error}" if status.uplink_error else ""
        problems.append(f"uplink to the aggregator is down{why}")
    if status.spool_pressure:
        problems.append("spool above its summarising threshold")
    if status.spool.dropped_events:
        problems.append(f"{status.spool.dropped_events} events dropped (spool full)")
    return (fleet_pb2.DEGRADED if problems else fleet_pb2.HEALTHY), tuple(problems)
