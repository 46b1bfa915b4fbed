"""Defect statistics from the aggregator's hourly counters (``cnt:{st:S}:YYYYMMDDHH``).

The counters are exact (every frame is counted, clean summaries included) but hourly, so
a window is widened to whole UTC hours: ``from`` down to its hour, ``to`` up to the next
one; the answer says which hours it covers. Reading is one HGETALL per (station, hour),
pipelined; the window is capped (``max_stats_hours``) so one request stays bounded.

Rates: ``defect_rate`` = defect_frames / frames (the share of frames with a defect) and
``defects_per_frame`` = defects / frames; None when no frame was counted. Per class only
the number of detections is counted (``defects:C``), so a class group has
``defects_per_frame`` (its detections per frame, over all frames of the window) and no
``defect_frames`` or ``defect_rate``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import redis.asyncio as aioredis

from services.aggregator import schema

GroupBy = Literal["hour", "station", "class"]
_PIPELINE_CHUNK = 2000


@dataclass
class Tally:
    """Counts of one group (or of the whole window)."""

    frames: int = 0
    defect_frames: int | None = 0
    defects: int = 0
    by_class: Counter[str] = field(default_factory=Counter)

    def add(self, counters: dict[str, int]) -> None:
        self.frames += counters.get(schema.FRAMES, 0)
        if self.defect_frames is not None:
            self.defect_frames += counters.get(schema.DEFECT_FRAMES, 0)
        self.defects += counters.get(schema.DEFECTS, 0)
        for name, value in counters.items():
            if name.startswith(schema.CLASS_COUNTER_PREFIX):
                self.by_class[name[len(schema.CLASS_COUNTER_PREFIX) :]] += value

    @property
    def defect_rate(self) -> float | None:
        if not self.frames or self.defect_frames is None:
            return None
        return self.defect_frames / self.frames

    @property
    def defects_per_frame(self) -> float | None:
        return self.defects / self.frames if self.frames else None


@dataclass
class Stats:
    group_by: GroupBy
    from_ms: int
    to_ms: int
    stations: list[str]
    total: Tally
    groups: list[tuple[str, int | None, Tally]]  # key, hour start ms (hour groups), counts


def hour_window(from_ms: int, to_ms: int) -> tuple[int, int]:
    """``[from, to)`` widened to whole hours."""
    start = from_ms // schema.HOUR_MS * schema.HOUR_MS
    end = -(-to_ms // schema.HOUR_MS) * schema.HOUR_MS
    return start, max(end, start + schema.HOUR_MS)


def hour_label(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:00:00Z")


def _decode(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


async def read_stats(
    redis: aioredis.Redis,
    *,
    stations: Sequence[str],
    from_ms: int,
    to_ms: int,
    group_by: GroupBy,
) -> Stats:
    """Sums the counters of ``stations`` over the hours of ``[from_ms, to_ms)``."""
    start, end = hour_window(from_ms, to_ms)
    hours = list(range(start, end, schema.HOUR_MS))
    cells = [(s, h) for s in stations for h in hours]
    values: list[dict[str, int]] = []
    for i in range(0, len(cells), _PIPELINE_CHUNK):
        pipe = redis.pipeline(transaction=False)
        for station, hour in cells[i : i + _PIPELINE_CHUNK]:
            pipe.hgetall(schema.counter_key(station, schema.hour_of(hour)))
        values.extend(_decode(raw) for raw in await pipe.execute())

    total = Tally()
    groups: dict[str, Tally] = {}
    if group_by == "hour":
        groups = {hour_label(h): Tally() for h in hours}  # empty hours too: a chart's gaps
    for (station, hour), counters in zip(cells, values, strict=True):
        if not counters:
            continue
        total.add(counters)
        if group_by == "hour":
            groups[hour_label(hour)].add(counters)
        elif group_by == "station":
            groups.setdefault(station, Tally()).add(counters)

    if group_by == "hour":
        rows = [(hour_label(h), h, groups[hour_label(h)]) for h in hours]
    elif group_by == "station":
        rows = [(s, None, groups[s]) for s in sorted(groups)]
    else:
        rows = [
            (name, None, Tally(frames=total.frames, defect_frames=None, defects=n))
            for name, n in sorted(total.by_class.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
    return Stats(
        group_by=group_by,
        from_ms=start,
        to_ms=end,
        stations=list(stations),
        total=total,
        groups=rows,
    )
