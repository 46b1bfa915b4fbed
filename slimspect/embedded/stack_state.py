"""``stack.json``: what ``slimspect up`` started in a state directory, for ``down`` and ``status``.

The file lists every started process (a :class:`~slimspect.embedded.processes.ProcessRecord`
plus how to probe it and what to show), the endpoints and the paths of the credentials. It is
rewritten, atomically, after each process starts, so a ``slimspect up`` that dies half-way
still leaves a record that ``slimspect down`` can stop. ``down`` removes it; the data
(Redis AOF, S3 objects), the credentials and the logs stay in the directory.

:func:`locked` serialises ``up`` and ``down`` on one state directory (an advisory ``flock``
on ``<state_dir>/.lock``, released when the holder exits, even by ``kill -9``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimspect.embedded.processes import ProcessRecord
from slimspect.errors import EmbeddedServiceError

STACK_FILE = "stack.json"
FORMAT = 1


@dataclass
class Service:
    """One started process of the stack.

    Args:
        process: its pid record.
        url: what a client connects to, for the table.
        probes: how :mod:`slimspect.embedded.probes` checks it (all must pass): each
            ``{"kind": "redis" | "http" | "grpc" | "tcp", "port": ..., "url": ..., "expect": ...}``.
        grace_s: how long ``down`` waits after SIGTERM before SIGKILL.
    """

    process: ProcessRecord
    url: str
    probes: list[dict[str, Any]]
    grace_s: float = 10.0

    @property
    def name(self) -> str:
        return self.process.name

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.process.to_dict(),
            "url": self.url,
            "probes": self.probes,
            "grace_s": self.grace_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Service:
        return cls(
            process=ProcessRecord.from_dict(data),
            url=str(data.get("url", "")),
            probes=[dict(p) for p in data.get("probes", [])],
            grace_s=float(data.get("grace_s", 10.0)),
        )


@dataclass
class StackState:
    """The content of ``stack.json``; services in start order."""

    state_dir: Path
    services: list[Service] = field(default_factory=list)
    endpoints: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.state_dir / STACK_FILE

    def save(self) -> None:
        data = {
            "format": FORMAT,
            "state_dir": str(self.state_dir),
            "services": [s.to_dict() for s in self.services],
            "endpoints": self.endpoints,
            "credentials": self.credentials,
            "notes": self.notes,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, state_dir: Path) -> StackState | None:
        """The recorded stack, or None when ``state_dir`` has none."""
        path = state_dir / STACK_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise EmbeddedServiceError(f"{path} is not valid JSON ({exc}); remove it") from None
        if data.get("format") != FORMAT:
            raise EmbeddedServiceError(f"{path} has an unknown format {data.get('format')!r}")
        return cls(
            state_dir=state_dir,
            services=[Service.from_dict(s) for s in data.get("services", [])],
            endpoints=dict(data.get("endpoints", {})),
            credentials=dict(data.get("credentials", {})),
            notes=list(data.get("notes", [])),
        )

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Holds the state directory's lock; EmbeddedServiceError when another command holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbeddedServiceError(
                f"another 'slimspect up' or 'down' is working on {state_dir}"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
