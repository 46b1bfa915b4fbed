"""Model updates through the real fleet: Fleet.Heartbeat, the rollout service, the S3 store.

A good version is swapped in between two frames (every frame inspected once, by one
model or the other, in order); a tampered model, a bad signature, a model that does not
load and one that fails its smoke test are each refused with the running model kept, and
the heartbeat carries the reason to the fleet. A restart runs the last model from the
disk cache with no store to reach.
"""

from __future__ import annotations

import asyncio

import pytest
from agent_harness import (
    agent_running,
    fleet_running,
    folder_camera,
    frame_indexes,
    free_port,
    settings_of,
    station_config,
    stored_events,
    wait_until,
    write_frames,
)
from agent_models import (
    MODEL_NAME,
    publish_badly_signed,
    publish_failing_smoke_test,
    publish_good,
    publish_tampered,
    publish_unloadable,
)
from aggregator_harness import run_async, running

from slimspect.v1 import fleet_pb2

pytestmark = [pytest.mark.s3, pytest.mark.timeout(600)]

REFUSED = [
    ("2.0.1", "tampered model"),
    ("2.0.2", "not trusted"),
    ("2.0.3", "does not load in ONNX Runtime"),
    ("2.0.4", "failed the smoke test"),
]


def test_updates_swap_good_versions_and_refuse_bad_ones(
    tmp_path, ns, client, model_store, store_settings, tiny_model
):
    publish_good(model_store, tiny_model, "1.0.0")
    publish_good(model_store, tiny_model, "2.0.0")
    publish_tampered(model_store, tiny_model, "2.0.1")
    publish_badly_signed(model_store, tiny_model, "2.0.2", tmp_path / "other-keys")
    publish_unloadable(model_store, tiny_model, "2.0.3")
    publish_failing_smoke_test(model_store, tiny_model, "2.0.4")
    station = ns.station(0)
    scans = tmp_path / "scans"
    scans.mkdir()
    written = 0

    async def feed(stop: asyncio.Event) -> None:
        """A frame every 0.1 s until ``stop``: the camera is busy while the swap happens."""
        nonlocal written
        while not stop.is_set():
            write_frames(scans, range(written, written + 1), seed=written)
            written += 1
            await asyncio.sleep(0.1)

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
                cameras=[folder_camera(scans)],
            )
            async with agent_running(settings_of(data)) as agent:
                stop_feeding = asyncio.Event()
                feeder = asyncio.create_task(feed(stop_feeding))
                await wait_until(
                    lambda: len(stored_events(client, station)) >= 5,
                    timeout=120,
                    what="frames on 1.0.0",
                )
                await service.start(MODEL_NAME, "2.0.0", channel="stable", actor="test")
                await wait_until(
                    lambda: agent.slot.active.version == "2.0.0",
                    timeout=120,
                    what="the swap to 2.0.0",
                )
                swapped_at = written
                await wait_until(
                    lambda: written >= swapped_at + 5, timeout=60, what="frames after it"
                )
                stop_feeding.set()
                await feeder
                assert agent.slot.previous.version == "1.0.0"  # kept for rollback
                await wait_until(
                    lambda: len(stored_events(client, station)) >= written,
                    timeout=120,
                    what="all frames",
                )
                before_refusals = written
                refusals = {}
                for version, _ in REFUSED:
                    await service.start(MODEL_NAME, version, channel="stable", actor="test")
                    result = await wait_until(
                        lambda v=version: _last_update_for(agent, v),
                        timeout=120,
                        what=f"{version} refused",
                    )
                    assert agent.slot.active.version == "2.0.0"  # the running model stays
                    reported = await wait_until(
                        lambda v=version: _reported(service, station, v),
                        timeout=60,
                        what=f"{version} reported",
                    )
                    refusals[version] = (result, reported)
                write_frames(scans, range(written, written + 3), seed=99)  # still inspecting
                await wait_until(
                    lambda: len(stored_events(client, station)) >= written + 3,
                    timeout=120,
                    what="later frames",
                )
            # A restart with no store to reach runs 2.0.0 from the disk cache.
            offline = dict(data, store=dict(data["store"], endpoint=f"127.0.0.1:{free_port()}"))
            async with agent_running(settings_of(offline)) as again:
                running_after_restart = (again.slot.active.version, again.slot.previous.version)
        return refusals, running_after_restart, before_refusals

    refusals, running_after_restart, frames = run_async(scenario())
    events = stored_events(client, station)
    assert sorted(frame_indexes(events)) == list(range(frames + 3))  # no frame lost or doubled
    by_frame = sorted(events, key=lambda e: e["image_width"])
    versions = [e["model_version"] for e in by_frame[:frames]]
    switch = versions.index("2.0.0")  # in frame order: 1.0.0 up to the swap, then 2.0.0
    assert 0 < switch and versions == ["1.0.0"] * switch + ["2.0.0"] * (frames - switch)
    assert {e["model_version"] for e in by_frame[frames:]} == {"2.0.0"}
    for version, words in REFUSED:
        result, reported = refusals[version]
        assert result.status == fleet_pb2.UPDATE_FAILED and words in result.reason, result.reason
        assert reported.status == "UPDATE_FAILED" and words in reported.reason
    assert running_after_restart == ("2.0.0", "1.0.0")


def _last_update_for(agent, version: str):
    update = agent.updater.last_update
    return update if update is not None and update.version == version else None


def _reported(service, station: str, version: str):
    async def check():
        state = await service.station(station)
        update = state.last_update
        return update if update is not None and update.version == version else None

    return check()
