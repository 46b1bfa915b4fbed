"""``GET /v1/defects`` and one event with its crops, against data written through the real
aggregator: every filter, and paging through thousands of events over several stations
with no gap and no repeat, checked against what the test sent (not against Redis)."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
import redis
from aggregator_harness import JPEG, new_namespace, run_async
from api_harness import (
    Api,
    Dataset,
    Sent,
    keys_of,
    make_api,
    send_through_aggregator,
    walk,
)

from services.aggregator import schema

pytestmark = pytest.mark.timeout(180)


def _iso(ms: int, offset_h: int = 0) -> str:
    tz = timezone(timedelta(hours=offset_h))
    return datetime.fromtimestamp(ms / 1000, tz=tz).isoformat(timespec="milliseconds")


def _walk(api: Api, params: dict[str, Any], key: str | None = None) -> tuple[list, list]:
    async def main() -> tuple[list, list]:
        async with api.client(key or api.viewer) as http:
            return await walk(http, params)

    return run_async(main())


def test_walk_everything_newest_first_no_gap_no_repeat(api: Api, dataset: Dataset) -> None:
    items, pages = _walk(api, {"limit": 97})
    expected = dataset.defects()
    assert len(expected) > 2500
    assert keys_of(items) == [e.key for e in expected]
    assert len({(i["station"], i["event_id"]) for i in items}) == len(items)
    assert all(len(p["items"]) == 97 for p in pages[:-1])
    assert len({i["station"] for i in items}) == len(dataset.stations)
    # ties on captured_at_ms across and within stations are in the data set
    times = [i["captured_at_ms"] for i in items]
    assert len(set(times)) < len(times) - 100


def test_items_carry_what_was_sent(api: Api, dataset: Dataset) -> None:
    items, _ = _walk(api, {"limit": 500})
    sent = {(e.station, e.event_id): e for e in dataset.events}
    for item in items:
        e = sent[(item["station"], item["event_id"])]
        assert item["camera"] == e.camera
        assert item["captured_at_ms"] == e.captured_at_ms
        assert [d["class_name"] for d in item["detections"]] == list(e.classes)
        assert [d["score"] for d in item["detections"]] == list(e.scores)
        crops = [d["crop_url"] for d in item["detections"]]
        if e.crops:
            assert crops == [f"{item['url']}/crops/{i}" for i in range(len(e.classes))]
        else:
            assert crops == [None] * len(e.classes)
        assert item["url"] == f"/v1/defects/{e.station}/{quote(e.event_id, safe='')}"


def _filters(d: Dataset) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, query parameters, the same filter for the expectation)."""
    mid = d.start_ms + (d.end_ms - d.start_ms) // 2
    quarter = (d.end_ms - d.start_ms) // 4
    some = d.events[17].captured_at_ms  # a time several events share, maybe
    return [
        ("station", {"station": d.stations[1]}, {"station": d.stations[1]}),
        ("camera", {"camera": "cam1"}, {"camera": "cam1"}),
        ("class", {"class": "pitted"}, {"class_name": "pitted"}),
        ("min_score", {"min_score": 0.75}, {"min_score": 0.75}),
        (
            "class+min_score",
            {"class": "crazing", "min_score": 0.5},
            {"class_name": "crazing", "min_score": 0.5},
        ),
        (
            "from+to ms",
            {"from": mid, "to": mid + quarter},
            {"from_ms": mid, "to_ms": mid + quarter},
        ),
        (
            "from+to iso",
            {"from": _iso(mid, 2), "to": _iso(mid + quarter)},
            {"from_ms": mid, "to_ms": mid + quarter},
        ),
        ("to only (exclusive)", {"to": some}, {"to_ms": some}),
        ("from only (inclusive)", {"from": some}, {"from_ms": some}),
        (
            "everything",
            {
                "station": d.stations[2],
                "camera": "cam0",
                "class": "inclusion",
                "min_score": 0.25,
                "from": d.start_ms + quarter,
                "to": d.end_ms - quarter // 2,
            },
            {
                "station": d.stations[2],
                "camera": "cam0",
                "class_name": "inclusion",
                "min_score": 0.25,
                "from_ms": d.start_ms + quarter,
                "to_ms": d.end_ms - quarter // 2,
            },
        ),
        ("no match", {"camera": "nope"}, {"camera": "nope"}),
    ]


@pytest.mark.parametrize("index", range(11), ids=lambda i: f"filter{i}")
def test_each_filter_walks_to_exactly_the_expected_events(
    api: Api, dataset: Dataset, index: int
) -> None:
    name, params, expect = _filters(dataset)[index]
    items, _ = _walk(api, {"limit": 60, **params})
    expected = dataset.defects(**expect)
    assert keys_of(items) == [e.key for e in expected], name
    if name != "no match":
        assert expected, f"the data set has no event for filter {name}"


def test_scan_budget_returns_short_pages_but_the_walk_is_complete(
    redis_server: Any, dataset: Dataset
) -> None:
    small = run_async(make_api(redis_server.url(0), scan_budget=100))
    params = {"camera": "cam2", "min_score": 0.9, "limit": 50}
    items, pages = _walk(small, params)
    expected = dataset.defects(camera="cam2", min_score=0.9)
    assert keys_of(items) == [e.key for e in expected]
    assert any(len(p["items"]) < 50 and p["next_cursor"] for p in pages)
    assert all(p["examined"] <= 100 for p in pages)


def test_walk_is_stable_while_events_arrive_and_in_one_millisecond(scratch_url: str) -> None:
    """300 events of one station in one millisecond page correctly (offset within a score);
    events written during the walk show up exactly when they are behind the cursor."""
    ns = new_namespace()
    a, b = ns.station(0), ns.station(1)
    t = 1_000_000  # ms before now
    base = int(datetime.now(tz=UTC).timestamp() * 1000) - t

    def sent(station: str, ts: int, event_id: str | None = None) -> Sent:
        return Sent(
            station, event_id or uuid.uuid4().hex, "cam0", ts, ("scratches",), (0.5,), False, 1
        )

    first = [sent(a, base) for _ in range(300)] + [sent(b, base) for _ in range(40)]
    first += [sent(random.choice((a, b)), base - random.randrange(1, 5000)) for _ in range(200)]
    run_async(send_through_aggregator(scratch_url, ns, first))

    # Ahead of the first page's cursor (newer, or same ms and a larger station or id):
    # never part of this walk. Behind it (older, or same ms and a smaller id): must appear.
    late = [sent(a, base + 10), sent(b, base, "~" * 40)]
    behind = [sent(a, base - 6000), sent(b, base, "0" * 8)]

    async def main() -> tuple[list[dict], dict]:
        api = await make_api(scratch_url)
        async with api.client(api.viewer) as http:
            page = (await http.get("/v1/defects", params={"limit": 7})).json()
            items = list(page["items"])
            await send_through_aggregator(scratch_url, ns, late + behind)
            cursor = page["next_cursor"]
            while cursor:
                r = await http.get("/v1/defects", params={"limit": 7, "cursor": cursor})
                body = r.json()
                items.extend(body["items"])
                cursor = body["next_cursor"]
            return items, page["items"][-1]

    items, cursor_item = run_async(main())
    expected = sorted(first + behind, key=lambda e: e.key, reverse=True)
    assert (cursor_item["station"], cursor_item["captured_at_ms"]) == (b, base)
    assert keys_of(items) == [e.key for e in expected]


def test_min_score_is_served_by_the_index_members(scratch_url: str) -> None:
    """Index members carry the event's top score (of the class in a class index, of all
    its detections in the defect index): the API filters min_score on them without
    reading the events. Shown by events whose stored scores are raised behind the
    indexes' back: one whose members say 0.3 stays out; one whose members are bare ids
    (written before members carried a score) is read, and then matches."""
    ns = new_namespace()
    st = ns.station(0)
    base = int(datetime.now(tz=UTC).timestamp() * 1000) - 1_000_000
    events = [
        Sent(st, f"e{i:03}", "cam0", base - i, ("scratches", "pitted"), (s, s / 2), False, 1)
        for i, s in enumerate([0.95, 0.2, 0.3, 0.92, 0.1, 0.99, 0.4, 0.91])
    ]
    run_async(send_through_aggregator(scratch_url, ns, events))
    client = redis.Redis.from_url(scratch_url)

    def raise_scores(event_id: str) -> None:
        key = schema.event_key(st, event_id)
        stored = schema.decode_event(client.get(key))
        for d in stored["detections"]:
            d["score"] = 0.99
        client.set(key, json.dumps([stored[f] for f in schema.EVENT_FIELDS]), keepttl=True)

    legacy = events[1]
    members = {
        schema.class_index_key(st, "scratches"): 0.2,
        schema.class_index_key(st, "pitted"): 0.1,
    }
    members[schema.defect_index_key(st)] = 0.2  # the top of all its detections
    for key, top in members.items():
        assert client.zrem(key, schema.class_member(legacy.event_id, top)) == 1
        client.zadd(key, {legacy.event_id: legacy.captured_at_ms})
    raise_scores("e001")
    raise_scores("e002")

    async def main() -> list[dict]:
        api = await make_api(scratch_url)
        async with api.client(api.viewer) as http:
            return [
                (await http.get("/v1/defects", params={"min_score": 0.9, **extra})).json()
                for extra in ({}, {"class": "scratches"})
            ]

    for page in run_async(main()):  # the defect index, then a class index
        assert [i["event_id"] for i in page["items"]] == ["e000", "e001", "e003", "e005", "e007"]
        assert page["examined"] == len(events) and page["next_cursor"] is None


def test_one_event_and_its_crops(api: Api, dataset: Dataset) -> None:
    with_crop = next(e for e in dataset.events if e.crops and "/" not in e.event_id)
    slashed = next(e for e in dataset.events if "/" in e.event_id)
    clean = next(e for e in dataset.events if not e.classes)

    async def main() -> dict[str, Any]:
        async with api.client(api.viewer) as http:
            out = {}
            url = f"/v1/defects/{with_crop.station}/{with_crop.event_id}"
            out["event"] = (await http.get(url)).json()
            out["crop"] = await http.get(f"{url}/crops/0")
            out["crop_missing"] = await http.get(f"{url}/crops/{len(with_crop.classes)}")
            out["slashed"] = await http.get(f"/v1/defects/{slashed.station}/{slashed.event_id}")
            out["slashed_quoted"] = await http.get(
                f"/v1/defects/{slashed.station}/{quote(slashed.event_id, safe='')}"
            )
            out["clean"] = await http.get(f"/v1/defects/{clean.station}/{clean.event_id}")
            out["other_station"] = await http.get(
                f"/v1/defects/{dataset.ns.station(9)}/{with_crop.event_id}"
            )
            return out

    out = run_async(main())
    assert out["event"]["event_id"] == with_crop.event_id
    assert out["event"]["station"] == with_crop.station
    assert out["crop"].status_code == 200
    assert out["crop"].headers["content-type"] == "image/jpeg"
    assert out["crop"].content == JPEG
    assert out["crop_missing"].status_code == 404
    assert "no crop" in out["crop_missing"].json()["detail"]
    for key in ("slashed", "slashed_quoted"):
        assert out[key].status_code == 200, out[key].text
        assert out[key].json()["event_id"] == slashed.event_id
    assert out["clean"].status_code == 200 and out["clean"].json()["detections"] == []
    assert out["other_station"].status_code == 404  # an id is unique per station only


BAD = [
    ({"cursor": "not-a-cursor"}, 400, "cursor"),
    ({"cursor": "WzksMiwieCIsInkiXQ"}, 400, "cursor"),  # [9,2,"x","y"]: an unknown version
    ({"limit": -1}, 422, "limit"),
    ({"limit": 0}, 422, "limit"),
    ({"limit": 100000}, 422, "limit"),
    ({"limit": "ten"}, 422, "limit"),
    ({"from": 2000, "to": 1000}, 422, "from"),
    ({"from": "yesterday"}, 422, "from"),
    ({"to": "2024-13-45T00:00:00Z"}, 422, "to"),
    ({"from": "-5"}, 422, "from"),
    ({"min_score": 1.5}, 422, "min_score"),
    ({"min_score": "nan"}, 422, "min_score"),
    ({"station": "bad station!"}, 422, "station"),
    ({"station": "{st:x}"}, 422, "station"),
    ({"class": ""}, 422, "class"),
]


@pytest.mark.parametrize(("params", "status", "names"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_parameters_are_4xx_with_a_message(
    api: Api, params: dict[str, Any], status: int, names: str
) -> None:
    async def main() -> Any:
        async with api.client(api.viewer) as http:
            return await http.get("/v1/defects", params=params)

    r = run_async(main())
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert names in detail, detail
