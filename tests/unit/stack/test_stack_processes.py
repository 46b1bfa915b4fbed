"""Process tracking of the stack: spawn, find every member, stop by pid, never a stranger."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from slimspect.embedded.processes import (
    ProcessRecord,
    is_alive,
    log_tail,
    members,
    proc_stat,
    spawn,
    stop,
    stop_together,
)


def _wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and not stat.gone


def test_spawn_logs_and_stop_terminates_the_whole_tree(tmp_path: Path) -> None:
    # A shell with two children, one of which leaves the session (setsid): all are members.
    script = "echo hello; sleep 300 & setsid sleep 301 & wait"
    record = spawn("tree", ["sh", "-c", script], log_path=tmp_path / "logs" / "tree.log")
    _wait_for(lambda: len(members(record)) == 3)
    tree = members(record)
    assert record.pid in tree
    assert is_alive(record)
    _wait_for(lambda: "hello" in log_tail(record.log))

    assert stop(record, grace_s=5) is False  # SIGTERM was enough
    assert not is_alive(record)
    assert not any(_running(pid) for pid in tree)
    assert stop(record, grace_s=5) is False  # already gone: a no-op
    assert members(record) == set()


def test_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    # Ignored signals stay ignored across exec: the shell and its sleep both ignore SIGTERM.
    record = spawn(
        "stubborn", ["sh", "-c", "trap '' TERM; sleep 300 & wait"], log_path=tmp_path / "s.log"
    )
    _wait_for(lambda: len(members(record)) == 2)
    tree = members(record)
    started = time.monotonic()
    assert stop(record, grace_s=0.5) is True
    assert time.monotonic() - started < 8
    assert not any(_running(pid) for pid in tree)


def test_a_reused_pid_is_never_signalled() -> None:
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        stat = proc_stat(stranger.pid)
        assert stat is not None
        # A record of an older process that had this pid: another start time.
        old = ProcessRecord("old", stranger.pid, stat.start_ticks - 1)
        assert not is_alive(old)
        assert members(old) == set()
        assert stop(old, grace_s=0.2) is False
        assert stranger.poll() is None  # untouched
    finally:
        stranger.kill()
        stranger.wait()


def test_a_process_that_exited_is_not_alive(tmp_path: Path) -> None:
    record = spawn("short", ["sh", "-c", "exit 3"], log_path=tmp_path / "short.log")
    _wait_for(lambda: not is_alive(record))  # a zombie until reaped: counts as gone
    assert stop(record) is False


def test_stop_together_stops_all_in_one_grace_period(tmp_path: Path) -> None:
    records = [
        spawn(f"p{i}", ["sh", "-c", "trap '' TERM; sleep 300"], log_path=tmp_path / f"{i}.log")
        for i in range(3)
    ]
    _wait_for(lambda: all(members(r) for r in records))
    started = time.monotonic()
    killed = stop_together(records, grace_s=1.0)
    assert killed == {"p0", "p1", "p2"}
    assert time.monotonic() - started < 8  # one grace period, not three
    assert not any(is_alive(r) for r in records)


def test_record_round_trips_through_a_dict(tmp_path: Path) -> None:
    record = ProcessRecord("x", 123, 456, argv=["a", "b"], log=str(tmp_path / "x.log"))
    assert ProcessRecord.from_dict(record.to_dict()) == record


def test_spawn_of_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    from slimspect.errors import EmbeddedServiceError

    with pytest.raises(EmbeddedServiceError, match="cannot start nothing"):
        spawn("nothing", ["/nonexistent/binary"], log_path=tmp_path / "n.log")


def test_members_ignores_older_processes_sharing_the_parent(tmp_path: Path) -> None:
    # This test process is older than anything spawned here and shares no session with it.
    record = spawn("s", ["sleep", "300"], log_path=tmp_path / "s.log")
    try:
        assert os.getpid() not in members(record)
        assert members(record) == {record.pid}
    finally:
        os.kill(record.pid, signal.SIGKILL)
        stop(record)
