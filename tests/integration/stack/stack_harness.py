"""Helpers of the stack tests: run ``slimspect`` as a user would, and read the process tree
from ``/proc`` independently of the code under test (slimspect/embedded/processes.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def slimspect(
    *args: str, timeout_s: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``slimspect ARGS`` in a sub-process; its exit code is the caller's to check."""
    return subprocess.run(
        [sys.executable, "-m", "slimspect.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )


def _stat(pid: int) -> tuple[int, int, int, str] | None:
    """(ppid, sid, start ticks, state) of a process, None if there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[3]), int(fields[19]), fields[0]


def process_tree(roots: list[int], state_dir: Path) -> dict[int, int]:
    """pid -> start ticks of the roots, their sessions, their descendants, and every
    process working in ``state_dir``."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            table[int(entry)] = stat
    found = {pid for pid in roots if pid in table}
    found |= {pid for pid, (_, sid, _, _) in table.items() if sid in roots}
    for pid in table:
        try:
            if Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(state_dir):
                found.add(pid)
        except OSError:
            pass
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, _, _) in table.items() if ppid in found}
        grew = not children <= found
        found |= children
    return {pid: table[pid][2] for pid in found if table[pid][3] != "Z"}


def survivors(tree: dict[int, int]) -> list[int]:
    """The processes of ``tree`` that still run (same pid and start time, not a zombie)."""
    out = []
    for pid, ticks in tree.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == ticks and stat[3] not in ("Z", "X"):
            out.append(pid)
    return out


def stack_json(state_dir: Path) -> dict:
    return json.loads((state_dir / "stack.json").read_text())
