"""``GET /v1/stats``: the hourly counters summed by hour, station and class, equal to the
counts the test computes from the events it sent."""

from __future__ import annotations

from typing import Any

import pytest
from aggregator_harness import run_async
from api_harness import HOUR_MS, Api, Dataset, expected_stats

pytestmark = pytest.mark.timeout(120)


def _get(api: Api, params: dict[str, Any]) -> Any:
    async def main() -> Any:
        async with api.client(api.viewer) as http:
            return await http.get("/v1/stats", params=params)

    return run_async(main())


def _rates(c: dict[str, int]) -> tuple[float | None, float | None]:
    if not c["frames"]:
        return None, None
    return c["defect_frames"] / c["frames"], c["defects"] / c["frames"]


def _check_counts(got: dict[str, Any], want: dict[str, int]) -> None:
    want = {k: want.get(k, 0) for k in ("frames", "defect_frames", "defects")} | {
        k: v for k, v in want.items() if k.startswith("class:")
    }
    assert (got["frames"], got["defect_frames"], got["defects"]) == (
        want["frames"],
        want["defect_frames"],
        want["defects"],
    )
    assert got["by_class"] == {k[6:]: v for k, v in want.items() if k.startswith("class:") and v}
    rate, per_frame = _rates(want)
    assert got["defect_rate"] == pytest.approx(rate)
    assert got["defects_per_frame"] == pytest.approx(per_frame)


@pytest.mark.parametrize("station_index", [None, 2])
def test_grouped_by_hour_equals_the_events_sent(
    api: Api, dataset: Dataset, station_index: int | None
) -> None:
    station = None if station_index is None else dataset.stations[station_index]
    params = {"group_by": "hour", "from": dataset.start_ms, "to": dataset.end_ms}
    if station:
        params["station"] = station
    r = _get(api, params)
    assert r.status_code == 200, r.text
    body = r.json()
    want = expected_stats(
        dataset.events, from_ms=dataset.start_ms, to_ms=dataset.end_ms, station=station
    )
    assert body["from_ms"] == dataset.start_ms // HOUR_MS * HOUR_MS
    assert body["to_ms"] == -(-dataset.end_ms // HOUR_MS) * HOUR_MS
    hours = list(range(body["from_ms"], body["to_ms"], HOUR_MS))
    assert [g["start_ms"] for g in body["groups"]] == hours  # every hour, empty ones too
    for group in body["groups"]:
        _check_counts(group, want["hour"].get(str(group["start_ms"]), {}))
    _check_counts(body["total"], want["total"]["all"])
    assert sum(g["frames"] for g in body["groups"]) == body["total"]["frames"]
    assert body["stations"] == ([station] if station else dataset.stations)


def test_grouped_by_station_and_class(api: Api, dataset: Dataset) -> None:
    # A window inside the data: hours are widened, so the expectation widens the same way.
    start = dataset.start_ms + 5 * HOUR_MS + 1234
    end = dataset.end_ms - 7 * HOUR_MS - 99
    want = expected_stats(dataset.events, from_ms=start, to_ms=end)

    by_station = _get(api, {"group_by": "station", "from": start, "to": end}).json()
    assert [g["key"] for g in by_station["groups"]] == sorted(want["station"])
    for group in by_station["groups"]:
        _check_counts(group, want["station"][group["key"]])

    by_class = _get(api, {"group_by": "class", "from": start, "to": end}).json()
    total = want["total"]["all"]
    per_class = {k[6:]: v for k, v in total.items() if k.startswith("class:")}
    assert {g["key"]: g["defects"] for g in by_class["groups"]} == per_class
    counts = [g["defects"] for g in by_class["groups"]]
    assert counts == sorted(counts, reverse=True)
    for group in by_class["groups"]:
        assert group["frames"] == total["frames"]
        assert group["defect_frames"] is None and group["defect_rate"] is None
        assert group["defects_per_frame"] == pytest.approx(group["defects"] / total["frames"])


def test_default_window_is_the_last_24_hours(api: Api, dataset: Dataset) -> None:
    body = _get(api, {}).json()
    assert body["group_by"] == "hour"
    assert body["to_ms"] - body["from_ms"] in (24 * HOUR_MS, 25 * HOUR_MS)
    assert len(body["groups"]) == (body["to_ms"] - body["from_ms"]) // HOUR_MS


def test_a_station_without_events_counts_nothing(api: Api, dataset: Dataset) -> None:
    body = _get(api, {"station": dataset.ns.station(42), "group_by": "station"}).json()
    assert body["groups"] == []
    assert body["total"]["frames"] == 0 and body["total"]["defect_rate"] is None


BAD = [
    ({"group_by": "camera"}, "group_by"),
    ({"from": 5000, "to": 1000}, "from"),
    ({"from": 0, "to": 4_000_000_000_000}, "hours"),
    ({"from": "2024-02-30"}, "from"),
    ({"station": "no/slash"}, "station"),
]


@pytest.mark.parametrize(("params", "words"), BAD, ids=[str(b[0]) for b in BAD])
def test_bad_parameters_are_422_with_a_message(
    api: Api, params: dict[str, Any], words: str
) -> None:
    r = _get(api, params)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
