"""Live cameras in the running agent: a network stream (a video served over HTTP on
loopback, read by OpenCV's FFmpeg backend) and a capture device that is not there
(index 7), next to an image folder. A stream whose server goes away and a missing device
are retried with backoff and reported in the heartbeat (read back from the real fleet
server), /healthz and /metrics, while the folder camera goes on delivering every frame.

RTSP is not tested here: it needs an RTSP server (none is installed on this machine);
OpenCV opens rtsp:// through the same FFmpeg path as http://.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from agent_harness import (
    FileServer,
    agent_running,
    fleet_running,
    folder_camera,
    frame_indexes,
    settings_of,
    station_config,
    stored_events,
    wait_until,
    write_frames,
    write_video,
)
from agent_models import publish_good
from aggregator_harness import run_async, running
from test_agent_delivery import http_get

from services.rollout.errors import StationNotFound
from slimspect.v1 import fleet_pb2

pytestmark = [pytest.mark.s3, pytest.mark.timeout(600)]

RETRY = {"retry_initial_s": 0.1, "retry_max_s": 1.0}


def test_a_stream_that_goes_away_and_a_missing_device_are_retried_and_reported(
    tmp_path, ns, client, model_store, store_settings, tiny_model, absent_video_index
):
    n = absent_video_index
    publish_good(model_store, tiny_model, "1.0.0")
    station = ns.station(0)
    served = tmp_path / "served"
    served.mkdir()
    write_video(served / "clip.avi", 30, width=90)  # the stream's events are 90 px wide
    server = FileServer(served).start()
    url = server.url("clip.avi")
    scans = tmp_path / "scans"
    write_frames(scans, range(5))
    cameras = [
        {"id": "http", "type": "url", "url": url, "fps": 20, "read_timeout_s": 2, **RETRY},
        {"id": "dev7", "type": "device", "index": n, **RETRY},
        folder_camera(scans),
    ]

    def count(camera: str) -> int:
        return sum(e["camera"] == camera for e in stored_events(client, station))

    async def scenario():
        async with running(ns) as agg, fleet_running(ns) as (fleet, service):
            token = await agg.token(station)
            data = station_config(
                tmp_path,
                station=station,
                token=token,
                uplink_port=agg.port,
                fleet_port=fleet.port,
                store=store_settings,
                cameras=cameras,
            )
            async with agent_running(settings_of(data)) as agent:
                http = next(c for c in agent.cameras if c.id == "http")
                await wait_until(
                    lambda: count("http") >= 10 and count("scans") >= 5,
                    timeout=120,
                    what="frames of the stream and of the folder",
                )
                device = await wait_until(
                    lambda: _fleet_camera(service, station, "dev7"),
                    timeout=60,
                    what="the missing device in a heartbeat",
                )
                server.stop()  # the stream's server goes away
                await wait_until(
                    lambda: http.error.startswith("cannot open"),
                    timeout=60,
                    what="the stream to be refused",
                )
                stream = await wait_until(
                    lambda: _fleet_camera(service, station, "http", "cannot open"),
                    timeout=60,
                    what="the lost stream in a heartbeat",
                )
                stream_events = count("http")
                write_frames(scans, range(5, 10), seed=1)  # the folder camera goes on
                await wait_until(
                    lambda: len(frame_indexes(stored_events(client, station), "scans")) >= 10,
                    timeout=120,
                    what="the folder's frames while the stream is down",
                )
                fleet_view = await service.station(station)
                health = await asyncio.to_thread(
                    http_get, f"http://127.0.0.1:{agent.http.port}/healthz"
                )
                metrics = await asyncio.to_thread(
                    http_get, f"http://127.0.0.1:{agent.http.port}/metrics"
                )
                tasks_alive = http.state == fleet_pb2.CAMERA_RETRYING
                server.start()  # back on the same port: the stream resumes
                await wait_until(
                    lambda: count("http") > stream_events + 3,
                    timeout=120,
                    what="the stream's frames after its server came back",
                )
        return device, stream, fleet_view, health, metrics, tasks_alive

    try:
        device, stream, fleet_view, (code, body), (_, text), alive = run_async(scenario())
    finally:
        server.stop()
    events = stored_events(client, station)
    assert sorted(frame_indexes(events, "scans")) == list(range(10))  # each once, none lost
    assert {e["image_width"] for e in events if e["camera"] == "http"} == {90}
    assert device.state == "CAMERA_RETRYING"
    assert device.error == f"cannot open capture device {n} (/dev/video{n})"
    assert stream.state == "CAMERA_RETRYING" and stream.error == f"cannot open {url}"
    assert fleet_view.health == "DEGRADED"
    assert {c.camera for c in fleet_view.cameras} == {"http", "dev7", "scans"}
    assert alive  # retrying, not given up (max_retries unset)
    assert code == 200
    report = json.loads(body)
    assert report["health"] == "DEGRADED"
    assert any(p.startswith("camera http CAMERA_RETRYING: cannot open") for p in report["problems"])
    assert any(p.startswith("camera dev7 CAMERA_RETRYING") for p in report["problems"])
    assert 'slimspect_agent_camera_state{camera="http",state="RETRYING"} 1.0' in text
    assert 'slimspect_agent_camera_state{camera="dev7",state="RETRYING"} 1.0' in text
    assert 'slimspect_agent_camera_state{camera="scans",state="RUNNING"} 1.0' in text


def _fleet_camera(service, station: str, camera: str, error: str = ""):
    """The camera as the fleet's last heartbeat from ``station`` has it, when retrying with an
    error starting with ``error``; else None."""

    async def check():
        try:
            state = await service.station(station)
        except StationNotFound:
            return None
        for c in state.cameras:
            if c.camera == camera and c.state == "CAMERA_RETRYING" and c.error.startswith(error):
                return c
        return None

    return check()
