"""The model slot (swap between frames, automatic rollback), health, crops and event ids."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import cv2
import numpy as np

from edge_agent.inspector import uuid7
from edge_agent.metrics import AgentMetrics
from edge_agent.model_cache import ModelCache, ModelRef
from edge_agent.model_slot import ModelSlot
from edge_agent.runtime import jpeg_crops
from edge_agent.settings import CropSettings, RuntimeSettings
from edge_agent.spool import SpoolStats
from edge_agent.status import AgentStatus, CameraReport, RateMeter
from edge_agent.updater import ModelUpdater
from slimspect.v1 import fleet_pb2


def detector(key: str):
    """A stand-in with the one attribute the slot reads (it never runs a model)."""
    return SimpleNamespace(manifest=SimpleNamespace(key=key))


def test_swap_keeps_the_previous_model_and_rolls_back_after_repeated_errors():
    slot = ModelSlot(rollback_after_errors=3)
    v1, v2 = detector("m/1"), detector("m/2")
    slot.swap(v1, probation=False)
    assert slot.ready.is_set() and slot.active is v1 and slot.previous is None
    assert slot.swap(v2) is v1
    assert (slot.active, slot.previous) == (v2, v1)
    seen = []
    slot.listeners.append(seen.append)
    assert slot.frame_failed(v2, RuntimeError("boom")) is None
    slot.frame_ok(v2)  # a good frame resets the count
    assert slot.frame_failed(v2, RuntimeError("boom")) is None
    assert slot.frame_failed(v2, RuntimeError("boom")) is None
    rollback = slot.frame_failed(v2, RuntimeError("boom"))
    assert rollback is not None and seen == [rollback]
    assert (slot.active, slot.previous) == (v1, v2)
    assert "3 frames in a row failed on m/2: boom" in rollback.reason
    # The restored model is not on probation: its errors never swap again.
    for _ in range(5):
        assert slot.frame_failed(v1, RuntimeError("x")) is None
    assert slot.active is v1


def test_a_model_restored_at_start_is_never_rolled_back():
    slot = ModelSlot(rollback_after_errors=1)
    only = detector("m/1")
    slot.swap(only, probation=False)
    assert slot.frame_failed(only, RuntimeError("x")) is None and slot.active is only


MODEL = ModelRef("m", "1")


def status(*states, model=MODEL, uplink=True, dropped=0, pressure=False):
    cams = tuple(
        CameraReport(f"c{i}", s, 10.0, "err" if s != fleet_pb2.CAMERA_RUNNING else "")
        for i, s in enumerate(states)
    )
    return AgentStatus(
        station="st",
        agent_version="0.1.0",
        model=model,
        cameras=cams,
        spool=SpoolStats(3, 300, dropped, dropped),
        spool_pressure=pressure,
        uplink_connected=uplink,
    )


def test_health_follows_cameras_model_uplink_and_spool():
    running, retrying, failed, ended = (
        fleet_pb2.CAMERA_RUNNING,
        fleet_pb2.CAMERA_RETRYING,
        fleet_pb2.CAMERA_FAILED,
        fleet_pb2.CAMERA_ENDED,
    )
    assert status(running, ended).health == fleet_pb2.HEALTHY
    assert status(running, failed).health == fleet_pb2.DEGRADED
    assert status(running, uplink=False).health == fleet_pb2.DEGRADED
    assert status(running, dropped=2).health == fleet_pb2.DEGRADED
    assert status(running, pressure=True).health == fleet_pb2.DEGRADED
    assert status(retrying, failed).health == fleet_pb2.UNHEALTHY
    assert status(running, model=None).health == fleet_pb2.UNHEALTHY
    request = status(running, failed, dropped=2).heartbeat(sent_at_ms=123)
    assert request.model_name == "m" and request.model_version == "1"
    assert request.spool_depth == 3 and request.events_dropped == 2 and request.fps == 20.0
    assert [c.state for c in request.cameras] == [running, failed]
    assert not request.HasField("last_update") and request.sent_at_ms == 123


def test_healthz_says_why_the_uplink_and_the_heartbeat_fail():
    tls = "failed to connect to all addresses; ... CERTIFICATE_VERIFY_FAILED"
    down = AgentStatus(
        station="st",
        agent_version="0.1.0",
        model=MODEL,
        cameras=(CameraReport("c0", fleet_pb2.CAMERA_RUNNING, 5.0),),
        spool=SpoolStats(3, 300, 0, 0),
        spool_pressure=False,
        uplink_connected=False,
        uplink_error=f"no connection to agg:50051 within 5 s: {tls}",
        fleet_error=f"UNAVAILABLE: {tls}",
    )
    report = down.to_dict()
    assert report["health"] == "DEGRADED"
    assert report["problems"] == [
        f"uplink to the aggregator is down: no connection to agg:50051 within 5 s: {tls}"
    ]
    assert report["uplink_error"].endswith(tls) and report["fleet_error"].endswith(tls)
    assert status(fleet_pb2.CAMERA_RUNNING, uplink=False).problems == (
        "uplink to the aggregator is down",
    )


def test_rate_meter_counts_over_its_window():
    meter = RateMeter(window_s=2.0)
    for t in range(10):
        meter.tick(100.0 + t * 0.2)  # 5 per second
    assert abs(meter.rate(102.0) - 5.0) < 0.6
    assert meter.rate(110.0) == 0.0


def test_crops_are_jpegs_of_the_best_detections_within_the_size_limits():
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    det = np.array(
        [[10, 20, 110, 80, 0.9, 0], [0, 0, 300, 200, 0.8, 1], [5, 5, 6, 6, 0.3, 0]], np.float32
    )
    crops = jpeg_crops(image, det, CropSettings(max_per_event=2, max_side=64))
    assert len(crops) == 3 and crops[2] == b""
    first = cv2.imdecode(np.frombuffer(crops[0], np.uint8), cv2.IMREAD_COLOR)
    assert max(first.shape[:2]) == 64  # 100x60 box + 10 % margin, scaled to max_side
    assert crops[1].startswith(b"\xff\xd8\xff")
    assert jpeg_crops(image, det, CropSettings(enabled=False)) == [b"", b"", b""]
    assert jpeg_crops(image, det[:1], CropSettings(max_bytes=100)) == [b""]  # never over the limit


def test_event_ids_are_uuid7_ordered_by_time():
    a, b = uuid7(1_750_000_000_000), uuid7(1_750_000_000_001)
    assert uuid.UUID(a).version == 7 and uuid.UUID(a).variant == uuid.RFC_4122
    assert a < b and a != uuid7(1_750_000_000_000)


def test_a_rollback_is_reported_remembered_and_not_retried_at_once(tmp_path):
    def named(version: str):
        return SimpleNamespace(
            name="m", version=version, manifest=SimpleNamespace(key=f"m/{version}")
        )

    slot = ModelSlot(rollback_after_errors=1)
    cache = ModelCache(tmp_path / "models", [])
    updater = ModelUpdater(
        cache=cache,
        store=None,
        slot=slot,
        runtime=RuntimeSettings(),
        metrics=AgentMetrics(),
        retry_s=300,
    )
    v1, v2 = named("1"), named("2")
    slot.swap(v1, probation=False)
    slot.swap(v2)
    slot.frame_failed(v2, RuntimeError("bad output"))
    assert slot.active is v1
    update = updater.last_update
    assert update.version == "2" and update.status == fleet_pb2.UPDATE_ROLLED_BACK
    assert "bad output" in update.reason and updater.finished.is_set()
    assert cache.read_current() == (ModelRef("m", "1"), ModelRef("m", "2"))
    assert not updater.wants(ModelRef("m", "2"))  # not again before update_retry_s
    assert not updater.wants(ModelRef("m", "1"))  # running already
    assert updater.wants(ModelRef("m", "3"))


def test_metrics_totals_sum_cameras_and_split_acks_by_result():
    metrics = AgentMetrics()
    assert metrics.totals() == {"frames": 0, "events_sent": 0}
    metrics.frames.labels("top").inc(3)
    metrics.frames.labels("side").inc(2)
    metrics.events_sent.inc(7)
    metrics.events_acked.labels("accepted").inc(5)
    metrics.events_acked.labels("duplicate").inc(1)
    assert metrics.totals() == {
        "frames": 5, "events_sent": 7, "events_accepted": 5, "events_duplicate": 1,
    }  # fmt: skip
