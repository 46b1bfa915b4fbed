"""``/v1/stations``: every station the system knows, from heartbeats and from events.

A station appears once it sent a heartbeat (the rollout service's fleet state) or an event
(the aggregator's ``stations`` set), so a station whose agent reports events but never a
heartbeat (an older agent, a Fleet server that is off) is listed too, as ``no heartbeat``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path

from services.api.auth import viewer
from services.api.context import ApiContext, Ctx
from services.api.params import STATION_PATTERN
from services.api.responses import StationOut
from services.api.routes.common import errors
from services.rollout.errors import StationNotFound
from services.rollout.models import StationState

router = APIRouter(
    prefix="/v1/stations",
    tags=["fleet"],
    dependencies=[Depends(viewer)],
    responses=errors(401, 403, 422, 503),
)


def _station(name: str, fleet: StationState | None, newest: dict[str, Any] | None) -> StationOut:
    if fleet is not None:
        status = "online" if fleet.online else "offline"
        model_name, model_version = fleet.model_name, fleet.model_version
    else:
        status = "no heartbeat"
        model_name = newest["model_name"] if newest else None
        model_version = newest["model_version"] if newest else None
    return StationOut(
        station=name,
        status=status,
        last_heartbeat_ms=fleet.last_seen_ms if fleet else None,
        last_event_ms=newest["captured_at_ms"] if newest else None,
        model_name=model_name,
        model_version=model_version,
        fleet=fleet,
    )


async def _fleet(ctx: ApiContext) -> dict[str, StationState]:
    if ctx.rollout is None:
        return {}
    return {s.station: s for s in await ctx.rollout.stations()}


@router.get("", response_model=list[StationOut])
async def list_stations(ctx: Ctx) -> list[StationOut]:
    """Every station, by name, with its status, model and newest heartbeat and event."""
    fleet = await _fleet(ctx)
    names = sorted(set(fleet) | set(await ctx.index.stations()))
    newest = await ctx.index.newest(names)
    return [_station(n, fleet.get(n), newest.get(n)) for n in names]


@router.get("/{station}", response_model=StationOut, responses=errors(404))
async def get_station(
    ctx: Ctx, station: Annotated[str, Path(pattern=STATION_PATTERN)]
) -> StationOut:
    """One station (404 when it never sent a heartbeat nor an event)."""
    fleet = None
    if ctx.rollout is not None:
        try:
            fleet = await ctx.rollout.station(station)
        except StationNotFound:
            pass
    newest = (await ctx.index.newest([station])).get(station)
    if fleet is None and newest is None and station not in await ctx.index.stations():
        raise HTTPException(404, f"no station {station!r}: no heartbeat and no event from it")
    return _station(station, fleet, newest)
