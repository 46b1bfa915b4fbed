"""Validation of inspection events, and the pure parts of the Redis schema (keys, slots)."""

from __future__ import annotations

import json
import math

import pytest
from redis.crc import key_slot

from services.aggregator import schema
from services.aggregator.auth import bearer_token, check_station, new_token, token_digest
from services.aggregator.validate import Limits, validate_event
from slimspect.v1 import inspection_pb2 as pb

R = pb.RejectReason
NOW = 1_714_564_800_000  # 2024-05-01 12:00:00 UTC
STATION = "line1-st3"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
CLASSES = ["crazing", "inclusion", "patches", "pitted", "rolled-in", "scratches"]


def det(**overrides) -> pb.Detection:
    values = {
        "box": pb.Box(x1=10, y1=20, x2=110, y2=60),
        "score": 0.9,
        "class_id": 3,
        "class_name": "pitted",
    }
    values.update(overrides)
    return pb.Detection(**values)


def ev(**overrides) -> pb.InspectionEvent:
    values = {
        "event_id": "0192f3a0-7c1e-7000-8000-000000000001",
        "station": STATION,
        "camera": "cam0",
        "captured_at_ms": NOW - 1000,
        "model_name": "steel-yolo",
        "model_version": "1.0.0",
        "image_width": 640,
        "image_height": 480,
        "inference_ms": 40.0,
        "frame_count": 1,
        "detections": [det()],
    }
    values.update(overrides)
    return pb.InspectionEvent(**values)


def check(event: pb.InspectionEvent, **limits) -> int | None:
    refused = validate_event(event, station=STATION, now_ms=NOW, limits=Limits(**limits))
    if refused is not None:
        assert refused.message, "every rejection says why"
    return None if refused is None else refused.reason


def test_a_valid_event_passes():
    assert check(ev()) is None
    assert check(ev(detections=[])) is None


@pytest.mark.parametrize("field", ["event_id", "station", "camera"])
def test_empty_ids_are_missing_id(field):
    assert check(ev(**{field: ""})) == R.MISSING_ID


def test_other_station_is_a_mismatch():
    assert check(ev(station="line1-st4")) == R.STATION_MISMATCH


@pytest.mark.parametrize(
    "overrides",
    [
        {"image_width": 0},
        {"image_height": 0},
        {"captured_at_ms": 0},
        {"captured_at_ms": -5},
        {"model_name": ""},
        {"model_version": ""},
        {"inference_ms": -1.0},
        {"inference_ms": math.nan},
        {"event_id": "x" * 129},
        {"event_id": "bad\nid"},
        {"camera": "c" * 129},
        {"frame_count": 3},  # with a detection: only clean summaries stand for several frames
        {"detections": [det() for _ in range(6)]},  # over max_detections=5 below
        {"detections": [pb.Detection(score=0.5, class_id=0, class_name="pitted")]},  # no box
        {"detections": [det(crop_jpeg=b"PNG...")]},  # not a JPEG
    ],
)
def test_malformed_events(overrides):
    assert check(ev(**overrides), max_detections=5) == R.MALFORMED


def test_frame_count_zero_means_one_and_summaries_may_count_many():
    assert check(ev(frame_count=0)) is None
    assert schema.frame_count(ev(frame_count=0)) == 1
    assert check(ev(frame_count=500, detections=[])) is None


def test_captured_in_future_beyond_the_skew():
    skew = 5 * 60 * 1000
    assert check(ev(captured_at_ms=NOW + skew)) is None
    assert check(ev(captured_at_ms=NOW + skew + 1)) == R.CAPTURED_IN_FUTURE
    assert check(ev(captured_at_ms=NOW + 10), future_skew_ms=0) == R.CAPTURED_IN_FUTURE


def test_captured_before_retention_is_malformed():
    day = 86_400_000
    assert check(ev(captured_at_ms=NOW - day), retention_ms=day) is None
    assert check(ev(captured_at_ms=NOW - day - 1), retention_ms=day) == R.MALFORMED


@pytest.mark.parametrize(
    ("box", "ok"),
    [
        ((0, 0, 640, 480), True),
        ((-0.5, -0.5, 640.5, 480.5), True),  # tolerance 0.5 px
        ((-0.6, 0, 10, 10), False),
        ((0, 0, 640.6, 10), False),
        ((0, 0, 10, 480.6), False),
        ((50, 10, 40, 20), False),  # x2 < x1
        ((10, 50, 20, 40), False),  # y2 < y1
        ((5, 5, 5, 5), True),  # degenerate but inside
        ((math.nan, 0, 10, 10), False),
        ((0, 0, math.inf, 10), False),
    ],
)
def test_box_must_lie_in_the_image(box, ok):
    x1, y1, x2, y2 = box
    event = ev(detections=[det(box=pb.Box(x1=x1, y1=y1, x2=x2, y2=y2))])
    assert check(event) == (None if ok else R.BOX_OUTSIDE_IMAGE)


@pytest.mark.parametrize(
    ("score", "ok"), [(0.0, True), (1.0, True), (-0.01, False), (1.01, False), (math.nan, False)]
)
def test_score_range(score, ok):
    assert check(ev(detections=[det(score=score)])) == (None if ok else R.SCORE_OUT_OF_RANGE)


def test_known_classes_check_id_and_name_per_model():
    known = {"steel-yolo": CLASSES}
    assert check(ev(), known_classes=known) is None
    assert check(ev(detections=[det(class_id=2)]), known_classes=known) == R.UNKNOWN_CLASS
    assert (
        check(ev(detections=[det(class_id=6, class_name="x")]), known_classes=known)
        == R.UNKNOWN_CLASS
    )
    assert check(ev(detections=[det(class_name="Pitted")]), known_classes=known) == R.UNKNOWN_CLASS
    # A model that is not listed gets the generic check.
    assert (
        check(
            ev(model_name="other", detections=[det(class_id=99, class_name="dent")]),
            known_classes=known,
        )
        is None
    )


@pytest.mark.parametrize(
    "overrides",
    [{"class_name": ""}, {"class_id": -1}, {"class_name": "c" * 65}, {"class_name": "a\tb"}],
)
def test_without_known_classes_names_must_be_sane(overrides):
    assert check(ev(detections=[det(**overrides)])) == R.UNKNOWN_CLASS


def test_crop_size_limit():
    assert check(ev(detections=[det(crop_jpeg=JPEG)]), max_crop_bytes=len(JPEG)) is None
    too_big = det(crop_jpeg=JPEG + b"\x00")
    assert check(ev(detections=[too_big]), max_crop_bytes=len(JPEG)) == R.CROP_TOO_LARGE


def test_first_failure_wins_in_the_documented_order():
    event = ev(event_id="", station="other", image_width=0)
    assert check(event) == R.MISSING_ID
    assert check(ev(station="other", image_width=0)) == R.STATION_MISMATCH
    assert check(ev(image_width=0, captured_at_ms=NOW + 10**9)) == R.MALFORMED
    bad_box_and_score = det(box=pb.Box(x1=0, y1=0, x2=9999, y2=1), score=7)
    assert check(ev(detections=[det(), bad_box_and_score])) == R.BOX_OUTSIDE_IMAGE


# --- schema ------------------------------------------------------------------------------


def test_every_key_of_one_call_is_in_one_cluster_slot():
    one = ev(
        detections=[det(crop_jpeg=JPEG), det(class_id=0, class_name="crazing", crop_jpeg=JPEG)]
    )
    other = ev(event_id="e2", captured_at_ms=NOW - 4_000_000, detections=[])
    call = schema.ingest_call([one, other], now_ms=NOW, retention_ms=86_400_000)
    # index, defect index, class set, 2 hours, 2 classes, event + 2 crops, event
    assert len(call.keys) == 3 + 2 + 2 + 3 + 1
    assert len({key_slot(k.encode()) for k in call.keys}) == 1
    assert all("{st:line1-st3}" in k for k in call.keys)


def test_one_call_stores_one_station():
    with pytest.raises(ValueError, match="one station"):
        schema.ingest_call([ev(), ev(station="other")], now_ms=NOW, retention_ms=1000)


def test_ingest_call_layout():
    first = ev(
        detections=[
            det(),
            det(crop_jpeg=JPEG, score=0.96875),
            det(class_id=5, class_name="scratches", score=0.5),
        ]
    )
    clean = ev(event_id="e2", detections=[], frame_count=7, captured_at_ms=NOW + 5)
    call = schema.ingest_call([first, clean], now_ms=NOW, retention_ms=1000)
    assert call.keys == [
        "idx:{st:line1-st3}",
        "idx:{st:line1-st3}:def",
        "cls:{st:line1-st3}",
        "cnt:{st:line1-st3}:2024050111",
        "cnt:{st:line1-st3}:2024050112",
        "idx:{st:line1-st3}:cls:pitted",
        "idx:{st:line1-st3}:cls:scratches",
        "ev:{st:line1-st3}:" + first.event_id,
        "crop:{st:line1-st3}:" + first.event_id + ":1",
        "ev:{st:line1-st3}:e2",
    ]
    a = call.args
    slack = 1000 + schema.EXPIRY_SLACK_MS
    assert a[:3] == [2, 2, NOW - 1000]  # hours, classes, trim below
    assert a[4:] == [
        NOW + slack,  # end of hour 11
        NOW + schema.HOUR_MS + slack,  # end of hour 12
        "pitted",
        "scratches",
        schema.event_value(first, received_at_ms=NOW),  # per event: its value, its crops
        JPEG,
        schema.event_value(clean, received_at_ms=NOW),
    ]
    rows = json.loads(a[3])
    assert rows[0] == [
        first.event_id,
        NOW - 1000,
        NOW - 1000 + slack,
        1,  # hour 11
        1,  # frames
        1,  # defect frames
        3,  # defects
        [1, 2, "0.96875", 2, 1, "0.5"],  # 2 x pitted (top 0.96875), 1 x scratches
        1,  # crops
        "0.96875",  # top score of the event: its member in the defect index
    ]
    assert rows[1] == ["e2", NOW + 5, NOW + 5 + slack, 2, 7, 0, 0, [], 0, ""]


def test_event_value_round_trips_through_decode():
    event = ev(detections=[det(score=0.875, crop_jpeg=JPEG)], frame_count=0, inference_ms=12.3)
    stored = schema.decode_event(schema.event_value(event, received_at_ms=NOW))
    assert set(stored) == set(schema.EVENT_FIELDS)
    assert stored["event_id"] == event.event_id and stored["station"] == event.station
    assert stored["frame_count"] == 1 and stored["received_at_ms"] == NOW
    assert stored["inference_ms"] == 12.3 and stored["n_detections"] == 1
    assert stored["detections"] == [
        {
            "box": [10.0, 20.0, 110.0, 60.0],
            "score": 0.875,
            "class_id": 3,
            "class_name": "pitted",
            "crop": True,
        }
    ]


def test_float32_wire_values_are_stored_as_short_decimals():
    event = ev(detections=[det(score=0.9)], inference_ms=7.123456)
    event.detections[0].box.x1 = 123.456789  # float32 on the wire: 123.45678710937500
    stored = schema.decode_event(schema.event_value(event, received_at_ms=NOW))
    d = stored["detections"][0]
    assert d["score"] == 0.9 and d["box"][0] == 123.457  # not 0.8999999761581421
    assert stored["inference_ms"] == 7.123


def test_event_value_is_compact_utf8_and_refuses_a_short_array():
    event = ev(detections=[det(score=0.5, class_name="pitted \u00e9")], inference_ms=3.5)
    value = schema.event_value(event, received_at_ms=NOW)
    assert "pitted \u00e9".encode() in value and b'"event_id"' not in value  # no field names
    assert schema.decode_event(value.decode())["detections"][0]["class_name"] == "pitted \u00e9"
    with pytest.raises(ValueError):
        schema.decode_event(b'["e1", "line1-st3"]')  # not an event of this schema


def test_class_members_keep_the_order_of_event_ids_and_carry_the_top_score():
    ids = ["a", "a b", "ab", "a~", "b", "\u00e9", "a\u00e9"]
    members = [schema.class_member(i, 0.5) for i in ids]
    assert sorted(members, key=str.encode) == [schema.class_member(i, 0.5) for i in sorted(ids)]
    assert schema.class_member_parts(schema.class_member("e-1", 0.8999999761581421)) == (
        "e-1",
        0.9,
    )
    assert schema.class_member_parts("e-1") == ("e-1", None)  # a member without a score


def test_hour_keys_are_utc():
    assert schema.hour_of(NOW) == "2024050112"
    assert schema.hour_of(NOW - 1) == "2024050111"


# --- auth helpers ------------------------------------------------------------------------


def test_tokens_are_random_and_hashed():
    a, b = new_token(), new_token()
    assert a != b and a.startswith("sst_") and len(a) > 40
    assert token_digest(a) == token_digest(a) != token_digest(b)
    assert len(token_digest(a)) == 64


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        ([("authorization", "Bearer abc")], "abc"),
        ([("Authorization", "bearer  abc ")], "abc"),
        ([("authorization", "Basic abc")], None),
        ([("authorization", "Bearer ")], None),
        ([("x-other", "Bearer abc")], None),
        ([], None),
        (None, None),
    ],
)
def test_bearer_token(metadata, token):
    assert bearer_token(metadata) == token


@pytest.mark.parametrize("name", ["st1", "line1-st3", "a.b_c", "A" * 64])
def test_station_names_allowed(name):
    assert check_station(name) == name


@pytest.mark.parametrize("name", ["", "-st", "st{1}", "st 1", "st:1", "A" * 65, "st/1"])
def test_station_names_refused(name):
    with pytest.raises(ValueError):
        check_station(name)
