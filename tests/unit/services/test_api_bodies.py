"""The defect routes' bodies are plain dicts (responses.defect_body, serialized by orjson):
every one must be exactly what the Defect model, the OpenAPI document, says."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from services.aggregator import schema
from services.api.responses import Defect, DefectPageOut, defect_body, json_response
from slimspect.v1 import inspection_pb2 as pb

floats = st.floats(min_value=0, max_value=4096, allow_nan=False, width=32)
ids = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40
)


@st.composite
def stored_events(draw) -> dict:
    """Events as the aggregator stores them and the API reads them back."""
    detections = [
        pb.Detection(
            box=pb.Box(x1=draw(floats), y1=draw(floats), x2=draw(floats), y2=draw(floats)),
            score=draw(st.floats(0, 1, width=32)),
            class_id=draw(st.integers(0, 99)),
            class_name=draw(ids),
            crop_jpeg=b"\xff\xd8" if draw(st.booleans()) else b"",
        )
        for _ in range(draw(st.integers(0, 4)))
    ]
    event = pb.InspectionEvent(
        event_id=draw(ids),
        station="line1-st1",
        camera=draw(ids),
        captured_at_ms=draw(st.integers(1, 2**50)),
        model_name="steel",
        model_version="1.2.0",
        image_width=640,
        image_height=480,
        inference_ms=draw(st.floats(0, 1e4, width=32)),
        detections=detections,
    )
    return schema.decode_event(schema.event_value(event, received_at_ms=1_700_000_000_000))


@given(stored_events())
def test_defect_body_is_what_the_model_says(event: dict) -> None:
    body = defect_body(event)
    assert Defect.model_validate(body).model_dump(mode="json") == body
    assert body["url"].startswith("/v1/defects/line1-st1/") and "/" not in body["url"][22:]
    crops = [d["crop_url"] for d in body["detections"]]
    assert crops == [
        f"{body['url']}/crops/{i}" if d["crop"] else None for i, d in enumerate(event["detections"])
    ]


@given(st.lists(stored_events(), max_size=3))
def test_a_page_body_serializes_as_the_page_model(events: list[dict]) -> None:
    body = {"items": [defect_body(e) for e in events], "next_cursor": None, "examined": 7}
    sent = orjson.loads(json_response(body).body)
    assert DefectPageOut.model_validate(sent).model_dump(mode="json") == sent
