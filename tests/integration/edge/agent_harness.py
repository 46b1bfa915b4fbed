"""Helpers of the agent tests: station settings, camera fakes, a running agent and fleet
server, and reading what reached Redis through the aggregator's schema.

Camera fakes are real files: images of distinct widths (``64 + i`` px for frame ``i``), so
the events in Redis tell exactly which frames arrived, and how often.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import inspect
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import redis
import redis.asyncio as aioredis
import yaml
from agent_models import MODEL_NAME
from aggregator_harness import REDIS_URL, Namespace, Running, running

from edge_agent.agent import Agent
from edge_agent.aio import wait_first
from edge_agent.settings import AgentSettings, load_settings
from services.aggregator import schema
from services.aggregator.auth import RedisTokenStore
from services.rollout.fleet import FleetServer, build_fleet_server
from services.rollout.service import RolloutService
from services.rollout.settings import RolloutSettings
from slimspect.settings import StoreSettings

BASE_WIDTH = 64


def free_port() -> int:
    """A loopback port nothing listens on (for an aggregator that is not there yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_frames(folder: Path, indexes: range, *, height: int = 48, seed: int = 0) -> None:
    """Frame ``i`` as ``frame-<i>.png``, ``64 + i`` px wide, written then renamed in."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in indexes:
        image = rng.integers(0, 256, (height, BASE_WIDTH + i), dtype=np.uint8)
        tmp = folder / f".frame-{i:04d}.png"
        cv2.imwrite(str(tmp), image)
        tmp.rename(folder / f"frame-{i:04d}.png")
        time.sleep(0.002)  # distinct change times, arrival order = index order


def write_video(path: Path, frames: int, *, width: int = 80, height: int = 60) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (width, height))
    assert writer.isOpened()
    rng = np.random.default_rng(1)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    writer.release()


class FileServer:
    """The files of ``folder`` over HTTP on loopback: a network camera for OpenCV's FFmpeg
    backend (``url`` camera). :meth:`stop` makes it go away (connections refused);
    :meth:`start` brings it back on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> FileServer:
        handler = functools.partial(_QuietHandler, directory=str(self.folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def station_config(
    tmp_path: Path,
    *,
    station: str,
    token: str,
    uplink_port: int,
    store: StoreSettings,
    cameras: list[dict[str, Any]],
    fleet_port: int | None = None,
    version: str | None = "1.0.0",
    **overrides: Any,
) -> dict[str, Any]:
    """A station's configuration as plain data (what station.yaml holds), fast for tests."""
    assert store.secret_key is not None
    data: dict[str, Any] = {
        "station": station,
        "state_dir": str(tmp_path / f"state-{station}"),
        "token": token,
        "uplink": {
            "endpoint": f"127.0.0.1:{uplink_port}",
            "batch_max_events": 8,
            "batch_max_delay_s": 0.05,
            "backoff_initial_s": 0.05,
            "backoff_max_s": 0.5,
            "connect_timeout_s": 1.0,
            "ack_timeout_s": 20.0,
            "drain_s": 2.0,
        },
        "store": {
            "endpoint": store.endpoint,
            "access_key": store.access_key,
            "secret_key": store.secret_key.get_secret_value(),
            "bucket": store.bucket,
            "secure": False,
            "region": None,
            "signing_key": None,
            "trusted_keys": [str(p) for p in store.trusted_keys],
        },
        "model": {"name": MODEL_NAME, "version": version} if version else {},
        "runtime": {"intra_op_threads": 1, "inter_op_threads": 1},
        "cameras": cameras,
        "metrics": {"host": "127.0.0.1", "port": 0},
        "log_level": "DEBUG",
    }
    if fleet_port is not None:
        data["fleet"] = {
            "endpoint": f"127.0.0.1:{fleet_port}",
            "heartbeat_interval_s": 0.5,
            "timeout_s": 2.0,
        }
    data.update(overrides)
    return data


def settings_of(data: dict[str, Any]) -> AgentSettings:
    return load_settings(None, **data)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def folder_camera(path: Path, camera: str = "scans", **fields: Any) -> dict[str, Any]:
    return {
        "id": camera,
        "type": "folder",
        "path": str(path),
        "poll_s": 0.05,
        "settle_s": 0.05,
        **fields,
    }


@asynccontextmanager
async def aggregator_for_station(
    ns: Namespace,
    tmp_path: Path,
    station: str,
    store: StoreSettings,
    **config: Any,
) -> AsyncIterator[tuple[Running, dict[str, Any]]]:
    """A running aggregator and the configuration (station_config) of ``station`` sending to
    it with its own token; ``config``: station_config's other fields (cameras, ...)."""
    async with running(ns) as agg:
        token = await agg.token(station)
        yield (
            agg,
            station_config(
                tmp_path, station=station, token=token, uplink_port=agg.port, store=store, **config
            ),
        )


@asynccontextmanager
async def agent_running(settings: AgentSettings) -> AsyncIterator[Agent]:
    """The agent in this process (on the shared loop), stopped gracefully afterwards."""
    agent = Agent(settings)
    task = asyncio.create_task(agent.run())
    await wait_first(agent.started.wait(), asyncio.shield(task), timeout=120)
    if task.done():
        task.result()  # raises the start-up error
    assert agent.started.is_set(), "the agent did not start within 120 s"
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 60)


@asynccontextmanager
async def fleet_running(
    ns: Namespace, **overrides: Any
) -> AsyncIterator[tuple[FleetServer, RolloutService]]:
    """The Fleet.Heartbeat server on a free port, in this namespace, sharing its tokens."""
    client = aioredis.Redis.from_url(REDIS_URL)
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "key_prefix": ns.prefix,
        "host": "127.0.0.1",
        "port": 0,
        "heartbeat_interval_s": 1,
        "sweep_interval_s": 0,
    }
    values.update(overrides)
    fleet, _ = build_fleet_server(
        RolloutSettings(**values), client, tokens=RedisTokenStore(client, key=ns.token_key)
    )
    await fleet.start()
    try:
        yield fleet, fleet.service
    finally:
        await fleet.stop(1)
        await client.aclose()


def stored_events(client: redis.Redis, station: str) -> list[dict[str, Any]]:
    """Every event of ``station`` in Redis, decoded, by capture time."""
    ids = client.zrange(schema.index_key(station), 0, -1)
    events = []
    for event_id in ids:
        raw = client.get(schema.event_key(station, event_id.decode()))
        if raw:
            events.append(schema.decode_event(raw))
    return sorted(events, key=lambda e: (e["captured_at_ms"], e["image_width"]))


def frame_indexes(events: list[dict[str, Any]], camera: str | None = None) -> list[int]:
    """The frame index of each event (from its width), in capture order."""
    return [
        e["image_width"] - BASE_WIDTH for e in events if camera is None or e["camera"] == camera
    ]


async def wait_until(
    check: Callable[[], Any], *, timeout: float, what: str, poll_s: float = 0.05
) -> Any:
    """Polls ``check()`` (on the loop, so servers keep serving) until it is truthy.

    ``check`` may return an awaitable (a coroutine), which is awaited for the value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(poll_s)
