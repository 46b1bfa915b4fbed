"""The agent end to end on real parts: cameras (a video file and an image folder), the
ONNX model from the S3 store, the spool, the real aggregator and Redis.

Every frame has its own width, so the events in Redis say which frames arrived and how
often: "exactly once" is checked frame by frame.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.error
import urllib.request

import pytest
import redis.asyncio as aioredis
from agent_harness import (
    agent_running,
    aggregator_for_station,
    folder_camera,
    frame_indexes,
    free_port,
    settings_of,
    station_config,
    stored_events,
    wait_until,
    write_frames,
    write_video,
)
from agent_models import publish_good
from aggregator_harness import REDIS_URL, run_async, running
from test_aggregator_ops import pki  # noqa: F401 (the aggregator tests' CA and certificates)

from services.aggregator import schema
from services.aggregator.auth import RedisTokenStore
from slimspect.v1 import fleet_pb2

pytestmark = [pytest.mark.s3, pytest.mark.timeout(600)]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def new_token(ns, station: str) -> str:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return await RedisTokenStore(client, key=ns.token_key).add(station)
    finally:
        await client.aclose()


def test_video_and_folder_cameras_reach_redis_exactly_once(
    tmp_path, ns, client, model_store, store_settings, tiny_model
):
    publish_good(model_store, tiny_model, "1.0.0")
    station = ns.station(0)
    write_frames(tmp_path / "scans", range(12))
    write_video(tmp_path / "line.avi", 8, width=80)
    cameras = [
        folder_camera(tmp_path / "scans"),
        {"id": "line", "type": "video", "path": str(tmp_path / "line.avi"), "fps": 25},
    ]

    async def scenario():
        async with (
            aggregator_for_station(
                ns,
                tmp_path,
                station,
                store_settings,
                cameras=cameras,
            ) as (_agg, data),
            agent_running(settings_of(data)) as agent,
        ):
            await wait_until(
                lambda: len(stored_events(client, station)) >= 20, timeout=60, what="20 events"
            )
            await wait_until(
                lambda: agent.spool.stats().depth == 0, timeout=20, what="an empty spool"
            )
            health = await asyncio.to_thread(
                http_get, f"http://127.0.0.1:{agent.http.port}/healthz"
            )
            metrics = await asyncio.to_thread(
                http_get, f"http://127.0.0.1:{agent.http.port}/metrics"
            )
            states = {c.camera: c.state for c in agent.status().cameras}
        return health, metrics, states

    health, metrics, states = run_async(scenario())
    events = stored_events(client, station)
    assert sorted(frame_indexes(events, "scans")) == list(range(12))
    line = [e for e in events if e["camera"] == "line"]
    assert len(line) == 8 and {e["image_width"] for e in line} == {80}
    assert len(events) == 20
    assert {e["model_name"] + "/" + e["model_version"] for e in events} == {"tiny-yolo/1.0.0"}
    assert all(e["frame_count"] == 1 and e["inference_ms"] > 0 for e in events)
    with_crops = [e for e in events if any(d["crop"] for d in e["detections"])]
    assert with_crops, "defect events carry JPEG crops"
    event = with_crops[0]
    crop = client.get(schema.crop_key(station, event["event_id"], 0))
    assert crop is not None and crop.startswith(b"\xff\xd8\xff")
    assert states == {"scans": fleet_pb2.CAMERA_RUNNING, "line": fleet_pb2.CAMERA_ENDED}
    code, body = health
    assert code == 200 and json.loads(body)["health"] in ("HEALTHY", "DEGRADED")
    code, text = metrics
    assert code == 200
    assert 'slimspect_agent_frames_total{camera="scans"} 12.0' in text
    assert 'slimspect_agent_events_acked_total{result="accepted"} 20.0' in text
    assert 'slimspect_agent_model{name="tiny-yolo",version="1.0.0"} 1.0' in text
    assert 'slimspect_agent_camera_state{camera="line",state="ENDED"} 1.0' in text
    assert "slimspect_agent_inference_seconds_bucket" in text
    assert "slimspect_agent_spool_events 0.0" in text  # read after the spool emptied
    sent = re.search(r"^slimspect_agent_events_sent_total (\S+)$", text, re.MULTILINE)
    assert sent and float(sent.group(1)) >= 20  # 20, or more after a resend
    assert 'slimspect_agent_events_dropped_total{unit="events"} 0.0' in text
    assert 'slimspect_agent_camera_state{camera="scans",state="RUNNING"} 1.0' in text


def test_a_camera_that_dies_mid_run_stops_neither_the_agent_nor_the_others(
    tmp_path, ns, client, model_store, store_settings, tiny_model
):
    publish_good(model_store, tiny_model, "1.0.0")
    station = ns.station(0)
    video = tmp_path / "loop.avi"
    write_video(video, 4, width=100)
    write_frames(tmp_path / "scans", range(3))
    cameras = [
        folder_camera(tmp_path / "scans"),
        {
            "id": "dying",
            "type": "video",
            "path": str(video),
            "loop": True,
            "fps": 20,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.1,
            "max_retries": 2,
        },
    ]

    async def scenario():
        async with (
            aggregator_for_station(
                ns,
                tmp_path,
                station,
                store_settings,
                cameras=cameras,
            ) as (_agg, data),
            agent_running(settings_of(data)) as agent,
        ):
            dying = next(c for c in agent.cameras if c.id == "dying")
            await wait_until(
                lambda: sum(e["camera"] == "dying" for e in stored_events(client, station)) >= 3,
                timeout=60,
                what="frames of the looping video",
            )
            os.unlink(video)  # the camera dies mid-run
            await wait_until(
                lambda: dying.state == fleet_pb2.CAMERA_FAILED,
                timeout=30,
                what="the camera to fail",
            )
            write_frames(tmp_path / "scans", range(3, 8))  # the other camera goes on
            await wait_until(
                lambda: len(frame_indexes(stored_events(client, station), "scans")) >= 8,
                timeout=60,
                what="the folder's frames after the failure",
            )
            status = agent.status()
            health = await asyncio.to_thread(
                http_get, f"http://127.0.0.1:{agent.http.port}/healthz"
            )
        return status, health

    status, (code, body) = run_async(scenario())
    assert sorted(frame_indexes(stored_events(client, station), "scans")) == list(range(8))
    assert status.health == fleet_pb2.DEGRADED
    failed = next(c for c in status.cameras if c.camera == "dying")
    assert failed.state == fleet_pb2.CAMERA_FAILED and "does not exist" in failed.error
    assert code == 200
    report = json.loads(body)
    assert report["health"] == "DEGRADED"
    assert any("dying" in p for p in report["problems"])


def test_aggregator_down_at_start_and_mid_stream_every_event_arrives_once(
    tmp_path, ns, client, model_store, store_settings, tiny_model
):
    """The test feeds the camera in three rounds, so each phase happens whatever the speed:
    frames 0-9 while no aggregator exists, 10-23 while it runs (stopped abruptly while they
    flow), 24-35 while it is down again; then it comes back."""
    publish_good(model_store, tiny_model, "1.0.0")
    station = ns.station(0)
    scans = tmp_path / "scans"
    port = free_port()  # nothing listens there yet
    frames = 36
    scans.mkdir()

    async def scenario():
        token = await new_token(ns, station)
        data = station_config(
            tmp_path,
            station=station,
            token=token,
            uplink_port=port,
            store=store_settings,
            cameras=[folder_camera(scans, fps=12)],
        )
        async with agent_running(settings_of(data)) as agent:
            write_frames(scans, range(10))
            await wait_until(
                lambda: agent.spool.stats().depth == 10, timeout=120, what="10 spooled"
            )
            assert not agent.uplink.connected and not stored_events(client, station)
            async with running(ns, port=port) as agg:
                await wait_until(
                    lambda: len(stored_events(client, station)) >= 10,
                    timeout=120,
                    what="the backlog",
                )
                write_frames(scans, range(10, 24), seed=1)
                await wait_until(
                    lambda: len(stored_events(client, station)) >= 13, timeout=120, what="13 stored"
                )
                await agg.aggregator.server.stop(0)  # abruptly, batches in flight or not
            write_frames(scans, range(24, frames), seed=2)
            await wait_until(
                lambda: agent.spool.stats().depth >= frames - 24,
                timeout=120,
                what="frames spooled while the aggregator is down",
            )
            assert len(stored_events(client, station)) < frames
            async with running(ns, port=port):
                await wait_until(
                    lambda: (
                        len(stored_events(client, station)) >= frames
                        and agent.spool.stats().depth == 0
                    ),
                    timeout=120,
                    what="every frame stored",
                )
                await asyncio.sleep(0.3)  # a late duplicate write would show up now

    run_async(scenario())
    events = stored_events(client, station)
    assert sorted(frame_indexes(events)) == list(range(frames))  # each frame once
    assert len({e["event_id"] for e in events}) == frames
    counted = sum(int(client.hget(k, schema.FRAMES) or 0) for k in _counter_keys(client, station))
    assert counted == frames  # the hourly frame counters too


def _counter_keys(client, station: str) -> list[bytes]:
    return list(client.scan_iter(match=f"cnt:{schema.tag(station)}:*", count=100))


def test_the_uplink_speaks_mutual_tls_with_its_station_token(
    tmp_path,
    ns,
    client,
    model_store,
    store_settings,
    tiny_model,
    pki,  # noqa: F811 (fixture)
):
    publish_good(model_store, tiny_model, "1.0.0")
    station = ns.station(0)
    write_frames(tmp_path / "scans", range(4))
    tls = {"tls_cert": pki["server.pem"], "tls_key": pki["server.key"], "tls_ca": pki["ca.pem"]}

    async def scenario():
        async with running(ns, **tls) as agg:
            token = await agg.token(station)
            data = station_config(
                tmp_path,
                station=station,
                token=token,
                uplink_port=agg.port,
                store=store_settings,
                cameras=[folder_camera(tmp_path / "scans")],
            )
            data["uplink"]["tls"] = {
                "ca": str(pki["ca.pem"]),
                "cert": str(pki["client.pem"]),
                "key": str(pki["client.key"]),
            }
            async with agent_running(settings_of(data)):
                await wait_until(
                    lambda: len(stored_events(client, station)) >= 4, timeout=60, what="4 events"
                )

    run_async(scenario())
    assert sorted(frame_indexes(stored_events(client, station))) == [0, 1, 2, 3]
