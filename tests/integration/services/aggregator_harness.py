"""Helpers of the aggregator tests: a private namespace on the shared Redis, a running
aggregator on a free loopback port, and event builders.

Every test owns the stations ``<prefix>-s<i>`` (all of their keys carry that station's
hash tag) and a token hash of its own, so tests share the Redis on 6379 (or
``SLIMSPECT_TEST_REDIS_URL``) without seeing each other; :func:`cleanup` deletes them.

(No ``__init__.py`` in these test folders: ``tests/unit`` and ``tests/integration`` are no
packages, so pytest would import both ``services/`` test folders as a package named
``services``, which shadows the real one and collides with the other. Test modules here
have unique basenames instead.)
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import os
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio as aioredis

from services.aggregator import schema
from services.aggregator.auth import RedisTokenStore
from services.aggregator.server import Aggregator, build_server
from services.aggregator.settings import AggregatorSettings
from slimspect.v1 import inspection_pb2 as pb
from slimspect.v1 import inspection_pb2_grpc as pb_grpc

REDIS_URL = os.environ.get("SLIMSPECT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 60  # starts like a JPEG; the aggregator does not decode
CLASSES = ("crazing", "inclusion", "patches", "pitted", "rolled-in", "scratches")


_runner: asyncio.Runner | None = None


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Runs ``coro`` on ONE event loop shared by every aggregator test.

    grpc.aio is built around one loop per process (its completion-queue poller is bound to
    the loop current when it is created), so the tests share a loop instead of starting a
    new one for each test.
    """
    global _runner
    if _runner is None:
        gc.collect()
        _runner = asyncio.Runner()
        atexit.register(_runner.close)
    return _runner.run(coro)


@dataclass(frozen=True)
class Namespace:
    prefix: str

    def station(self, i: int = 0) -> str:
        return f"{self.prefix}-s{i}"

    @property
    def token_key(self) -> str:
        return f"{schema.TOKENS_KEY}:{self.prefix}"


def redis_or_fail() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"no Redis at {REDIS_URL}: `make test` starts one (scripts/ensure-services.sh)")
    return client


def new_namespace() -> Namespace:
    return Namespace(prefix=f"t{uuid.uuid4().hex[:10]}")


def keys_of(client: redis.Redis, station: str, kind: str = "*") -> list[str]:
    """Keys of ``station`` (any kind, or one kind: ``ev``, ``idx``, ``cnt``, ...)."""
    pattern = f"{kind}:{{st:{station}}}*"
    return sorted(k.decode() for k in client.scan_iter(match=pattern, count=1000))


def cleanup(client: redis.Redis, ns: Namespace) -> None:
    doomed = [k for k in client.scan_iter(match=f"*{{st:{ns.prefix}-*", count=1000)]
    if doomed:
        client.delete(*doomed)
    mine = [s for s in client.smembers(schema.STATIONS_KEY) if s.decode().startswith(ns.prefix)]
    if mine:
        client.srem(schema.STATIONS_KEY, *mine)
    client.delete(ns.token_key)


def now_ms() -> int:
    return int(time.time() * 1000)


def event(
    station: str,
    event_id: str | None = None,
    *,
    classes: Iterable[str] = (),
    crop: bool = False,
    frame_count: int = 1,
    captured_at_ms: int | None = None,
    **fields: Any,
) -> pb.InspectionEvent:
    """A valid event of ``station``: one detection per name in ``classes``."""
    detections = [
        pb.Detection(
            box=pb.Box(x1=10 + i, y1=20, x2=110 + i, y2=64.5),
            score=0.875,
            class_id=CLASSES.index(name) if name in CLASSES else 0,
            class_name=name,
            crop_jpeg=JPEG if crop else b"",
        )
        for i, name in enumerate(classes)
    ]
    values: dict[str, Any] = {
        "event_id": uuid.uuid4().hex if event_id is None else event_id,
        "station": station,
        "camera": "cam0",
        "captured_at_ms": now_ms() if captured_at_ms is None else captured_at_ms,
        "model_name": "steel-yolo",
        "model_version": "1.0.0",
        "image_width": 640,
        "image_height": 480,
        "inference_ms": 41.5,
        "frame_count": frame_count,
        "detections": detections,
    }
    values.update(fields)
    return pb.InspectionEvent(**values)


def settings(**overrides: Any) -> AggregatorSettings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "redis_url": REDIS_URL}
    values["metrics_port"] = 0
    values.update(overrides)
    return AggregatorSettings(**values)


@dataclass
class Running:
    aggregator: Aggregator
    port: int
    redis: aioredis.Redis
    tokens: RedisTokenStore
    channel: grpc.aio.Channel

    @property
    def stub(self) -> pb_grpc.IngestStub:
        return pb_grpc.IngestStub(self.channel)

    async def token(self, station: str) -> str:
        return await self.tokens.add(station)

    async def report(self, token: str | None) -> grpc.aio.StreamStreamCall:
        metadata = [("authorization", f"Bearer {token}")] if token else []
        return self.stub.Report(metadata=metadata)

    async def send(self, token: str, *batches: pb.ReportBatch) -> list[pb.Ack]:
        """One stream: write ``batches``, close, collect every Ack."""
        call = await self.report(token)
        for batch in batches:
            await call.write(batch)
        await call.done_writing()
        acks = [ack async for ack in call]
        assert await call.code() == grpc.StatusCode.OK
        return acks


@asynccontextmanager
async def running(ns: Namespace, **overrides: Any) -> AsyncIterator[Running]:
    """An aggregator on a free port with this namespace's token store, and a channel to it."""
    client = aioredis.Redis.from_url(REDIS_URL)
    tokens = RedisTokenStore(client, key=ns.token_key)
    clock = overrides.pop("clock", time.time)
    aggregator, port = build_server(settings(**overrides), client, tokens=tokens, clock=clock)
    await aggregator.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(aggregator, port, client, tokens, channel)
    finally:
        await channel.close()
        await aggregator.stop(1)
        await client.aclose()


def batch(sequence: int, events: Iterable[pb.InspectionEvent]) -> pb.ReportBatch:
    return pb.ReportBatch(sequence=sequence, events=list(events))
