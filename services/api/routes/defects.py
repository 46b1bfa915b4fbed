"""``/v1/defects``: the defect list (filters, cursor paging), one event, and its crops.

An event is addressed by station AND id (event_id is unique per station only):
``/v1/defects/{station}/{event_id}``, its crops ``.../crops/{index}``. Ids are matched as
a path (an agent's id may contain ``/``); clients use the ``url`` and ``crop_url`` the
API returns, which percent-encode the id.
"""

# No ``from __future__ import annotations`` here: the page-size bounds come from the
# settings, inside build_router, and FastAPI can resolve such local names only from live
# annotations, not from strings.

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import Response

from services.api.auth import viewer
from services.api.context import Ctx
from services.api.cursor import decode_cursor, encode_cursor
from services.api.events import DefectQuery
from services.api.params import STATION_PATTERN, TIME_HELP, parse_window
from services.api.responses import Defect, DefectPageOut, defect_body, json_response
from services.api.routes.common import errors
from services.api.settings import ApiSettings

MAX_ID_CHARS = 128
MAX_CLASS_CHARS = 64


def build_router(settings: ApiSettings) -> APIRouter:
    router = APIRouter(
        prefix="/v1/defects",
        tags=["defects"],
        dependencies=[Depends(viewer)],
        responses=errors(401, 403, 422, 503),
    )

    @router.get("", response_model=DefectPageOut, responses=errors(400))
    async def list_defects(
        ctx: Ctx,
        station: Annotated[
            str | None, Query(pattern=STATION_PATTERN, description="one station")
        ] = None,
        camera: Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS)] = None,
        class_name: Annotated[
            str | None,
            Query(
                alias="class",
                min_length=1,
                max_length=MAX_CLASS_CHARS,
                description="class name",
            ),
        ] = None,
        from_: Annotated[
            str | None,
            Query(alias="from", max_length=64, description=f"captured at or after: {TIME_HELP}"),
        ] = None,
        to: Annotated[
            str | None, Query(max_length=64, description=f"captured before: {TIME_HELP}")
        ] = None,
        min_score: Annotated[
            float | None,
            Query(
                ge=0,
                le=1,
                allow_inf_nan=False,
                description="some detection (of `class`, when given) scores at least this",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=settings.max_limit)] = settings.default_limit,
        cursor: Annotated[
            str | None, Query(max_length=512, description="next_cursor of the previous page")
        ] = None,
    ) -> Response:
        """Defects (events with >= 1 detection), newest first, one page at a time.

        Order: captured_at_ms, then station, then event_id, all descending. Follow
        ``next_cursor`` until it is null: a page can hold fewer than ``limit`` events
        (camera and min_score filters are applied after reading, and one request reads
        a bounded number of events) and still not be the last.
        """
        start, end = parse_window(from_, to)
        query = DefectQuery(
            station=station,
            camera=camera,
            class_name=class_name,
            from_ms=start,
            to_ms=end,
            min_score=min_score,
        )
        after = decode_cursor(cursor) if cursor else None
        page = await ctx.index.page(query, limit=limit, after=after)
        ctx.metrics.defects_examined.inc(page.examined)
        return json_response(
            {
                "items": [defect_body(e) for e in page.events],
                "next_cursor": encode_cursor(page.next_position) if page.next_position else None,
                "examined": page.examined,
            }
        )

    # Before the event route: its {event_id:path} would swallow ".../crops/0".
    @router.get(
        "/{station}/{event_id:path}/crops/{index}",
        response_class=Response,
        responses={
            200: {"content": {"image/jpeg": {}}, "description": "the JPEG crop"},
            **errors(404),
        },
    )
    async def get_crop(
        ctx: Ctx,
        station: Annotated[str, Path(pattern=STATION_PATTERN)],
        event_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)],
        index: Annotated[
            int, Path(ge=0, le=100_000, description="the detection's index in the event")
        ],
    ) -> Response:
        """The JPEG crop of detection ``index`` of an event, when the station sent one."""
        data = await ctx.index.crop(station, event_id, index)
        if data is None:
            raise HTTPException(
                404, f"no crop {index} of event {event_id!r} at station {station!r}"
            )
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
        )

    @router.get("/{station}/{event_id:path}", response_model=Defect, responses=errors(404))
    async def get_defect(
        ctx: Ctx,
        station: Annotated[str, Path(pattern=STATION_PATTERN)],
        event_id: Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS)],
    ) -> Response:
        """One event of a station (clean frames included), with its detections."""
        event = await ctx.index.event(station, event_id)
        if event is None:
            raise HTTPException(404, f"no event {event_id!r} at station {station!r}")
        return json_response(defect_body(event))

    return router
