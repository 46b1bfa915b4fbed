"""Start background processes and stop them later by pid, from any shell (Linux ``/proc``).

A process is started in a session of its own (``setsid``), its output appended to one log
file, and recorded as a :class:`ProcessRecord`: its pid plus its start time in clock ticks
since boot (``/proc/<pid>/stat`` field 22). The start time is what makes stopping by pid
safe: once a process has exited its pid may be reused, and a pid whose start time differs
from the record is someone else's process, never signalled.

What belongs to a record (:func:`members`) is the recorded process, every process of its
session or process group, and every descendant of those (found through parent pids):
``ray start --block`` spawns its GCS, raylet and workers, and a process that calls
``setsid`` again is still found as a descendant. Processes that started before the
recorded one are never members, so nothing older is touched whatever the pid tables say.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from slimspect.errors import EmbeddedServiceError

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` used here."""

    pid: int
    state: str  # R, S, D, Z (zombie), T, ...
    ppid: int
    pgid: int
    sid: int
    start_ticks: int

    @property
    def gone(self) -> bool:
        """Exited (a zombie only waits for its parent to collect its status)."""
        return self.state in ("Z", "X", "x")


def proc_stat(pid: int) -> ProcStat | None:
    """The process ``pid`` now, or None when there is none."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) is in parentheses and may itself hold spaces and parentheses.
    rest = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(
        pid=pid,
        state=rest[0],
        ppid=int(rest[1]),
        pgid=int(rest[2]),
        sid=int(rest[3]),
        start_ticks=int(rest[19]),
    )


def all_processes() -> dict[int, ProcStat]:
    """Every process on the machine, by pid."""
    if not _PROC.is_dir():
        raise EmbeddedServiceError("tracking processes needs Linux /proc")
    out = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None:
                out[stat.pid] = stat
    return out


@dataclass(frozen=True)
class ProcessRecord:
    """A started process: enough to find it, and only it, from another shell later."""

    name: str
    pid: int
    start_ticks: int
    argv: list[str] = field(default_factory=list)
    log: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "argv": list(self.argv),
            "log": self.log,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ProcessRecord:
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),  # type: ignore[call-overload]
            start_ticks=int(data["start_ticks"]),  # type: ignore[call-overload]
            argv=[str(a) for a in data.get("argv", [])],  # type: ignore[attr-defined]
            log=str(data.get("log", "")),
        )


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcessRecord:
    """Starts ``argv`` in a new session, stdout and stderr appended to ``log_path``.

    The process outlives the caller: stop it with :func:`stop`.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise EmbeddedServiceError(f"cannot start {name} ({argv[0]}): {exc}") from exc
    stat = proc_stat(process.pid)
    # A process that exited at once is a zombie with its stat still readable.
    start_ticks = stat.start_ticks if stat is not None else 0
    return ProcessRecord(
        name=name, pid=process.pid, start_ticks=start_ticks, argv=list(argv), log=str(log_path)
    )


def is_alive(record: ProcessRecord) -> bool:
    """Whether the recorded process itself still runs (the same process, not a reused pid)."""
    stat = proc_stat(record.pid)
    return stat is not None and stat.start_ticks == record.start_ticks and not stat.gone


def members(record: ProcessRecord, table: Mapping[int, ProcStat] | None = None) -> set[int]:
    """The live processes that belong to ``record`` (see the module docstring)."""
    table = all_processes() if table is None else table
    leader = table.get(record.pid)
    if leader is not None and leader.start_ticks != record.start_ticks:
        return set()  # the pid was reused: nothing here is ours
    ours = {
        p.pid
        for p in table.values()
        if p.start_ticks >= record.start_ticks and record.pid in (p.sid, p.pgid)
    }
    if leader is not None:
        ours.add(leader.pid)
    children: dict[int, list[int]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p.pid)
    queue = deque(ours)
    while queue:
        for child in children.get(queue.popleft(), ()):
            if child not in ours and table[child].start_ticks >= record.start_ticks:
                ours.add(child)
                queue.append(child)
    return {pid for pid in ours if not table[pid].gone}


def stop(record: ProcessRecord, *, grace_s: float = 10.0) -> bool:
    """SIGTERM to the record's processes, SIGKILL to those left after ``grace_s``.

    Returns once none of them runs; True when some had to be killed. A record whose
    processes are all gone is a no-op.
    """
    return record.name in stop_together([record], grace_s=grace_s)


def stop_together(records: Sequence[ProcessRecord], *, grace_s: float = 10.0) -> set[str]:
    """:func:`stop` for several records at once (one grace period for all of them).

    Returns the names of the records some of whose processes had to be killed; raises
    EmbeddedServiceError when a process survives SIGKILL.
    """
    for record in records:
        _signal(record, signal.SIGTERM)
    left = _wait_gone(records, grace_s)
    killed = [r for r in records if left[r.pid]]
    for record in killed:
        _signal(record, signal.SIGKILL)
    left = _wait_gone(records, 10.0)
    survivors = {r.name: sorted(left[r.pid]) for r in records if left[r.pid]}
    if survivors:
        raise EmbeddedServiceError(f"processes survived SIGKILL: {survivors}")
    return {r.name for r in killed}


def log_tail(path: str | Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file."""
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines))
    except FileNotFoundError:
        return "(no log)"


def _signal(record: ProcessRecord, sig: int) -> None:
    table = all_processes()
    pids = members(record, table)
    if record.pid in pids:
        # The leader's whole group at once, as a terminal would: a leader that stops its
        # children on SIGTERM (ray start --block) is not raced by signals sent one by one.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, sig)
    for pid in pids:
        if table[pid].pgid != record.pid or record.pid not in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _wait_gone(records: Sequence[ProcessRecord], timeout_s: float) -> dict[int, set[int]]:
    """Waits until no process of ``records`` runs, or ``timeout_s``; returns those left
    (by the record's pid)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for record in records:
            _reap(record.pid)
        table = all_processes()
        left = {r.pid: members(r, table) for r in records}
        if not any(left.values()) or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collects the exit status of ``pid`` when it is this process's child (no zombie left)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
