"""``/v1/stats``: frames, defects and defect rates from the hourly counters."""

from __future__ import annotations

from typing import Annotated, get_args

from fastapi import APIRouter, Depends, Query

from services.api.auth import viewer
from services.api.context import Ctx
from services.api.counters import GroupBy, Tally, hour_window, read_stats
from services.api.errors import BadRequest
from services.api.params import STATION_PATTERN, TIME_HELP, parse_window
from services.api.responses import Counts, StatsGroup, StatsOut
from services.api.routes.common import errors
from services.api.settings import ApiSettings

DEFAULT_HOURS = 24
HOUR_MS = 3_600_000
GROUPS = ", ".join(get_args(GroupBy))


def _counts(tally: Tally) -> dict[str, object]:
    return {
        "frames": tally.frames,
        "defect_frames": tally.defect_frames,
        "defects": tally.defects,
        "defect_rate": tally.defect_rate,
        "defects_per_frame": tally.defects_per_frame,
        "by_class": dict(sorted(tally.by_class.items())),
    }


def build_router(settings: ApiSettings) -> APIRouter:
    router = APIRouter(
        prefix="/v1",
        tags=["stats"],
        dependencies=[Depends(viewer)],
        responses=errors(401, 403, 422, 503),
    )

    @router.get("/stats", response_model=StatsOut)
    async def stats(
        ctx: Ctx,
        group_by: Annotated[GroupBy, Query(description=f"one of {GROUPS}")] = "hour",
        station: Annotated[
            str | None, Query(pattern=STATION_PATTERN, description="one station")
        ] = None,
        from_: Annotated[
            str | None,
            Query(
                alias="from",
                max_length=64,
                description=f"{TIME_HELP}; default: {DEFAULT_HOURS} h before `to`",
            ),
        ] = None,
        to: Annotated[
            str | None, Query(max_length=64, description=f"{TIME_HELP}; default: now")
        ] = None,
    ) -> StatsOut:
        """Counts and rates over ``[from, to)`` widened to whole UTC hours, grouped.

        ``defect_rate`` is defect_frames / frames, ``defects_per_frame`` defects / frames
        (null when no frame was counted). Hour groups cover every hour of the window,
        empty ones too.
        """
        start, end = parse_window(from_, to)
        end = ctx.now_ms() if end is None else end
        start = end - DEFAULT_HOURS * HOUR_MS if start is None else start
        if start > end:
            raise BadRequest("from", f"from ({from_}) is after the default to (now)")
        first, last = hour_window(start, end)
        hours = (last - first) // HOUR_MS
        if hours > settings.max_stats_hours:
            raise BadRequest(
                "from",
                f"the window spans {hours} hours; at most {settings.max_stats_hours} are allowed",
            )
        stations = [station] if station else await ctx.index.stations()
        result = await read_stats(
            ctx.redis, stations=stations, from_ms=start, to_ms=end, group_by=group_by
        )
        return StatsOut(
            group_by=result.group_by,
            from_ms=result.from_ms,
            to_ms=result.to_ms,
            stations=result.stations,
            total=Counts(**_counts(result.total)),
            groups=[
                StatsGroup(key=key, start_ms=start_ms, **_counts(tally))
                for key, start_ms, tally in result.groups
            ],
        )

    return router
