"""The JSON bodies of the API, as pydantic models: they make the OpenAPI document.

Times are unix milliseconds (UTC), as on the wire and in Redis. Errors have one shape,
:class:`Problem`: ``detail`` is a sentence saying what is wrong.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import orjson
from fastapi.responses import Response
from pydantic import BaseModel, Field

from services.rollout.models import StationState


def json_response(body: Any) -> Response:
    """``body`` (plain JSON data) as the response, serialized once, by orjson.

    A route that returns an instance of its ``response_model`` has FastAPI validate it a
    second time, then run it through ``jsonable_encoder`` and ``json.dumps``; building the
    pydantic models of a page of 100 defects alone took 1.5 ms. The defect routes build
    plain dicts with :func:`defect_body` instead (the models stay their ``response_model``,
    the OpenAPI document, and a test checks that every body validates against them).
    """
    return Response(orjson.dumps(body), media_type="application/json")


class Problem(BaseModel):
    detail: str = Field(description="what is wrong, in one sentence")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="for invalid parameters: one entry per parameter"
    )
    blockers: list[str] | None = Field(
        default=None, description="for a refused promotion: what the gate is waiting for"
    )


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class DetectionOut(BaseModel):
    box: Box
    score: float
    class_id: int
    class_name: str
    crop_url: str | None = Field(description="the JPEG crop, when the station sent one")


class Defect(BaseModel):
    """One stored inspection event with its detections."""

    station: str
    event_id: str
    camera: str
    captured_at_ms: int
    received_at_ms: int
    model_name: str
    model_version: str
    image_width: int
    image_height: int
    inference_ms: float
    url: str

    detections: list[DetectionOut]


_BOX_KEYS = tuple(Box.model_fields)
_DEFECT_KEYS = tuple(k for k in Defect.model_fields if k not in ("url", "detections"))


def defect_body(event: dict[str, Any]) -> dict[str, Any]:
    """A stored event (services.aggregator.schema.decode_event) as a :class:`Defect`'s JSON."""
    url = f"/v1/defects/{event['station']}/{quote(event['event_id'], safe='')}"
    body = {k: event[k] for k in _DEFECT_KEYS}
    body["url"] = url
    body["detections"] = [
        {
            "box": dict(zip(_BOX_KEYS, d["box"], strict=True)),
            "score": d["score"],
            "class_id": d["class_id"],
            "class_name": d["class_name"],
            "crop_url": f"{url}/crops/{i}" if d.get("crop") else None,
        }
        for i, d in enumerate(event["detections"])
    ]
    return body


class DefectPageOut(BaseModel):
    items: list[Defect]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null when the walk is complete"
    )
    examined: int = Field(description="events read to fill this page (filters may drop some)")


class Counts(BaseModel):
    frames: int
    defect_frames: int | None = Field(description="frames with >= 1 defect (not per class)")
    defects: int
    defect_rate: float | None = Field(description="defect_frames / frames")
    defects_per_frame: float | None = Field(description="defects / frames")
    by_class: dict[str, int] = Field(default_factory=dict, description="defects per class")


class StatsGroup(Counts):
    key: str = Field(description="the hour (ISO, UTC), station or class of this group")
    start_ms: int | None = Field(default=None, description="hour groups: the hour's start")


class StatsOut(BaseModel):
    group_by: str
    from_ms: int = Field(description="start of the first hour counted (inclusive)")
    to_ms: int = Field(description="end of the last hour counted (exclusive)")
    stations: list[str]
    total: Counts
    groups: list[StatsGroup]


class ModelVersionOut(BaseModel):
    name: str
    version: str
    created_at: str
    format: str
    size_bytes: int
    sha256: str
    latest: bool = Field(description="the newest version of its model")


class StationOut(BaseModel):
    """A station as its heartbeats (the fleet) and the events it sent describe it."""

    station: str
    status: Literal["online", "offline", "no heartbeat"] = Field(
        description="online: a heartbeat within the rollout service's stale_after_s; "
        "no heartbeat: the station sent events but never a heartbeat"
    )
    last_heartbeat_ms: int | None
    last_event_ms: int | None = Field(description="capture time of its newest stored event")
    model_name: str | None = Field(description="running now (heartbeat), else of its newest event")
    model_version: str | None
    fleet: StationState | None = Field(description="its last heartbeat and what it was told")
