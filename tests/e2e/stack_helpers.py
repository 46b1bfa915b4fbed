"""Helpers of the tests on the embedded stack: run a command, the stack's store, stations'
totals (the tiny model and the Redis readers are the agent tests': see conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from slimspect.embedded.processes import is_alive
from slimspect.embedded.stack_state import Service
from slimspect.settings import StoreSettings
from slimspect.store import ModelStore


def slimspect(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """``slimspect ARGS`` as a user types it, with the stack's env.sh variables in ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "slimspect.cli", *map(str, args)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def store_from_env(env: dict[str, str]) -> ModelStore:
    """The stack's model store, from its env.sh (signing key included)."""
    return ModelStore.from_settings(
        StoreSettings(
            endpoint=env["SLIMSPECT_STORE_ENDPOINT"],
            access_key=env["SLIMSPECT_STORE_ACCESS_KEY"],
            secret_key=env["SLIMSPECT_STORE_SECRET_KEY"],
            bucket=env["SLIMSPECT_STORE_BUCKET"],
            signing_key=env["SLIMSPECT_STORE_SIGNING_KEY"],
            trusted_keys=[p for p in env["SLIMSPECT_STORE_TRUSTED_KEYS"].split(",") if p],
        )
    )


def stop_gracefully(services: list[Service], timeout_s: float = 60) -> None:
    """SIGTERM (the agent drains its uplink, then logs its totals) and wait for the exit."""
    for service in services:
        os.kill(service.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(is_alive(s.process) for s in services) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(is_alive(s.process) for s in services), "a station did not stop"


def stopped_totals(service: Service) -> dict:
    """What the station's last run counted (its "agent stopped" log line)."""
    log = Path(service.process.log)
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("msg") == "agent stopped"][-1]
