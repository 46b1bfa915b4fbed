"""Camera sources (video file, image folder, synthetic) and the camera runner's states.

Fakes only for what a camera reads: a real video written with cv2.VideoWriter, real image
files in a folder, a real HTTP server on loopback for a network stream, and a capture
device index that does not exist here.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import itertools
import logging
import os
import threading
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
    redact_url,
)
from edge_agent.settings import (
    DeviceCamera,
    FolderCamera,
    SyntheticCamera,
    UrlCamera,
    VideoCamera,
)
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


# --- network streams and capture devices ----------------------------------------------------


class ClipServer:
    """Files of ``folder`` over HTTP on loopback (a camera's stream, as OpenCV's FFmpeg reads
    it). ``stall_after``: each response sends that many bytes, then goes silent (a camera
    that hangs without closing). :meth:`stop` makes the server go away: new connections are
    refused; :meth:`start` again brings it back on the same port."""

    def __init__(self, folder, *, stall_after: int | None = None) -> None:
        self.folder = folder
        self.stall_after = stall_after
        self.port = 0
        self.requests = 0
        self._released = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None

    def _handler(self):
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(outer.folder), **kwargs)

            def do_GET(self):
                outer.requests += 1
                if outer.stall_after is None:
                    return super().do_GET()
                data = (outer.folder / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "video/x-msvideo")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: outer.stall_after])
                self.wfile.flush()
                outer._released.wait(60)  # silent, the connection left open

            def log_message(self, *args):
                pass

        return Handler

    def start(self) -> ClipServer:
        self._released.clear()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._released.set()
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


def retry_records(caplog, camera: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage() == "camera retrying" and getattr(r, "camera", None) == camera
    ]


def assert_backoff(records, initial: float, maximum: float) -> None:
    """Attempts 1, 2, 3, ... each waiting in the upper half of its doubling ceiling, and the
    camera really waiting that long before the next attempt."""
    assert [r.attempt for r in records] == list(range(1, len(records) + 1))
    for r in records:
        ceiling = min(maximum, initial * 2 ** (r.attempt - 1))
        assert ceiling / 2 - 0.01 <= r.in_s <= ceiling + 0.01, (r.attempt, r.in_s)
    for before, after in itertools.pairwise(records):
        assert after.created - before.created >= before.in_s - 0.02


def test_a_url_camera_plays_an_http_stream_and_retries_with_backoff_when_it_goes(tmp_path, caplog):
    """OpenCV's FFmpeg backend reads the clip from a loopback HTTP server. A stream that ends
    is opened again; a server that went away is retried with a growing backoff, reported
    in the camera's state and error; the camera comes back with the server."""
    caplog.set_level(logging.INFO, logger="slimspect.agent.cameras")
    write_video(tmp_path / "clip.avi", 6)
    skipped: list[str] = []
    server = ClipServer(tmp_path).start()
    settings = UrlCamera(
        id="http",
        type="url",
        url=server.url("clip.avi"),
        fps=30,
        retry_initial_s=0.05,
        retry_max_s=0.4,
        open_timeout_s=2,
        read_timeout_s=2,
    )

    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        camera = Camera(settings, make_source(settings), queue=queue, on_skip=skipped.append)
        task, frames = await collect(camera, queue, 8)  # the clip, then again from its start
        skipped_while_collecting = len(skipped)
        later: list[float] = []

        async def drain():  # frames keep coming until the server goes: take them all
            while True:
                frame = await queue.get()
                later.append(time.time())
                frame.done()

        drainer = asyncio.create_task(drain())
        server.stop()
        gone_at = time.time()
        while len([r for r in retry_records(caplog, "http") if r.created > gone_at]) < 5:
            assert not task.done()
            await asyncio.sleep(0.02)
        state, error = camera.state, camera.error
        back_at = time.time()
        server.start()  # back, on the same port
        deadline = time.monotonic() + 20
        while not (later and later[-1] > back_at) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        back = (camera.state, camera.error, bool(later) and later[-1] > back_at)
        task.cancel()
        drainer.cancel()
        return frames, skipped_while_collecting, back_at, state, error, back

    try:
        frames, skips, back_at, state, error, back = asyncio.run(scenario())
    finally:
        server.stop()
    levels = [level(f.image) for f in frames]
    if not skips:
        assert levels == [0, 1, 2, 3, 4, 5, 0, 1]
    else:  # a very slow machine: a live stream skips frames rather than fall behind
        assert levels[0] == 0 and any(b < a for a, b in itertools.pairwise(levels))
    assert {f.position for f in frames} == {None}  # a stream has no resume point
    assert server.requests >= 3  # played twice, then reopened after the restart
    assert state == fleet_pb2.CAMERA_RETRYING
    assert error == f"cannot open {settings.url}"
    # The attempts after the last frame before the restart: the stream ended, then the
    # server refused, again and again (an attempt count starts over with every frame).
    records = [r for r in retry_records(caplog, "http") if r.created < back_at]
    last_frame = max(i for i, r in enumerate(records) if r.attempt == 1)
    since_frame = records[last_frame:]
    assert len(since_frame) >= 5
    assert all(r.error == f"cannot open {settings.url}" for r in since_frame[1:])
    assert_backoff(since_frame, 0.05, 0.4)
    assert since_frame[-1].in_s >= 0.2 - 0.01  # the ceiling was reached
    assert back == (fleet_pb2.CAMERA_RUNNING, "", True)


def test_a_stream_that_goes_silent_is_lost_after_its_read_timeout(tmp_path):
    """A camera that stops sending without closing the connection does not hang the camera
    as RUNNING: after ``read_timeout_s`` it is lost and retried."""
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(
        str(tmp_path / "big.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120)
    )
    for _ in range(60):
        writer.write(rng.integers(0, 256, (120, 160, 3), np.uint8))
    writer.release()
    size = (tmp_path / "big.avi").stat().st_size
    server = ClipServer(tmp_path, stall_after=size // 3).start()
    settings = UrlCamera(
        id="stall",
        type="url",
        url=server.url("big.avi"),
        read_timeout_s=0.5,
        retry_initial_s=0.05,
        retry_max_s=0.1,
        max_retries=0,
    )

    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        camera = Camera(settings, make_source(settings), queue=queue)
        task, frames = await collect(camera, queue, 1000, timeout=20)
        await asyncio.wait_for(task, 5)
        return camera, frames

    try:
        camera, frames = asyncio.run(scenario())
    finally:
        server.stop()
    assert 0 < len(frames) < 60  # the part that was sent
    assert camera.state == fleet_pb2.CAMERA_FAILED  # max_retries=0: given up at once
    assert camera.error == f"lost {settings.url}: no frame"


def test_a_missing_capture_device_is_retried_with_backoff_and_the_others_go_on(
    caplog, absent_video_index
):
    """A device this machine lacks: the device camera retries with a growing backoff
    (forever by default), says which device it cannot open, and the camera next to it
    keeps delivering."""
    n = absent_video_index
    caplog.set_level(logging.INFO, logger="slimspect.agent.cameras")
    device = DeviceCamera(
        id="dev7", type="device", index=n, width=640, retry_initial_s=0.02, retry_max_s=0.16
    )
    other = SyntheticCamera(id="syn", type="synthetic", width=32, height=24, fps=100)

    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        cameras = [Camera(s, make_source(s), queue=queue) for s in (device, other)]
        tasks = [asyncio.create_task(c.run()) for c in cameras]
        counts = {"dev7": 0, "syn": 0}
        deadline = time.monotonic() + 30
        while len(retry_records(caplog, "dev7")) < 7 and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                frame = await asyncio.wait_for(queue.get(), 0.05)
                counts[frame.camera] += 1
                frame.done()
        states = {c.id: (c.state, c.error) for c in cameras}
        running = [not t.done() for t in tasks]
        for t in tasks:
            t.cancel()
        return counts, states, running

    counts, states, running = asyncio.run(scenario())
    assert states["dev7"] == (
        fleet_pb2.CAMERA_RETRYING,
        f"cannot open capture device {n} (/dev/video{n})",
    )
    assert running == [True, True]  # max_retries unset: retried forever
    assert_backoff(retry_records(caplog, "dev7"), 0.02, 0.16)
    assert counts["dev7"] == 0 and counts["syn"] >= 20
    assert states["syn"] == (fleet_pb2.CAMERA_RUNNING, "")


def test_stream_urls_lose_their_credentials_in_messages_and_get_their_timeouts():
    settings = UrlCamera(
        id="c",
        type="url",
        url="rtsp://admin:s3cret@10.0.0.7:554/stream1",
        open_timeout_s=3,
        read_timeout_s=1.5,
    )
    source = make_source(settings)
    assert source.label == "rtsp://***@10.0.0.7:554/stream1"
    assert redact_url("http://cam/mjpeg") == "http://cam/mjpeg"
    assert source._params == [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        3000,
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        1500,
    ]
