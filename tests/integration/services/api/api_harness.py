"""Helpers of the API tests: a private Redis, a data set written through the real
aggregator, the API app over it, and the expected answers computed from what was sent.

Isolation: the aggregator's ``stations`` set is global (not namespaced), so these tests
do not share the Redis on 6379: :class:`RedisServer` starts a ``redis-server`` of their
own on a free loopback port (``make test`` installs redis-server). Events reach it through
the aggregator's gRPC server exactly as an agent's would (aggregator_harness.running,
pointed at this Redis for the duration of the load).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import aggregator_harness
import grpc
import httpx
import pytest
import redis
import redis.asyncio as aioredis
from aggregator_harness import CLASSES, Namespace, batch, event, now_ms, running

from services.aggregator import schema
from services.aggregator.auth import RedisTokenStore
from services.api.app import create_app
from services.api.context import ApiContext
from services.api.keys import ApiKeyStore, Role
from services.api.server import start_http
from services.api.settings import ApiSettings
from services.rollout.fleet import FleetServer, build_fleet_server
from services.rollout.service import RolloutService
from services.rollout.settings import RolloutSettings
from slimspect.manifest import manifest_for_file
from slimspect.settings import StoreSettings
from slimspect.signing import generate_keypair
from slimspect.store import ModelStore
from slimspect.v1 import fleet_pb2, fleet_pb2_grpc
from slimspect.v1 import inspection_pb2 as pb

HOUR_MS = schema.HOUR_MS
CAMERAS = ("cam0", "cam1", "cam2")
DATABASES = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throw-away ``redis-server`` on a free loopback port, no persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not on PATH: `make test` installs it (ensure-services.sh)")
        for _ in range(5):
            self.port = free_port()
            self._process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
                + [
                    "--appendonly",
                    "no",
                    "--databases",
                    str(DATABASES),
                    "--dir",
                    str(self.directory),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            client = redis.Redis(port=self.port)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self._process.poll() is None:
                with contextlib.suppress(redis.ConnectionError):
                    client.ping()
                    client.close()
                    return
                time.sleep(0.05)
            self.stop()  # port taken meanwhile, or a slow start: try another port
        pytest.fail("could not start a redis-server for the API tests")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None


# --- the data set -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One event as the test sent it (the independent record the answers are checked with)."""

    station: str
    event_id: str
    camera: str
    captured_at_ms: int
    classes: tuple[str, ...]
    scores: tuple[float, ...]
    crops: bool
    frame_count: int
    crop_data: bytes | None = None  # a real JPEG for every crop (default: a stand-in)

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.captured_at_ms, self.station, self.event_id)

    def to_pb(self) -> pb.InspectionEvent:
        ev = event(
            self.station,
            self.event_id,
            classes=self.classes,
            crop=self.crops,
            camera=self.camera,
            captured_at_ms=self.captured_at_ms,
            frame_count=self.frame_count,
        )
        for det, score in zip(ev.detections, self.scores, strict=True):
            det.score = score
            if self.crops and self.crop_data is not None:
                det.crop_jpeg = self.crop_data
        return ev


@dataclass
class Dataset:
    ns: Namespace
    stations: list[str]
    events: list[Sent]
    start_ms: int
    end_ms: int
    extra: dict[str, Any] = field(default_factory=dict)

    def defects(self, **f: Any) -> list[Sent]:
        """Expected ``GET /v1/defects`` answer: filtered, newest first in the total order."""
        out = [e for e in self.events if e.classes and matches(e, **f)]
        return sorted(out, key=lambda e: e.key, reverse=True)


def matches(
    e: Sent,
    *,
    station: str | None = None,
    camera: str | None = None,
    class_name: str | None = None,
    from_ms: int | None = None,
    to_ms: int | None = None,
    min_score: float | None = None,
) -> bool:
    if station is not None and e.station != station:
        return False
    if camera is not None and e.camera != camera:
        return False
    if class_name is not None and class_name not in e.classes:
        return False
    if from_ms is not None and e.captured_at_ms < from_ms:
        return False
    if to_ms is not None and e.captured_at_ms >= to_ms:
        return False
    if min_score is not None:
        scores = [
            s
            for c, s in zip(e.classes, e.scores, strict=True)
            if class_name is None or c == class_name
        ]
        return any(s >= min_score for s in scores)
    return True


def make_dataset(
    ns: Namespace,
    *,
    n_stations: int = 4,
    n_events: int = 3000,
    seed: int = 11,
    stations: list[str] | None = None,
    class_weights: tuple[float, ...] = (1, 1, 1, 1),
) -> Dataset:
    """Events over ``n_stations`` in the last ~40 hours: defects with 1-3 detections, clean
    frames and clean summaries; many share a capture time (across and within stations) so
    the order's tie-breaks are exercised; a few ids contain ``/``."""
    rng = random.Random(seed)
    stations = stations or [ns.station(i) for i in range(n_stations)]
    end = now_ms() - 60_000
    start = end - 40 * HOUR_MS
    shared_times = [rng.randrange(start, end) for _ in range(40)]
    events: list[Sent] = []
    for i in range(n_events):
        station = rng.choice(stations)
        ts = rng.choice(shared_times) if rng.random() < 0.25 else rng.randrange(start, end)
        kind = rng.random()
        if kind < 0.1:
            classes: tuple[str, ...] = ()
            frames = rng.randint(2, 40) if kind < 0.03 else 1  # summaries of clean frames
        else:
            classes = tuple(rng.choices(CLASSES[:4], class_weights, k=rng.randint(1, 3)))
            frames = 1
        event_id = f"lot/{i}/{uuid.uuid4().hex[:6]}" if i % 97 == 0 else uuid.uuid4().hex
        events.append(
            Sent(
                station=station,
                event_id=event_id,
                camera=rng.choice(CAMERAS),
                captured_at_ms=ts,
                classes=classes,
                scores=tuple(rng.randint(1, 64) / 64 for _ in classes),  # exact in float32
                crops=bool(classes) and rng.random() < 0.3,
                frame_count=frames,
            )
        )
    return Dataset(ns=ns, stations=stations, events=events, start_ms=start, end_ms=end)


@contextlib.contextmanager
def aggregator_on(url: str) -> Iterator[None]:
    """Points aggregator_harness (its ``running`` and ``settings``) at ``url`` for a while."""
    saved = aggregator_harness.REDIS_URL
    aggregator_harness.REDIS_URL = url
    try:
        yield
    finally:
        aggregator_harness.REDIS_URL = saved


async def send_through_aggregator(url: str, ns: Namespace, events: list[Sent]) -> None:
    """Writes ``events`` through a real aggregator (gRPC, one stream per station)."""
    per_station: dict[str, list[pb.InspectionEvent]] = defaultdict(list)
    for e in events:
        per_station[e.station].append(e.to_pb())
    with aggregator_on(url):
        async with running(ns) as agg:
            for station, evs in per_station.items():
                token = await agg.token(station)
                batches = [
                    batch(i, evs[j : j + 250]) for i, j in enumerate(range(0, len(evs), 250))
                ]
                acks = await agg.send(token, *batches)
                accepted = sum(a.accepted + a.duplicate for a in acks)
                rejected = [r for a in acks for r in a.rejections]
                assert accepted == len(evs) and not rejected, rejected[:3]


# --- expected statistics ------------------------------------------------------------------


def expected_stats(
    events: list[Sent], *, from_ms: int, to_ms: int, station: str | None = None
) -> dict[str, dict[str, Counter[str]]]:
    """Counts per hour / station / class over the hours of [from_ms, to_ms), from the events."""
    lo = from_ms // HOUR_MS * HOUR_MS
    hi = -(-to_ms // HOUR_MS) * HOUR_MS
    out: dict[str, dict[str, Counter[str]]] = {
        "hour": defaultdict(Counter),
        "station": defaultdict(Counter),
        "total": defaultdict(Counter),
    }
    for e in events:
        if not lo <= e.captured_at_ms < hi or (station and e.station != station):
            continue
        hour = e.captured_at_ms // HOUR_MS * HOUR_MS
        for group, key in (("hour", str(hour)), ("station", e.station), ("total", "all")):
            c = out[group][key]
            c["frames"] += e.frame_count
            c["defect_frames"] += 1 if e.classes else 0
            c["defects"] += len(e.classes)
            for name in e.classes:
                c[f"class:{name}"] += 1
    return out


# --- the app ------------------------------------------------------------------------------


@dataclass
class Api:
    """The app over one Redis database, with a viewer and an operator key."""

    ctx: ApiContext
    viewer: str
    operator: str

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(app=create_app(self.ctx))
        return httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers, **kwargs
        )


async def make_api(
    url: str, *, rollout: Any = None, store: ModelStore | None = None, **settings: Any
) -> Api:
    client = aioredis.Redis.from_url(url)
    keys = ApiKeyStore(client)
    ctx = ApiContext(
        settings=ApiSettings(redis_url=url, **settings),
        redis=client,
        keys=keys,
        rollout=rollout,
        store=store,
    )
    return Api(
        ctx=ctx,
        viewer=await keys.add("test-viewer", Role.viewer),
        operator=await keys.add("test-operator", Role.operator),
    )


async def walk(http: httpx.AsyncClient, params: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Follows next_cursor to the end; returns every item and every page body."""
    items: list[dict] = []
    pages: list[dict] = []
    cursor = None
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        r = await http.get("/v1/defects", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body)
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert len(pages) < 10_000, "paging does not end"


def keys_of(items: list[dict]) -> list[tuple[int, str, str]]:
    return [(i["captured_at_ms"], i["station"], i["event_id"]) for i in items]


# --- fleet --------------------------------------------------------------------------------


def rollout_settings(url: str, **overrides: Any) -> RolloutSettings:
    values: dict[str, Any] = {
        "redis_url": url,
        "host": "127.0.0.1",
        "port": 0,
        "soak_s": 0.0,
        "sweep_interval_s": 0,
        "auto_promote": False,
    }
    values.update(overrides)
    return RolloutSettings(**values)


def heartbeat(
    station: str, version: str, *, fps: float = 12.0, **fields: Any
) -> fleet_pb2.HeartbeatRequest:
    values: dict[str, Any] = {
        "station": station,
        "agent_version": "0.1.0",
        "model_name": "steel-yolo",
        "model_version": version,
        "health": fleet_pb2.HEALTHY,
        "fps": fps,
        "spool_depth": 3,
        "cameras": [fleet_pb2.CameraStatus(camera="cam0", state=fleet_pb2.CAMERA_RUNNING, fps=fps)],
        "sent_at_ms": now_ms(),
    }
    values.update(fields)
    return fleet_pb2.HeartbeatRequest(**values)


@dataclass
class Fleet:
    """A Fleet gRPC server (sharing the API's rollout service) and station tokens for it."""

    server: FleetServer
    port: int
    tokens: RedisTokenStore
    channel: grpc.aio.Channel

    async def beat(self, request: fleet_pb2.HeartbeatRequest) -> fleet_pb2.HeartbeatReply:
        token = await self.tokens.add(request.station)
        stub = fleet_pb2_grpc.FleetStub(self.channel)
        return await stub.Heartbeat(request, metadata=[("authorization", f"Bearer {token}")])


@contextlib.asynccontextmanager
async def fleet_api(url: str, **overrides: Any) -> AsyncIterator[tuple[Api, Fleet]]:
    """The API with a rollout service on ``url``, and a Fleet server beside it."""
    client = aioredis.Redis.from_url(url)
    settings = rollout_settings(url, **overrides)
    service = RolloutService(client, settings)
    api = await make_api(url, rollout=service)
    server, port = build_fleet_server(settings, client, service=service)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield api, Fleet(server, port, RedisTokenStore(client), channel)
    finally:
        await channel.close()
        await server.stop(1)
        await client.aclose()


class LiveApi:
    """The API on a real uvicorn in a thread of its own (its own event loop and Redis
    client), for clients that block: schemathesis, the CLI commands."""

    def __init__(self, url: str, *, store: ModelStore | None = None, **settings: Any) -> None:
        self.url = url
        self.store = store
        self.settings = settings
        self.base = ""
        self.viewer = self.operator = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-api", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the API did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        client = aioredis.Redis.from_url(self.url)
        keys = ApiKeyStore(client)
        self.viewer = await keys.add("live-viewer", Role.viewer)
        self.operator = await keys.add("live-operator", Role.operator)
        ctx = ApiContext(
            settings=ApiSettings(redis_url=self.url, **self.settings),
            redis=client,
            keys=keys,
            store=self.store,
            rollout=RolloutService(client, rollout_settings(self.url)),
        )
        server = await start_http(create_app(ctx), "127.0.0.1", 0)
        self.base = f"http://127.0.0.1:{server.port}"
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop()
            await client.aclose()


# --- the model store ----------------------------------------------------------------------


def published_store(s3: StoreSettings, directory: Path) -> ModelStore:
    """A fresh bucket of the session's S3 store with two models: steel-yolo 1.0.0 and 1.1.0
    (the later one is the latest), and tiny-yolo 0.1.0."""
    keys = generate_keypair(directory / "keys")
    settings = s3.model_copy(
        update={
            "bucket": f"api-{uuid.uuid4().hex[:12]}",
            "signing_key": keys.private_key,
            "trusted_keys": [keys.public_key],
        }
    )
    store = ModelStore.from_settings(settings)
    store.ensure_bucket()
    for i, (name, version) in enumerate(
        [("steel-yolo", "1.0.0"), ("steel-yolo", "1.1.0"), ("tiny-yolo", "0.1.0")]
    ):
        onnx = directory / f"{name}-{version}.onnx"
        onnx.write_bytes(os.urandom(2048 + i))
        manifest = manifest_for_file(
            onnx,
            name=name,
            version=version,
            created_at=datetime(2024, 5, 1 + i, 12, 0, tzinfo=UTC),
            format="onnx-fp32",
            input={"width": 256, "height": 256, "channels": 1, "letterbox": True},
            class_names=list(CLASSES),
            thresholds={"score": 0.25, "iou": 0.45},
            metrics={"map50": 0.9},
            lineage={"stage": "distill", "run_id": "run-1"},
        )
        store.publish(onnx, manifest)
    return store
