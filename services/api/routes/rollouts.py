"""``/v1/rollouts`` and ``/v1/audit``: fleet rollouts over the rollout service.

Reading needs a viewer key, acting (start, promote, rollback) an operator key; the key's
name is recorded as the actor of every decision in the audit log. The service's typed
errors map to one status each: not found 404, invalid 422, wrong state or refused
promotion 409 (the body lists the gate's ``blockers``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.api.auth import operator, viewer
from services.api.context import Ctx
from services.api.errors import problem
from services.api.keys import KeyInfo
from services.api.params import STATION_PATTERN
from services.api.routes.common import errors
from services.rollout.errors import (
    InvalidRollout,
    NotFound,
    PromotionRefused,
    RolloutStateError,
)
from services.rollout.models import AuditEntry, Channel, Rollout, RolloutProgress
from services.rollout.service import MAX_REASON, RolloutService
from slimspect.manifest import NAME_PATTERN, VERSION_PATTERN

ROLLOUT_ID_PATTERN = r"^ro-[0-9a-f]{12}$"
NO_ROLLOUT = "no rollout service in this API process"


class RolloutStart(BaseModel):
    """A rollout to start: a canary (``share`` of the fleet, or named ``stations``), or a
    direct stable set (``channel: stable``, neither)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    channel: Channel = "canary"
    share: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    stations: list[Annotated[str, Field(pattern=STATION_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=10_000
    )
    reason: str = Field(default="", max_length=MAX_REASON)
    soak_s: float | None = Field(default=None, ge=0, le=30 * 86400, allow_inf_nan=False)
    min_fps_ratio: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)


class Decide(BaseModel):
    """Why an operator promotes or rolls back (recorded in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=MAX_REASON)


class Promote(Decide):
    force: bool = Field(default=False, description="promote even though the gate has not passed")


def service(ctx: Ctx) -> RolloutService:
    if ctx.rollout is None:
        raise HTTPException(503, NO_ROLLOUT)
    return ctx.rollout


def _rollout_errors(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, PromotionRefused):
        return problem(409, str(exc), blockers=exc.blockers)
    if isinstance(exc, RolloutStateError):
        return problem(409, str(exc))
    if isinstance(exc, NotFound):
        return problem(404, str(exc))
    return problem(422, str(exc))


ERROR_HANDLERS = {
    PromotionRefused: _rollout_errors,
    RolloutStateError: _rollout_errors,
    NotFound: _rollout_errors,
    InvalidRollout: _rollout_errors,
}

RolloutId = Annotated[str, Path(pattern=ROLLOUT_ID_PATTERN, description="ro-<12 hex>")]
Rollouts = Annotated[RolloutService, Depends(service)]
Operator = Annotated[KeyInfo, Depends(operator)]

router = APIRouter(prefix="/v1", tags=["rollouts"], responses=errors(400, 401, 403, 422, 503))


@router.post("/rollouts", response_model=Rollout, status_code=201, responses=errors(409))
async def start_rollout(
    body: RolloutStart,
    caller: Operator,
    rollouts: Rollouts,
) -> Rollout:
    """Start a rollout (operator). A newer rollout of a model supersedes its active one."""
    return await rollouts.start(
        body.model_name,
        body.version,
        channel=body.channel,
        share=body.share,
        stations=body.stations,
        actor=caller.name,
        reason=body.reason,
        soak_s=body.soak_s,
        min_fps_ratio=body.min_fps_ratio,
    )


@router.get("/rollouts", response_model=list[Rollout], dependencies=[Depends(viewer)])
async def list_rollouts(
    rollouts: Rollouts,
    model_name: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    active_only: bool = False,
) -> list[Rollout]:
    """Rollouts, newest first."""
    return await rollouts.list(model_name=model_name, active_only=active_only)


@router.get(
    "/rollouts/{rollout_id}",
    response_model=RolloutProgress,
    dependencies=[Depends(viewer)],
    responses=errors(404),
)
async def get_rollout(rollout_id: RolloutId, rollouts: Rollouts) -> RolloutProgress:
    """A rollout with its canary stations and the promotion gate's verdict now."""
    return await rollouts.progress(rollout_id)


@router.post("/rollouts/{rollout_id}/promote", response_model=Rollout, responses=errors(404, 409))
async def promote_rollout(
    rollout_id: RolloutId,
    caller: Operator,
    rollouts: Rollouts,
    body: Promote | None = None,
) -> Rollout:
    """Promote a canary (operator): 409 with the gate's blockers unless it passed or ``force``."""
    body = body or Promote()
    return await rollouts.promote(
        rollout_id, actor=caller.name, reason=body.reason, force=body.force
    )


@router.post("/rollouts/{rollout_id}/rollback", response_model=Rollout, responses=errors(404, 409))
async def rollback_rollout(
    rollout_id: RolloutId,
    caller: Operator,
    rollouts: Rollouts,
    body: Decide | None = None,
) -> Rollout:
    """Roll a canary back (operator): its stations return to the stable version."""
    body = body or Decide()
    return await rollouts.rollback(rollout_id, actor=caller.name, reason=body.reason)


@router.get("/audit", response_model=list[AuditEntry], dependencies=[Depends(viewer)])
async def audit(
    rollouts: Rollouts,
    rollout_id: Annotated[str | None, Query(pattern=ROLLOUT_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntry]:
    """Rollout decisions, newest first: all, or those of one rollout."""
    return await rollouts.audit(rollout_id=rollout_id, limit=limit)
