"""Cameras: frame sources, each run by an asyncio task with its own reader thread.

A :class:`Source` opens, reads and closes one thing: an OpenCV ``VideoCapture`` (video file,
device, network stream), a watched folder, or a synthetic generator. A :class:`Camera`
runs a source at its target FPS and never lets it stop the agent: a source that fails
is reopened after an exponential backoff with jitter (``CAMERA_RETRYING``), given up
after ``max_retries`` (``CAMERA_FAILED``), and a finite source that played out is
``CAMERA_ENDED``. Its state, FPS and last error are what the heartbeat reports.

Reads run in a thread of the camera's own, so a stream that hangs in OpenCV blocks
neither the event loop nor the other cameras. A network stream has open and read
timeouts (``open_timeout_s``, ``read_timeout_s``): a camera that goes silent is lost and
retried like one that refuses the connection, instead of hanging as RUNNING. Errors name
a stream by its URL without user name and password (they reach the logs and the fleet).

Back-pressure. Each camera may have at most ``QUEUED_PER_CAMERA`` frames waiting for
inspection. A live source (device, stream, synthetic) then skips frames (counted): the
picture moves on and a late frame is worth less than a current one. A file or folder
waits instead, so every frame of it is inspected.

Resuming. File and folder sources give each frame a position (frame index; file change
time and name), which the spool commits with the frame's event; after a restart the
camera continues after the last committed frame (spool.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import logging
import os
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge_agent.backoff import backoff_delay
from edge_agent.settings import (
    CameraSettings,
    DeviceCamera,
    FolderCamera,
    SyntheticCamera,
    UrlCamera,
    VideoCamera,
)
from slimspect.v1 import fleet_pb2

log = logging.getLogger("slimspect.agent.cameras")

QUEUED_PER_CAMERA = 2
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm"})


class SourceError(Exception):
    """A source cannot be opened or read; the camera retries it."""


@dataclass(frozen=True)
class Grab:
    """One image from a source, with the position to resume after it (None: not resumable)."""

    image: np.ndarray
    position: str | None = None


@dataclass(eq=False)
class Frame:
    """A captured frame on its way to inspection; :meth:`done` frees its camera's slot."""

    camera: str
    image: np.ndarray
    captured_at_ms: int
    position: str | None
    _release: Callable[[], None] = field(repr=False, default=lambda: None)

    def done(self) -> None:
        release, self._release = self._release, lambda: None
        release()


class Source(ABC):
    """Something frames come from. Methods run in the camera's reader thread."""

    live: bool = False  # skip frames when inspection falls behind, instead of waiting
    idle_s: float = 0.05  # how long to wait after read() returned None before asking again

    @abstractmethod
    def open(self, resume: str | None) -> None:
        """Opens the source, continuing after ``resume`` where it can; raises SourceError."""

    @abstractmethod
    def read(self) -> Grab | None:
        """The next image; None when none is available now (or, if :attr:`ended`, ever)."""

    def close(self) -> None:
        """Releases the source (nothing to release by default)."""

    @property
    def ended(self) -> bool:
        """A finite source played out."""
        return False


class CaptureSource(Source):
    """An OpenCV ``VideoCapture``: a video file (resumable, optionally looped), a device or URL."""

    def __init__(
        self,
        target: str | int,
        *,
        is_file: bool,
        loop: bool = False,
        label: str | None = None,
        params: tuple[int, ...] = (),
    ) -> None:
        self.target = target
        self.is_file = is_file
        self.loop = loop
        self.live = not is_file
        self.label = label or str(target)  # what errors and logs call it (no credentials)
        self._params = list(params)  # VideoCapture open parameters (timeouts of a stream)
        self._cap: cv2.VideoCapture | None = None
        self._index = 0  # index of the next frame in the file
        self._ended = False

    def _open_capture(self) -> cv2.VideoCapture:
        if self.is_file and not Path(str(self.target)).is_file():
            raise SourceError(f"video file {self.target} does not exist")
        if self._params:
            cap = cv2.VideoCapture(self.target, cv2.CAP_ANY, self._params)
        else:
            cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.label}")
        return cap

    def open(self, resume: str | None) -> None:
        self._cap = self._open_capture()
        self._index = 0
        self._ended = False
        if self.is_file and resume is not None and resume.isdigit():
            self._skip_to(int(resume) + 1)

    def _skip_to(self, index: int) -> None:
        """Positions the file at frame ``index``: a seek, checked, else reading up to it."""
        assert self._cap is not None
        if self._cap.set(cv2.CAP_PROP_POS_FRAMES, index) and (
            int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)) == index
        ):
            self._index = index
            return
        self._cap.release()
        self._cap = self._open_capture()
        self._index = 0
        while self._index < index and self._cap.grab():
            self._index += 1

    def read(self) -> Grab | None:
        if self._cap is None or self._ended:
            return None
        ok, image = self._cap.read()
        if not ok or image is None:
            if not self.is_file:
                raise SourceError(f"lost {self.label}: no frame")
            if not self.loop:
                self._ended = True
                return None
            self._cap.release()
            self._cap = self._open_capture()  # from the start again; gone: SourceError
            self._index = 0
            ok, image = self._cap.read()
            if not ok or image is None:
                raise SourceError(f"{self.label} gives no frame")
        position = str(self._index) if self.is_file else None
        self._index += 1
        return Grab(image, position)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    @property
    def ended(self) -> bool:
        return self._ended


class FolderSource(Source):
    """A folder camera software writes images into; every new file is one frame.

    Files are taken in the order of their change time (``st_ctime_ns``, which a writer
    cannot set back, and which a rename into the folder updates), ties by name, once
    unchanged for ``settle_s``: a file still being written keeps moving its change time.
    The position ``<ctime_ns>:<name>`` of the last file taken is the resume point. A file
    that cannot be decoded is logged and skipped. Files are left in place: the camera
    software's own retention (or a tmpfiles.d rule) empties the folder.

    ``settle_s`` must be above 0: a file is taken only once its change time is that old, so
    any file landing later has a later change time than every file already taken, and the
    resume point never skips one.
    """

    def __init__(
        self, path: Path, *, pattern: str = "*", poll_s: float = 0.5, settle_s: float = 0.2
    ):
        self.path = Path(path)
        self.pattern = pattern
        self.idle_s = poll_s
        self.settle_ns = int(settle_s * 1e9)
        self._after: tuple[int, str] = (-1, "")
        self._pending: deque[tuple[int, str]] = deque()

    def open(self, resume: str | None) -> None:
        if not self.path.is_dir():
            raise SourceError(f"folder {self.path} does not exist")
        self._pending.clear()
        if resume:
            stamp, _, name = resume.partition(":")
            if stamp.isdigit():
                self._after = max(self._after, (int(stamp), name))

    def _scan(self) -> None:
        now = time.time_ns()
        found = []
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    name = entry.name
                    if (
                        name.startswith(".")
                        or os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES
                        or not fnmatch.fnmatch(name, self.pattern)
                    ):
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    key = (st.st_ctime_ns, name)
                    if (
                        key > self._after
                        and now - st.st_ctime_ns >= self.settle_ns
                        and entry.is_file()
                    ):
                        found.append(key)
        except OSError as exc:
            raise SourceError(f"cannot list folder {self.path}: {exc.strerror or exc}") from None
        self._pending.extend(sorted(found))

    def read(self) -> Grab | None:
        while True:
            if not self._pending:
                self._scan()
                if not self._pending:
                    return None
            key = self._pending.popleft()
            self._after = key
            path = self.path / key[1]
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                log.warning("skipping an image that does not decode", extra={"file": str(path)})
                continue
            return Grab(image, f"{key[0]}:{key[1]}")


class SyntheticSource(Source):
    """Steel-like grey frames with occasional dark defects (scratches, pits), for demos."""

    live = True

    def __init__(
        self, width: int, height: int, *, frames: int | None, defect_rate: float, seed: int
    ):
        self.width, self.height = width, height
        self.frames = frames
        self.defect_rate = defect_rate
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._count = 0

    def open(self, resume: str | None) -> None:
        pass

    def read(self) -> Grab | None:
        if self.ended:
            return None
        rng, h, w = self._rng, self.height, self.width
        rows = rng.normal(150, 6, size=(h, 1))
        image = np.clip(rows + rng.normal(0, 8, size=(h, w)), 0, 255).astype(np.uint8)
        if rng.random() < self.defect_rate:
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            if rng.random() < 0.5:
                dx, dy = int(rng.integers(-w // 3, w // 3)), int(rng.integers(-h // 8, h // 8))
                cv2.line(image, (x, y), (x + dx, y + dy), 60, max(1, min(h, w) // 80))
            else:
                axes = (
                    int(rng.integers(3, max(4, w // 12))),
                    int(rng.integers(3, max(4, h // 12))),
                )
                cv2.ellipse(image, (x, y), axes, 0, 0, 360, 70, -1)
        self._count += 1
        return Grab(image, None)

    @property
    def ended(self) -> bool:
        return self.frames is not None and self._count >= self.frames


def make_source(settings: CameraSettings) -> Source:
    """The source a camera's settings describe."""
    if isinstance(settings, VideoCamera):
        return CaptureSource(str(settings.path), is_file=True, loop=settings.loop)
    if isinstance(settings, DeviceCamera):
        return _DeviceSource(settings)
    if isinstance(settings, UrlCamera):
        return CaptureSource(
            settings.url,
            is_file=False,
            label=redact_url(settings.url),
            params=(
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                round(settings.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                round(settings.read_timeout_s * 1000),
            ),
        )
    if isinstance(settings, FolderCamera):
        return FolderSource(
            settings.path,
            pattern=settings.pattern,
            poll_s=settings.poll_s,
            settle_s=settings.settle_s,
        )
    if isinstance(settings, SyntheticCamera):
        return SyntheticSource(
            settings.width,
            settings.height,
            frames=settings.frames,
            defect_rate=settings.defect_rate,
            seed=settings.seed,
        )
    raise TypeError(f"unknown camera settings {type(settings).__name__}")


def redact_url(url: str) -> str:
    """``url`` without its user name and password (``rtsp://***@cam:554/...``), for messages:
    a camera's error goes to the logs and, with the heartbeat, to the fleet."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class _DeviceSource(CaptureSource):
    """A capture device, with the frame size asked of the driver when configured."""

    def __init__(self, settings: DeviceCamera) -> None:
        index = settings.index
        super().__init__(index, is_file=False, label=f"capture device {index} (/dev/video{index})")
        self._size = (settings.width, settings.height)

    def open(self, resume: str | None) -> None:
        super().open(resume)
        assert self._cap is not None
        width, height = self._size
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)


class Camera:
    """Runs one source: open, read at the target FPS, hand frames on, retry, report state."""

    def __init__(
        self,
        settings: CameraSettings,
        source: Source,
        *,
        queue: asyncio.Queue[Frame],
        resume: str | None = None,
        on_skip: Callable[[str], None] = lambda camera: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.id = settings.id
        self.source = source
        self.state: int = fleet_pb2.CAMERA_STATE_UNSPECIFIED
        self.error = ""
        self._queue = queue
        self._slots = asyncio.Semaphore(QUEUED_PER_CAMERA)
        self._resume = resume
        self._on_skip = on_skip
        self._clock = clock
        self._attempt = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"camera-{self.id}"
        )

    async def run(self) -> None:
        """Until the source ends, fails for good, or the task is cancelled."""
        s = self.settings
        try:
            while True:
                try:
                    await self._call(self.source.open, self._resume)
                    self.state = fleet_pb2.CAMERA_RUNNING
                    log.info("camera running", extra={"camera": self.id})
                    await self._capture()
                    self.state = fleet_pb2.CAMERA_ENDED
                    log.info("camera ended", extra={"camera": self.id})
                    return
                except SourceError as exc:
                    self.error = str(exc)
                    self._attempt += 1
                    if s.max_retries is not None and self._attempt > s.max_retries:
                        self.state = fleet_pb2.CAMERA_FAILED
                        log.error("camera failed", extra={"camera": self.id, "error": self.error})
                        return
                    self.state = fleet_pb2.CAMERA_RETRYING
                    delay = backoff_delay(self._attempt, s.retry_initial_s, s.retry_max_s)
                    log.warning(
                        "camera retrying",
                        extra={
                            "camera": self.id,
                            "error": self.error,
                            "attempt": self._attempt,
                            "in_s": round(delay, 2),
                        },
                    )
                    await self._call(self.source.close)
                    await asyncio.sleep(delay)
        finally:
            # Not awaited: a read hung in OpenCV must not hold up the agent's shutdown.
            self._pool.submit(self.source.close)
            self._pool.shutdown(wait=False)

    async def _capture(self) -> None:
        """Reads until the source ends; raises SourceError when it fails."""
        period = 1.0 / self.settings.fps if self.settings.fps else 0.0
        due = time.monotonic()
        while True:
            grab = await self._call(self.source.read)
            if grab is None:
                if self.source.ended:
                    return
                await asyncio.sleep(self.source.idle_s)
                continue
            self.error = ""
            self._attempt = 0
            self._resume = grab.position if grab.position is not None else self._resume
            await self._hand_on(grab)
            if period:
                due += period
                now = time.monotonic()
                if due < now - period:  # fell behind by more than a frame: do not burst
                    due = now
                await asyncio.sleep(max(0.0, due - now))

    async def _hand_on(self, grab: Grab) -> None:
        if self.source.live and self._slots.locked():
            self._on_skip(self.id)
            return
        await self._slots.acquire()
        frame = Frame(
            camera=self.id,
            image=grab.image,
            captured_at_ms=int(self._clock() * 1000),
            position=grab.position,
            _release=self._slots.release,
        )
        self._queue.put_nowait(frame)

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
