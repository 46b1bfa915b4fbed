"""Writes validated events into Redis with ``ingest.lua``, and sweeps retention.

A batch is one non-transactional pipeline: a SADD of the station into ``stations`` and one
script call per event. Each call is atomic on its own (store + index + count, or report a
duplicate), so nothing is gained by wrapping the batch in MULTI, and an interrupted
pipeline leaves only whole events behind: the unacked batch is resent and its stored
events come back as duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import redis.asyncio as aioredis

from services.aggregator import schema
from slimspect.v1 import inspection_pb2

INGEST_LUA = resources.files("services.aggregator").joinpath("ingest.lua").read_text()


class IngestWriter:
    """Stores events exactly once (see schema.py for what is written where)."""

    def __init__(self, redis: aioredis.Redis, *, retention_ms: int) -> None:
        self._redis = redis
        self._retention_ms = retention_ms
        self._ingest = redis.register_script(INGEST_LUA)

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
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.sadd(schema.STATIONS_KEY, station)
            for event in events:
                call = schema.ingest_call(event, now_ms=now_ms, retention_ms=self._retention_ms)
                await self._ingest(keys=call.keys, args=call.args, client=pipe)
            results = await pipe.execute()
        return [int(r) == 1 for r in results[1:]]

    async def sweep(self, *, now_ms: int) -> int:
        """Trims every station's time and class indexes below ``now - retention``.

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
                for c in classes:
                    name = c.decode() if isinstance(c, bytes) else c
                    pipe.zremrangebyscore(schema.class_index_key(station, name), "-inf", below)
                removed += sum(await pipe.execute())
        return removed
