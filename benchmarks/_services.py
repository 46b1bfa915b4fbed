"""What the services benchmarks share (imported as a sibling module, like ``_machine``): a
private ``redis-server`` on a free port, the aggregator and the API as subprocesses of the
real CLI, CPU time of a process, percentiles, and the synthetic inspection events.

Every benchmark starts its own Redis (no persistence), so the shared Redis on 6379 is
never touched, and stops everything it started, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from slimspect.v1 import inspection_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
# NEU-DET's six classes (what the synthetic generator and the trainer use).
CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
JPEG_MAGIC = b"\xff\xd8\xff\xe0"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slimspect_cmd() -> list[str]:
    """The ``slimspect`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("slimspect")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "slimspect.cli"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank on the sorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


@dataclass
class Proc:
    """A started child process (stopped with SIGTERM, then SIGKILL)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def _start(name: str, argv: list[str], directory: Path, env: dict[str, str] | None = None) -> Proc:
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )
    return Proc(name, popen, log)


@contextlib.contextmanager
def redis_server(directory: Path, *, config: Sequence[str] = ()) -> Iterator[tuple[Proc, str]]:
    """A ``redis-server`` on a free loopback port, no RDB, no AOF; yields (process, url).

    ``config``: ``name=value`` items passed on as ``--name value`` (e.g. ``maxmemory=2gb``).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    for _ in range(5):
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(directory)]
        for item in config:
            name, _, value = item.partition("=")
            argv += [f"--{name}", value]
        proc = _start(f"redis-{port}", argv, directory)
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.popen.poll() is None:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            proc.stop()
            continue
        client.close()
        try:
            yield proc, f"redis://127.0.0.1:{port}/0"
        finally:
            proc.stop()
        return
    raise SystemExit("could not start a redis-server")


def wait_listening(proc: Proc, port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.check()
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout:g} s")


@contextlib.contextmanager
def aggregator_processes(
    directory: Path, redis_url: str, n: int = 1, *, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[list[Proc], int]]:
    """``n`` ``slimspect aggregator serve`` processes on ONE free port against ``redis_url``.

    gRPC servers bind with SO_REUSEPORT (grpc's default on Linux), so several processes can
    listen on one port; the kernel spreads the CONNECTIONS between them (each agent has
    one), a way past one process's GIL with no change to the aggregator.
    """
    port = free_port()
    env = {"SLIMSPECT_AGGREGATOR_LOG_LEVEL": "WARNING", **(extra_env or {})}
    argv = slimspect_cmd() + ["aggregator", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--redis-url", redis_url, "--metrics-port", "0"]
    procs: list[Proc] = []
    try:
        for i in range(n):
            procs.append(_start(f"aggregator-{i}", argv, directory, env))
            wait_listening(procs[-1], port)
        time.sleep(0.5 if n > 1 else 0)  # every process listening, not only the first
        for proc in procs:
            proc.check()
        yield procs, port
    finally:
        for proc in procs:
            proc.stop()


@contextlib.contextmanager
def api_process(directory: Path, redis_url: str) -> Iterator[tuple[Proc, int]]:
    """``slimspect api serve`` (uvicorn, no Fleet server, no model store) on a free port."""
    port = free_port()
    argv = slimspect_cmd() + ["api", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--redis-url", redis_url, "--no-fleet", "--no-model-store", "--log-level", "WARNING"]
    proc = _start("api", argv, directory)
    try:
        wait_listening(proc, port)
        yield proc, port
    finally:
        proc.stop()


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# --- synthetic events ---------------------------------------------------------------------


def uuid7(rng: random.Random, ms: int) -> str:
    """A UUIDv7-shaped id (as the agent makes them), from ``rng``: reproducible runs."""
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | rng.getrandbits(12) << 64
    value |= 0b10 << 62 | rng.getrandbits(62)
    return str(uuid.UUID(int=value))


@dataclass(frozen=True)
class EventMix:
    """What the synthetic events look like (recorded in the results).

    Detections per event uniform in 0..``max_detections`` (0 = a clean frame); each
    detection carries a JPEG-like crop with probability ``crop_share``, of ``crop_bytes``
    on average (uniform in 0.5..1.5 x).
    Boxes inside a 640x480 frame, scores uniform in [0.25, 1], classes uniform.
    """

    max_detections: int = 5
    crop_share: float = 0.3
    crop_bytes: int = 4096
    width: int = 640
    height: int = 480

    def describe(self) -> dict[str, object]:
        return {
            "detections_per_event": f"uniform 0..{self.max_detections}",
            "crop_share_of_detections": self.crop_share,
            "crop_bytes_mean": self.crop_bytes,
            "image": f"{self.width}x{self.height}",
            "classes": len(CLASSES),
        }


class EventMaker:
    """Valid InspectionEvents of the mix, reproducible from ``seed``."""

    def __init__(self, mix: EventMix, seed: int = 0) -> None:
        self.mix = mix
        self.rng = random.Random(seed)
        # A pool of distinct crop payloads (Redis stores each copy, so reuse costs nothing),
        # sizes uniform in 0.5..1.5 x crop_bytes: real JPEGs vary, and one fixed size could
        # sit just above or below an allocator size class.
        self.crops = [
            JPEG_MAGIC
            + self.rng.randbytes(max(0, round(mix.crop_bytes * (0.5 + i / 63)) - len(JPEG_MAGIC)))
            for i in range(64)
        ]

    def event(self, station: str, captured_at_ms: int, camera: str = "cam0") -> pb.InspectionEvent:
        rng, mix = self.rng, self.mix
        detections = []
        for _ in range(rng.randint(0, mix.max_detections)):
            w, h = rng.uniform(8, 200), rng.uniform(8, 200)
            x1, y1 = rng.uniform(0, mix.width - w), rng.uniform(0, mix.height - h)
            k = rng.randrange(len(CLASSES))
            crop = rng.choice(self.crops) if rng.random() < mix.crop_share else b""
            detections.append(
                pb.Detection(
                    box=pb.Box(x1=x1, y1=y1, x2=x1 + w, y2=y1 + h),
                    score=rng.uniform(0.25, 1.0),
                    class_id=k,
                    class_name=CLASSES[k],
                    crop_jpeg=crop,
                )
            )
        return pb.InspectionEvent(
            event_id=uuid7(rng, captured_at_ms),
            station=station,
            camera=camera,
            captured_at_ms=captured_at_ms,
            model_name="steel-yolo",
            model_version="1.2.0",
            image_width=mix.width,
            image_height=mix.height,
            detections=detections,
            inference_ms=rng.uniform(20, 60),
            frame_count=1,
        )


def add_event_options(p) -> None:
    """The options both services benchmarks share: what the events carry, the private Redis."""
    p.add_argument("--crop-share", type=float, default=0.3)
    p.add_argument("--crop-bytes", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--redis-config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="redis-server setting for the private Redis (repeatable)",
    )
