"""``slimspect restart NAME``: one process of a running stack, started again as it was.

After a crash (a ``kill -9``, an OOM kill) or to pick up a new install: the process is
stopped if it still runs (SIGTERM, then SIGKILL after its grace period), started again
with the argv recorded in ``stack.json``, its output appended to the same log, and
``restart`` returns once it answers its probes. Ports stay the same, so the processes that
talk to it reconnect on their own: the stations resend what the aggregator did not
acknowledge, the aggregator and the API reconnect to Redis, which reloads its AOF.

Redis, the aggregator and the stations can be restarted this way: their argv and the
files it names are everything they need. The API (its store credentials are in its
environment, which ``stack.json`` does not keep), the S3 store and the Ray head cannot:
``slimspect down`` and ``up`` restart those.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from slimspect.embedded import probes
from slimspect.embedded.processes import is_alive, log_tail, spawn, stop_together
from slimspect.embedded.stack_env import child_env
from slimspect.embedded.stack_state import STACK_FILE, Service, StackState, locked
from slimspect.embedded.station_config import STATION_PREFIX
from slimspect.errors import EmbeddedServiceError

__all__ = ["restart"]

_SERVICES = ("redis", "aggregator")  # and every station


def _restartable(name: str) -> bool:
    return name in _SERVICES or name.startswith(STATION_PREFIX)


def restart(state_dir: Path, name: str, *, timeout_s: float = 120.0, echo=print) -> Service:
    """Restart the stack's process ``name``; returns its new record once it answers.

    Raises:
        EmbeddedServiceError: no stack in ``state_dir``, no such process, one that cannot
            be restarted alone, or one that exits or does not answer in ``timeout_s``.
    """
    state_dir = state_dir.resolve()
    no_stack = EmbeddedServiceError(f"no stack runs in {state_dir} (start one: slimspect up)")
    if not (state_dir / STACK_FILE).is_file():
        raise no_stack  # before the lock: it would leave a .lock file where no stack is
    with locked(state_dir):
        state = StackState.load(state_dir)
        if state is None:
            raise no_stack
        names = [s.name for s in state.services]
        if name not in names:
            raise EmbeddedServiceError(
                f"the stack in {state_dir} has no process {name!r}; it has: {', '.join(names)}"
            )
        if not _restartable(name):
            raise EmbeddedServiceError(
                f"{name} cannot be restarted alone (only redis, aggregator, {STATION_PREFIX}N): "
                f"use 'slimspect down' and 'slimspect up'"
            )
        index = names.index(name)
        old = state.services[index]
        if is_alive(old.process):
            stop_together([old.process], grace_s=old.grace_s)
            echo(f"stopped: {name} (pid {old.process.pid})")
        record = spawn(
            name,
            old.process.argv,
            log_path=Path(old.process.log),
            env=child_env(os.environ),
            cwd=state_dir,
        )
        new = Service(record, url=old.url, probes=old.probes, grace_s=old.grace_s)
        state.services[index] = new
        state.save()
    deadline = time.monotonic() + timeout_s
    while not probes.check(new.probes).ok:
        if not is_alive(record):
            raise EmbeddedServiceError(
                f"{name} exited while restarting; last lines of {record.log}:\n"
                f"{log_tail(record.log)}"
            )
        if time.monotonic() > deadline:
            raise EmbeddedServiceError(f"{name} did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)
    echo(f"started: {name} (pid {record.pid}), answering")
    return new
