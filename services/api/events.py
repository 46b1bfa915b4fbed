"""The defect list: a k-way merge of per-station sorted indexes, paged by position.

The aggregator indexes events per station (schema.py): ``idx:{st:S}:cls:C`` holds the
events of station S with at least one detection of class C, ``idx:{st:S}:def`` those
with any detection; both scored by capture time. A query over many stations reads one
index per station (the class's, or without a class filter the defect index) newest
first (``ZRANGE ... BYSCORE REV LIMIT``, in small chunks, refilled on demand) and merges
them in the total order of cursor.py, ``(captured_at_ms, station, event_id)``
descending. Clean frames are in neither index, so they cost nothing here. (The merge
still keeps one of equal positions, as it did when a query without a class merged every
class index of a station: an event with several classes was in several.)

Filters the indexes serve (station, class, time window) bound the reads. min_score is
served by the index members too: a member is ``event id NUL top score`` (the highest
score of a detection of that class, or of any class in the defect index,
schema.class_member), so an event below it is passed over without being read. camera is
applied to the fetched events (one MGET per station, pipelined per batch) while the page
is filled up to ``limit``. A rare filter could make one request read a whole index, so
each request examines at most ``scan_budget`` events: then the page is returned shorter
than ``limit`` with a cursor to go on from. Clients follow next_cursor until it is null;
only then is the walk complete.

Inside one sorted set, members of equal score come in reverse byte order under REV,
which is this module's order too (event ids are UTF-8: byte order = code point order).
A chunk is read below the last member seen: ``max`` = its score, ``LIMIT offset`` = how
many members of exactly that score were read already, and whatever is not strictly
below it (a member written meanwhile) is dropped. So even a million events in one
millisecond page correctly.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from services.aggregator import schema
from services.api.cursor import Position

# Greater than any event id (ids are printable; U+10FFFF is not), for "every member of a score".
_TOP = "\U0010ffff"
_MIN_CHUNK = 4
_MAX_CHUNK = 1000


@dataclass(frozen=True)
class DefectQuery:
    """What ``GET /v1/defects`` asks; times in unix ms, ``from_ms`` inclusive, ``to_ms`` not."""

    station: str | None = None
    camera: str | None = None
    class_name: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    min_score: float | None = None

    @property
    def post_filtered(self) -> bool:
        """Whether some filter is applied after fetching (not served by an index)."""
        return self.camera is not None or self.min_score is not None

    def matches(self, event: dict[str, Any]) -> bool:
        if self.camera is not None and event.get("camera") != self.camera:
            return False
        if self.min_score is not None:
            return any(
                d["score"] >= self.min_score
                for d in event["detections"]
                if self.class_name is None or d["class_name"] == self.class_name
            )
        return True


@dataclass
class DefectPage:
    events: list[dict[str, Any]]
    next_position: Position | None
    examined: int


@dataclass(eq=False)
class _Stream:
    """One sorted set read newest first, below an exclusive bound (score, member)."""

    station: str
    key: str
    bound: tuple[int, str]
    chunk: int
    offset: int = 0
    exhausted: bool = False
    buffer: deque[tuple[int, str]] = field(default_factory=deque)

    def zrange_args(self, min_score: str) -> dict[str, Any]:
        return {
            "name": self.key,
            "start": self.bound[0],
            "end": min_score,
            "desc": True,
            "byscore": True,
            "withscores": True,
            "offset": self.offset,
            "num": self.chunk,
        }

    def take(self, rows: Sequence[tuple[bytes | str, float]]) -> None:
        """Buffers the rows of one ZRANGE (those strictly below the bound) and moves on."""
        parsed = [(int(score), _text(member)) for member, score in rows]
        self.buffer.extend(r for r in parsed if r < self.bound)
        if len(parsed) < self.chunk:
            self.exhausted = True
        elif parsed[-1][0] == self.bound[0]:
            self.offset += len(parsed)  # all of this chunk had the bound's score
        else:
            last = parsed[-1]
            self.bound = last
            self.offset = sum(1 for r in parsed if r[0] == last[0])
        self.chunk = min(self.chunk * 2, _MAX_CHUNK)

    def head(self) -> Position:
        score, member = self.buffer[0]
        return Position(score, self.station, schema.class_member_parts(member)[0])


@dataclass(frozen=True)
class _Entry:
    """A heap entry: the smallest entry is the LARGEST position (the list runs descending)."""

    position: Position
    stream: _Stream

    def __lt__(self, other: _Entry) -> bool:
        return self.position > other.position


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _initial_bound(station: str, query: DefectQuery, after: Position | None) -> tuple[int, str]:
    """The exclusive upper bound of ``station``'s indexes: below ``to`` and the cursor."""
    bound = (query.to_ms, "") if query.to_ms is not None else (2**53, _TOP)
    if after is not None:
        if station < after.station:  # at the cursor's time, lower stations come later
            mine = (after.captured_at_ms, _TOP)
        elif station > after.station:
            mine = (after.captured_at_ms, "")
        else:
            mine = (after.captured_at_ms, after.event_id)
        bound = min(bound, mine)
    return bound


class DefectIndex:
    """Reads pages of defects from the aggregator's indexes."""

    def __init__(self, redis: aioredis.Redis, *, scan_budget: int = 20_000) -> None:
        self._redis = redis
        self._scan_budget = scan_budget

    async def stations(self) -> list[str]:
        """Every station that ever reported (the aggregator's global ``stations`` set)."""
        return sorted(_text(s) for s in await self._redis.smembers(schema.STATIONS_KEY))

    @staticmethod
    def _index_keys(stations: Iterable[str], class_name: str | None) -> list[tuple[str, str]]:
        """One index per station: the class's, or the defect index (every class)."""
        if class_name is not None:
            return [(s, schema.class_index_key(s, class_name)) for s in stations]
        return [(s, schema.defect_index_key(s)) for s in stations]

    async def _fill(self, streams: Sequence[_Stream], min_score: str) -> None:
        """Reads a chunk for each stream; again for those whose chunk was all at or above
        their bound (a cursor inside a run of equal scores), until each has rows or ends."""
        while streams:
            pipe = self._redis.pipeline(transaction=False)
            for stream in streams:
                pipe.zrange(**stream.zrange_args(min_score))
            for stream, rows in zip(streams, await pipe.execute(), strict=True):
                stream.take(rows)
            streams = [s for s in streams if not s.buffer and not s.exhausted]

    async def page(
        self, query: DefectQuery, *, limit: int, after: Position | None = None
    ) -> DefectPage:
        """Up to ``limit`` events after ``after``, newest first, and where to go on from."""
        if query.station is not None:
            stations = [query.station]
        else:
            stations = await self.stations()
        keys = self._index_keys(stations, query.class_name)
        min_score = str(query.from_ms) if query.from_ms is not None else "-inf"
        # The first chunk of each stream: about four times its share of the page (x2 for
        # the spread of the streams' shares, x2 again with post-filters, which pass over
        # some), so that few streams need a second read, and a query over 100+ stations
        # still reads a few rows of each, not 16.
        per_stream = (limit + 1) * (4 if query.post_filtered else 2) // max(len(keys), 1)
        chunk = max(_MIN_CHUNK, min(limit + 1, 2 * per_stream + 4, _MAX_CHUNK))
        streams = [
            _Stream(station=s, key=k, bound=_initial_bound(s, query, after), chunk=chunk)
            for s, k in keys
        ]
        streams = [s for s in streams if s.bound[0] >= (query.from_ms or 0)]
        await self._fill(streams, min_score)
        heap = [_Entry(s.head(), s) for s in streams if s.buffer]
        heapq.heapify(heap)

        async def pop() -> tuple[Position, float | None] | None:
            """The next distinct position of the merge and its top score (the highest of
            the class indexes it was read from; None if one did not say), or None when
            all are read."""
            best: float | None = 0.0
            while heap:
                entry = heapq.heappop(heap)
                stream = entry.stream
                _, top = schema.class_member_parts(stream.buffer.popleft()[1])
                best = None if top is None or best is None else max(best, top)
                if not stream.buffer and not stream.exhausted:
                    # One round trip refills this stream and every other one about to run
                    # dry: with 100+ streams, refilling one at a time cost a round trip each.
                    low = [e.stream for e in heap if len(e.stream.buffer) <= 1]
                    await self._fill([stream, *(s for s in low if not s.exhausted)], min_score)
                if stream.buffer:
                    heapq.heappush(heap, _Entry(stream.head(), stream))
                if heap and heap[0].position == entry.position:
                    continue  # the same event from another class index: keep the last copy
                return entry.position, best
            return None

        events: list[dict[str, Any]] = []
        examined = 0
        last: Position | None = None
        batch_size = limit if not query.post_filtered else min(max(limit * 4, 64), _MAX_CHUNK)
        batch: deque[tuple[Position, dict[str, Any] | None]] = deque()
        while len(events) < limit and examined < self._scan_budget:
            if not batch:
                size = min(batch_size, self._scan_budget - examined)
                need = limit - len(events)
                # min_score is served by the indexes: an event whose top score (from its
                # class index members) is below it is examined without being read.
                popped: list[tuple[Position, bool]] = []
                reads = 0
                while len(popped) < size and (p := await pop()) is not None:
                    position, top = p
                    read = query.min_score is None or top is None or top >= query.min_score
                    popped.append((position, read))
                    reads += read
                    if reads >= need and query.camera is None:
                        break  # what is read matches: enough for the page
                if not popped:
                    break
                fetched = iter(await self._fetch([pos for pos, read in popped if read]))
                batch.extend((pos, next(fetched) if read else None) for pos, read in popped)
            last, event = batch.popleft()
            examined += 1
            if event is not None and query.matches(event):
                events.append(event)
        more = bool(batch) or bool(heap)
        return DefectPage(events=events, next_position=last if more else None, examined=examined)

    async def _fetch(self, positions: Iterable[Position]) -> list[dict[str, Any] | None]:
        # One MGET per station (its keys share a hash tag: one cluster slot), not one GET
        # per event: redis-py packs every command in Python, which was most of the time of
        # a min_score page (400 events read).
        positions = list(positions)
        by_station: dict[str, list[int]] = {}
        for i, p in enumerate(positions):
            by_station.setdefault(p.station, []).append(i)
        pipe = self._redis.pipeline(transaction=False)
        for station, indexes in by_station.items():
            pipe.mget([schema.event_key(station, positions[i].event_id) for i in indexes])
        events: list[dict[str, Any] | None] = [None] * len(positions)
        for indexes, values in zip(by_station.values(), await pipe.execute(), strict=True):
            for i, raw in zip(indexes, values, strict=True):
                # An index member whose event expired in between reads as nil: skipped.
                events[i] = schema.decode_event(raw) if raw else None
        return events

    async def event(self, station: str, event_id: str) -> dict[str, Any] | None:
        raw = await self._redis.get(schema.event_key(station, event_id))
        return schema.decode_event(raw) if raw else None

    async def crop(self, station: str, event_id: str, index: int) -> bytes | None:
        return await self._redis.get(schema.crop_key(station, event_id, index))

    async def newest(self, stations: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per station, its newest stored event (clean frames included); absent: none."""
        pipe = self._redis.pipeline(transaction=False)
        for s in stations:
            pipe.zrange(schema.index_key(s), 0, 0, desc=True)
        heads = await pipe.execute()
        found = [(s, _text(head[0])) for s, head in zip(stations, heads, strict=True) if head]
        pipe = self._redis.pipeline(transaction=False)
        for s, event_id in found:
            pipe.get(schema.event_key(s, event_id))
        raws = await pipe.execute()
        return {s: schema.decode_event(raw) for (s, _), raw in zip(found, raws, strict=True) if raw}
