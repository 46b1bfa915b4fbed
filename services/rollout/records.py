"""How fleet records are laid out in their Redis hashes and read back (see keys.py).

Every value is a string in Redis; "" stands for an absent value (None). Decoding accepts
bytes or str, so the service works with a client made with or without
``decode_responses``. Heartbeats are checked here too, since what a heartbeat may carry
is what a station hash may hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.aggregator.schema import STATION_RE
from services.rollout.errors import InvalidHeartbeat
from services.rollout.models import AuditEntry, CameraInfo, Rollout, StationState, UpdateInfo
from slimspect.manifest import NAME_PATTERN, VERSION_PATTERN
from slimspect.v1 import fleet_pb2

MAX_CAMERAS = 64
MAX_SHORT = 128  # agent version, camera id, update version
MAX_TEXT = 512  # free text (errors, reasons): longer is cut, not refused

_NAME_RE = re.compile(NAME_PATTERN)
_VERSION_RE = re.compile(VERSION_PATTERN)


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def _opt(value: str) -> str | None:
    return value or None


def wire_float(value: float) -> float:
    """A float32 wire value as the shortest decimal that round-trips (0.875, not 0.8750000...)."""
    return float(f"{value:.7g}")


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:  # a newer agent's value this build does not know
        return str(value)


def _cut(value: str) -> str:
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 3] + "..."


def check_heartbeat(request: fleet_pb2.HeartbeatRequest) -> None:
    """Raises :class:`InvalidHeartbeat` unless ``request`` can be recorded as it is."""
    if not STATION_RE.fullmatch(request.station):
        raise InvalidHeartbeat(
            f"station {request.station!r} must be 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)"
        )
    if request.model_name and not _NAME_RE.fullmatch(request.model_name):
        raise InvalidHeartbeat(f"invalid model name {request.model_name!r}")
    if request.model_version and not _VERSION_RE.fullmatch(request.model_version):
        raise InvalidHeartbeat(f"invalid model version {request.model_version!r}")
    if len(request.agent_version) > MAX_SHORT:
        raise InvalidHeartbeat(f"agent_version longer than {MAX_SHORT} characters")
    if len(request.cameras) > MAX_CAMERAS:
        raise InvalidHeartbeat(f"more than {MAX_CAMERAS} cameras")
    if any(len(c.camera) > MAX_SHORT for c in request.cameras):
        raise InvalidHeartbeat(f"a camera id is longer than {MAX_SHORT} characters")
    if len(request.last_update.version) > MAX_SHORT:
        raise InvalidHeartbeat(f"last_update.version longer than {MAX_SHORT} characters")


def last_update(request: fleet_pb2.HeartbeatRequest) -> UpdateInfo | None:
    if not request.HasField("last_update"):
        return None
    lu = request.last_update
    return UpdateInfo(
        version=lu.version,
        status=_enum_name(fleet_pb2.UpdateStatus, lu.status),
        reason=_cut(lu.reason),
        at_ms=lu.at_ms,
    )


def health_name(request: fleet_pb2.HeartbeatRequest) -> str:
    return _enum_name(fleet_pb2.Health, request.health)


def station_fields(
    request: fleet_pb2.HeartbeatRequest,
    *,
    now_ms: int,
    target_model: str | None,
    target_version: str | None,
    channel: str | None,
) -> dict[str, str]:
    """The ``station:S`` hash of a checked heartbeat and the reply it got."""
    update = last_update(request)
    cameras = [
        CameraInfo(
            camera=c.camera,
            state=_enum_name(fleet_pb2.CameraState, c.state),
            fps=wire_float(c.fps),
            error=_cut(c.error),
        ).model_dump()
        for c in request.cameras
    ]
    return {
        "station": request.station,
        "last_seen_ms": str(now_ms),
        "sent_at_ms": str(request.sent_at_ms),
        "agent_version": request.agent_version,
        "model_name": request.model_name,
        "model_version": request.model_version,
        "health": health_name(request),
        "fps": repr(wire_float(request.fps)),
        "spool_depth": str(request.spool_depth),
        "spool_bytes": str(request.spool_bytes),
        "events_dropped": str(request.events_dropped),
        "last_update": update.model_dump_json() if update else "",
        "cameras": json.dumps(cameras, separators=(",", ":")),
        **target_fields(target_model, target_version, channel),
    }


def target_fields(model: str | None, version: str | None, channel: str | None) -> dict[str, str]:
    return {"target_model": model or "", "target_version": version or "", "channel": channel or ""}


def station_state(
    fields: Mapping[str, str], *, now_ms: int, stale_after_ms: int, assigned_model: str | None
) -> StationState:
    """A ``station:S`` hash (decoded) -> :class:`StationState`."""
    last_seen = int(fields["last_seen_ms"])
    update = fields.get("last_update", "")
    return StationState(
        station=fields["station"],
        last_seen_ms=last_seen,
        online=now_ms - last_seen <= stale_after_ms,
        agent_version=fields.get("agent_version", ""),
        model_name=_opt(fields.get("model_name", "")),
        model_version=_opt(fields.get("model_version", "")),
        assigned_model=assigned_model,
        target_model=_opt(fields.get("target_model", "")),
        target_version=_opt(fields.get("target_version", "")),
        channel=_opt(fields.get("channel", "")),
        health=fields.get("health", "HEALTH_UNSPECIFIED"),
        fps=float(fields.get("fps") or 0.0),
        spool_depth=int(fields.get("spool_depth") or 0),
        spool_bytes=int(fields.get("spool_bytes") or 0),
        events_dropped=int(fields.get("events_dropped") or 0),
        last_update=UpdateInfo.model_validate_json(update) if update else None,
        cameras=[CameraInfo.model_validate(c) for c in json.loads(fields.get("cameras") or "[]")],
    )


def rollout_fields(rollout: Rollout) -> dict[str, str]:
    """A :class:`Rollout` -> its ``rollout:R`` hash."""
    return {
        "id": rollout.id,
        "model_name": rollout.model_name,
        "version": rollout.version,
        "previous_version": rollout.previous_version or "",
        "channel": rollout.channel,
        "share": "" if rollout.share is None else repr(rollout.share),
        "stations": "" if rollout.stations is None else json.dumps(rollout.stations),
        "state": rollout.state,
        "created_at_ms": str(rollout.created_at_ms),
        "updated_at_ms": str(rollout.updated_at_ms),
        "created_by": rollout.created_by,
        "soak_s": repr(rollout.soak_s),
        "min_fps_ratio": repr(rollout.min_fps_ratio),
        "reason": rollout.reason,
        "decided_by": rollout.decided_by or "",
        "decision_reason": rollout.decision_reason,
    }


def rollout_from(fields: Mapping[str, str]) -> Rollout:
    """A ``rollout:R`` hash (decoded) -> :class:`Rollout`."""
    return Rollout(
        id=fields["id"],
        model_name=fields["model_name"],
        version=fields["version"],
        previous_version=_opt(fields.get("previous_version", "")),
        channel=fields["channel"],  # type: ignore[arg-type]
        share=float(fields["share"]) if fields.get("share") else None,
        stations=json.loads(fields["stations"]) if fields.get("stations") else None,
        state=fields["state"],  # type: ignore[arg-type]
        created_at_ms=int(fields["created_at_ms"]),
        updated_at_ms=int(fields["updated_at_ms"]),
        created_by=fields.get("created_by", ""),
        soak_s=float(fields["soak_s"]),
        min_fps_ratio=float(fields["min_fps_ratio"]),
        reason=fields.get("reason", ""),
        decided_by=_opt(fields.get("decided_by", "")),
        decision_reason=fields.get("decision_reason", ""),
    )


def audit_fields(
    *,
    at_ms: int,
    action: str,
    actor: str,
    reason: str,
    rollout_id: str | None = None,
    model_name: str | None = None,
    version: str | None = None,
    station: str | None = None,
) -> dict[str, str]:
    """One ``audit`` stream entry (the same fields transition.lua writes)."""
    return {
        "at_ms": str(at_ms),
        "rollout_id": rollout_id or "",
        "model_name": model_name or "",
        "version": version or "",
        "station": station or "",
        "action": action,
        "actor": actor,
        "reason": reason,
    }


def audit_entry(entry_id: bytes | str, raw: Mapping[Any, Any]) -> AuditEntry:
    fields = decode_hash(raw)
    return AuditEntry(
        id=text(entry_id),
        at_ms=int(fields["at_ms"]),
        rollout_id=_opt(fields.get("rollout_id", "")),
        model_name=_opt(fields.get("model_name", "")),
        version=_opt(fields.get("version", "")),
        station=_opt(fields.get("station", "")),
        action=fields["action"],  # type: ignore[arg-type]
        actor=fields.get("actor", ""),
        reason=fields.get("reason", ""),
    )


@dataclass
class Track:
    """What one canary station did during a rollout (its fields of ``canary:R``)."""

    member: bool = False
    since_ms: int | None = None
    baseline_fps: float | None = None
    unhealthy: int = 0
    failures: list[str] = field(default_factory=list)


def canary_tracks(raw: Mapping[Any, Any]) -> dict[str, Track]:
    """A ``canary:R`` hash -> :class:`Track` per station."""
    tracks: dict[str, Track] = {}
    for name, value in sorted(decode_hash(raw).items()):
        kind, _, rest = name.partition(":")
        station, _, at = rest.partition(":")
        track = tracks.setdefault(station, Track())
        if kind == "member":
            track.member = True
        elif kind == "since":
            track.since_ms = int(value)
        elif kind == "baseline":
            track.baseline_fps = float(value)
        elif kind == "unhealthy":
            track.unhealthy = int(value)
        elif kind == "fail":
            failure = json.loads(value)
            reason = f" ({failure['reason']})" if failure.get("reason") else ""
            track.failures.append(f"{failure['status']} at {at}{reason}")
    return tracks
