"""What the rollout service returns: pydantic models the HTTP API serves as JSON as they are.

Times are unix milliseconds, UTC (``*_ms``); durations are seconds (``*_s``). Enum values of
the wire (health, update status, camera state) keep their proto names (``"HEALTHY"``,
``"UPDATE_FAILED"``, ``"CAMERA_RUNNING"``), so a reader finds them in fleet.proto.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, computed_field

Channel = Literal["canary", "stable"]
RolloutState = Literal["active", "promoted", "rolled_back", "superseded"]
FINAL_STATES: frozenset[str] = frozenset({"promoted", "rolled_back", "superseded"})
Verdict = Literal["wait", "promote", "rollback", "final"]
AuditAction = Literal[
    "start",  # a canary rollout began
    "set_stable",  # a rollout on channel stable set the stable version directly
    "promote",  # an operator promoted a canary whose gate passed
    "force_promote",  # an operator promoted a canary past its gate
    "auto_promote",  # the gate passed and the service promoted
    "promote_refused",  # an operator's promote was refused by the gate
    "rollback",  # an operator rolled a canary back
    "auto_rollback",  # failures on the canary rolled it back
    "supersede",  # a newer rollout of the same model replaced an active one
    "assign",  # an operator assigned a station to a model (or removed the assignment)
]


class UpdateInfo(BaseModel):
    """A station's last model update attempt, as it reported it."""

    version: str
    status: str  # UPDATE_OK, UPDATE_FAILED, UPDATE_ROLLED_BACK, UPDATE_STATUS_UNSPECIFIED
    reason: str = ""
    at_ms: int  # agent clock


class CameraInfo(BaseModel):
    camera: str
    state: str  # CAMERA_RUNNING, CAMERA_RETRYING, CAMERA_ENDED, CAMERA_FAILED, ...
    fps: float
    error: str = ""


class StationState(BaseModel):
    """A station as its last heartbeat described it, plus what the fleet told it to run."""

    station: str
    last_seen_ms: int
    online: bool  # a heartbeat within stale_after_s
    agent_version: str
    model_name: str | None  # running now; None: no model yet
    model_version: str | None
    assigned_model: str | None  # explicit assignment, if any
    target_model: str | None  # what the last reply told it to run
    target_version: str | None  # None: keep the current one
    channel: str | None  # "stable" or "canary" (of target_version)
    health: str  # HEALTHY, DEGRADED, UNHEALTHY, HEALTH_UNSPECIFIED
    fps: float
    spool_depth: int
    spool_bytes: int
    events_dropped: int
    last_update: UpdateInfo | None
    cameras: list[CameraInfo]


class Rollout(BaseModel):
    """One rollout of a model version: a canary that may be promoted, or a direct stable set."""

    id: str  # ro-<12 hex>
    model_name: str
    version: str
    previous_version: str | None  # the stable version when it started
    channel: Channel
    share: float | None  # canary share of the fleet in (0, 1]; None with an explicit list
    stations: list[str] | None  # explicit canary stations; None with a share
    state: RolloutState
    created_at_ms: int
    updated_at_ms: int
    created_by: str
    soak_s: float
    min_fps_ratio: float
    reason: str  # why it was started
    decided_by: str | None = None  # who moved it to its final state ("rollout-gate": automatic)
    decision_reason: str = ""  # why

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


class CanaryStation(BaseModel):
    """One canary station of a rollout: what the gate looks at."""

    station: str
    seen: bool  # ever sent a heartbeat
    online: bool
    model_version: str | None  # of the rollout's model; None: runs none (or another model)
    on_version: bool  # runs the rollout's version now
    since_ms: int | None  # first heartbeat on the version (this run of it)
    soaked_s: float  # seconds on the version so far
    health: str | None
    fps: float | None
    baseline_fps: float | None  # its FPS in its last heartbeat on the previous version
    fps_ratio: float | None  # fps / baseline_fps while on the version
    update_status: str | None  # its last update attempt of THIS version, if any
    update_reason: str = ""
    failures: list[str]  # failed updates to the version during the rollout
    unhealthy_heartbeats: int  # UNHEALTHY heartbeats on the version


class Decision(BaseModel):
    """The gate's verdict on a rollout, with the reason a person reads."""

    verdict: Verdict  # final: the rollout is no longer active
    reason: str
    blockers: list[str] = []  # what stands between a waiting canary and promotion

    @computed_field  # type: ignore[prop-decorator]
    @property
    def can_promote(self) -> bool:
        return self.verdict == "promote"


class RolloutProgress(BaseModel):
    """A rollout, its canary stations and the gate's verdict, as of ``evaluated_at_ms``."""

    rollout: Rollout
    stations: list[CanaryStation]
    gate: Decision
    evaluated_at_ms: int


class AuditEntry(BaseModel):
    """One decision in the audit log (newest first when listed)."""

    id: str  # stream entry id
    at_ms: int
    rollout_id: str | None
    model_name: str | None
    version: str | None
    station: str | None  # for assignments
    action: AuditAction
    actor: str
    reason: str
