"""Writes validated events into Redis with ``ingest.lua``, and sweeps retention.

A batch is one non-transactional pipeline: a SADD of the station into ``stations`` and one
script call per slice of up to :data:`EVENTS_PER_CALL` events (all of one station, so one
cluster slot). Each call is atomic on its own (every event of it stored + indexed +
counted, or reported as a duplicate), so nothing is gained by wrapping the batch in MULTI,
and an interrupted pipeline leaves only whole events behind: the unacked batch is resent
and its stored events come back as duplicates.

Why per slice and not per event: the script's fixed cost (the call, the index trims and
expiries, the counters) is paid once per slice, and one call's arguments are a few keys
and one JSON string per event instead of ~30 arguments that redis-py encodes one by one
in Python (see ``bench_ingest.py`` in BENCHMARKS.md). The slice bound keeps one call short
(Redis runs nothing else meanwhile).

The pipeline sends EVALSHA of the script's digest; only when Redis answers NOSCRIPT (a
restarted or flushed script cache) is the script loaded and the calls that got that
answer sent again. (redis-py's Script objects would instead ask SCRIPT EXISTS before
every pipeline: one more round trip per batch.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from services.aggregator import schema
from slimspect.v1 import inspection_pb2

INGEST_LUA = resources.files("services.aggregator").joinpath("ingest.lua").read_text()
EVENTS_PER_CALL = 500


class IngestWriter:
    """Stores events exactly once (see schema.py for what is written where)."""

    def __init__(self, redis: aioredis.Redis, *, retention_ms: int) -> None:
        self._redis = redis
        self._retention_ms = retention_ms
        self._sha = hashlib.sha1(INGEST_LUA.encode()).hexdigest()

    async def write(
        self,
        station: str,
        events: Sequence[inspection_pb2.InspectionEvent],
        *,
        now_ms: int,
    ) -> list[bool]:
        """Stores validated ``events`` of ``station``; True per newly stored, False per duplicate.

        Raises a ``redis.RedisError`` when the write did not complete: the batch must not be
        acknowledged then (some of its events may be stored; a resend dedupes them).
        """
        if not events:
            return []
        calls = [
            schema.ingest_call(
                events[start : start + EVENTS_PER_CALL],
                now_ms=now_ms,
                retention_ms=self._retention_ms,
            )
            for start in range(0, len(events), EVENTS_PER_CALL)
        ]
        replies: list[list[int] | None] = [None] * len(calls)
        pending = list(range(len(calls)))
        loaded = False
        while pending:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(schema.STATIONS_KEY, station)
                for i in pending:
                    call = calls[i]
                    pipe.evalsha(self._sha, len(call.keys), *call.keys, *call.args)
                results = await pipe.execute(raise_on_error=False)
            missing = []
            for i, result in zip(pending, results[1:], strict=True):
                if isinstance(result, NoScriptError) and not loaded:
                    missing.append(i)  # nothing of this call was written
                elif isinstance(result, Exception):
                    raise result
                else:
                    replies[i] = result
            if isinstance(results[0], Exception):
                raise results[0]
            if missing:
                await self._redis.script_load(INGEST_LUA)
                loaded = True
            pending = missing
        return [int(r) == 1 for stored in replies for r in stored or ()]

    async def sweep(self, *, now_ms: int) -> int:
        """Trims every station's time, defect and class indexes below ``now - retention``.

        The script trims the indexes it writes; this catches classes that stopped occurring
        and stations that went quiet. Returns the number of entries removed.
        """
        below = f"({now_ms - self._retention_ms}"
        removed = 0
        async for raw in self._redis.sscan_iter(schema.STATIONS_KEY):
            station = raw.decode() if isinstance(raw, bytes) else raw
            classes = await self._redis.smembers(schema.classes_key(station))
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(schema.index_key(station), "-inf", below)
                pipe.zremrangebyscore(schema.defect_index_key(station), "-inf", below)
                for c in classes:
                    name = c.decode() if isinstance(c, bytes) else c
                    pipe.zremrangebyscore(schema.class_index_key(station, name), "-inf", below)
                removed += sum(await pipe.execute())
        return removed
