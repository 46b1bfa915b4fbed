"""Camera sources (video file, image folder, synthetic) and the camera runner's states.

Fakes only for what a camera reads: a real video written with cv2.VideoWriter and real
image files in a folder.
"""

from __future__ import annotations

import asyncio
import os
import time

import cv2
import numpy as np
import pytest

from edge_agent.cameras import (
    Camera,
    CaptureSource,
    FolderSource,
    SourceError,
    SyntheticSource,
    make_source,
)
from edge_agent.settings import FolderCamera, SyntheticCamera, VideoCamera
from slimspect.v1 import fleet_pb2


def write_video(path, frames: int, size=(48, 32)) -> None:
    """An MJPG AVI whose frame i is filled with grey level 10 * i (readable back by level)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 10 * i, np.uint8))
    writer.release()


def level(image) -> int:
    return round(float(image.mean()) / 10)


def write_image(folder, name: str, value: int):
    path = folder / name
    cv2.imwrite(str(path), np.full((8, 8), value, np.uint8))
    return path


def test_video_file_plays_once_and_resumes_after_a_position(tmp_path):
    path = tmp_path / "v.avi"
    write_video(path, 6)
    source = CaptureSource(str(path), is_file=True)
    source.open(None)
    grabs = []
    while (grab := source.read()) is not None:
        grabs.append(grab)
    assert source.ended
    assert [level(g.image) for g in grabs] == [0, 1, 2, 3, 4, 5]
    assert [g.position for g in grabs] == ["0", "1", "2", "3", "4", "5"]
    source.close()
    resumed = CaptureSource(str(path), is_file=True)
    resumed.open("3")  # the position committed with frame 3
    assert [level(resumed.read().image), level(resumed.read().image)] == [4, 5]
    assert resumed.read() is None and resumed.ended


def test_looping_video_starts_over_and_a_vanished_file_is_an_error(tmp_path):
    path = tmp_path / "v.avi"
    write_video(path, 3)
    source = CaptureSource(str(path), is_file=True, loop=True)
    source.open(None)
    assert [level(source.read().image) for _ in range(5)] == [0, 1, 2, 0, 1]
    os.unlink(path)
    source.read()  # frame 2 is still in the open file
    with pytest.raises(SourceError, match="does not exist"):
        source.read()


def test_folder_takes_settled_files_in_arrival_order_and_resumes(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(["b.png", "a.png", "c.png"]):
        write_image(folder, name, 10 * i)
        time.sleep(0.02)  # distinct change times: arrival order b, a, c
    (folder / "notes.txt").write_text("not an image")
    source = FolderSource(folder, settle_s=0.05)
    source.open(None)
    time.sleep(0.06)
    names = [source.read().position.split(":")[1] for _ in range(3)]
    assert names == ["b.png", "a.png", "c.png"]
    assert source.read() is None and not source.ended  # a folder never ends
    write_image(folder, "0-late.png", 99)
    patient = FolderSource(folder, settle_s=30)
    patient.open(f"{os.stat(folder / 'c.png').st_ctime_ns}:c.png")  # after the first three
    assert patient.read() is None  # written just now: not settled yet
    time.sleep(0.06)
    late = source.read()
    assert late.position.endswith(":0-late.png") and int(late.image.mean()) == 99
    # A new source resuming after "a.png" takes c.png and 0-late.png only.
    position_of_a = f"{os.stat(folder / 'a.png').st_ctime_ns}:a.png"
    again = FolderSource(folder, settle_s=0.05)
    again.open(position_of_a)
    assert [again.read().position.split(":")[1] for _ in range(2)] == ["c.png", "0-late.png"]


def test_folder_skips_files_that_do_not_decode(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    time.sleep(0.01)
    write_image(tmp_path, "good.png", 7)
    source = FolderSource(tmp_path, settle_s=0.0)
    source.open(None)
    assert source.read().position.endswith(":good.png")


def test_synthetic_source_is_finite_when_asked():
    source = make_source(SyntheticCamera(id="s", type="synthetic", width=32, height=24, frames=3))
    assert isinstance(source, SyntheticSource) and source.live
    images = [source.read() for _ in range(4)]
    assert [g is None for g in images] == [False, False, False, True]
    assert images[0].image.shape == (24, 32) and source.ended


async def collect(camera: Camera, queue: asyncio.Queue, count: int, timeout: float = 10.0):
    """Runs the camera until ``count`` frames came (marking each done) or it stops."""
    task = asyncio.create_task(camera.run())
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline and not task.done():
        try:
            frame = await asyncio.wait_for(queue.get(), 0.1)
        except TimeoutError:
            continue
        frames.append(frame)
        frame.done()
    return task, frames


def test_camera_plays_a_file_to_the_end_at_its_fps(tmp_path):
    path = tmp_path / "v.avi"
    write_video(path, 5)
    settings = VideoCamera(id="v", type="video", path=path, fps=50)

    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        camera = Camera(settings, make_source(settings), queue=queue)
        started = time.monotonic()
        task, frames = await collect(camera, queue, 5)
        await asyncio.wait_for(task, 5)
        return camera, frames, time.monotonic() - started

    camera, frames, seconds = asyncio.run(scenario())
    assert [f.position for f in frames] == ["0", "1", "2", "3", "4"]
    assert camera.state == fleet_pb2.CAMERA_ENDED
    assert seconds >= 4 / 50  # paced, not a burst


def test_a_failing_camera_retries_with_backoff_then_fails_without_raising(tmp_path):
    settings = FolderCamera(
        id="gone",
        type="folder",
        path=tmp_path / "nope",
        retry_initial_s=0.02,
        retry_max_s=0.05,
        max_retries=3,
    )

    async def scenario():
        camera = Camera(settings, make_source(settings), queue=asyncio.Queue())
        task = asyncio.create_task(camera.run())
        states = set()
        while not task.done():
            states.add(camera.state)
            await asyncio.sleep(0.005)
        await task  # returns: a dead camera never raises into the agent
        return camera, states

    camera, states = asyncio.run(scenario())
    assert fleet_pb2.CAMERA_RETRYING in states
    assert camera.state == fleet_pb2.CAMERA_FAILED
    assert "does not exist" in camera.error


def test_a_camera_recovers_when_its_source_comes_back(tmp_path):
    folder = tmp_path / "later"
    settings = FolderCamera(
        id="f",
        type="folder",
        path=folder,
        retry_initial_s=0.05,
        retry_max_s=0.1,
        settle_s=0.01,
        poll_s=0.02,
    )

    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        camera = Camera(settings, make_source(settings), queue=queue)
        task = asyncio.create_task(camera.run())
        while camera.state != fleet_pb2.CAMERA_RETRYING:
            await asyncio.sleep(0.01)
        folder.mkdir()
        write_image(folder, "x.png", 5)
        frame = await asyncio.wait_for(queue.get(), 10)
        state = camera.state
        task.cancel()
        return frame, state, camera

    frame, state, camera = asyncio.run(scenario())
    assert frame.camera == "f" and state == fleet_pb2.CAMERA_RUNNING and camera.error == ""


def test_a_live_camera_skips_frames_when_inspection_falls_behind():
    settings = SyntheticCamera(id="s", type="synthetic", width=16, height=16, frames=20, fps=500)
    skipped = []

    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        camera = Camera(settings, make_source(settings), queue=queue, on_skip=skipped.append)
        await asyncio.wait_for(camera.run(), 10)  # nobody takes the frames
        return queue.qsize()

    queued = asyncio.run(scenario())
    assert queued == 2  # QUEUED_PER_CAMERA
    assert len(skipped) == 18 and set(skipped) == {"s"}
