"""Rollout policy as pure functions: who is in a canary, and whether it may be promoted.

No Redis and no clock here: the service reads the state, these functions decide, and the
same inputs give the same decision in every process (which is what lets several API
replicas evaluate one rollout and agree).

Canary selection. A station's bucket is the first 8 bytes of ``sha256(station)`` read as a
big-endian integer over 2**64: a number in [0, 1) that depends on the station's name alone,
so it is the same in every process, on every machine and across restarts (Python's ``hash``
is salted per process and would not be). A station is in a canary of share ``p`` iff its
bucket ``< p``: raising the share only adds stations, and the same stations go first in every
rollout, a stable canary ring operators come to know. An explicit station list replaces the
share.

The gate, for an active canary of version V at time ``now``:

1. roll back when the canary's failed updates to V (UPDATE_FAILED or UPDATE_ROLLED_BACK,
   each report counted once) exceed ``max_update_failures`` (0: any failure), or when one
   station sent more than ``max_unhealthy_heartbeats`` UNHEALTHY heartbeats on V;
2. otherwise promote when every online canary station
   - runs V, and its last update attempt of V (if it reported one) succeeded,
   - has run V for ``soak_s`` without a break (a heartbeat on another version restarts it),
   - is not UNHEALTHY now,
   - reports FPS >= ``min_fps_ratio`` x the FPS of its last heartbeat on the previous version
     (a station never seen on a previous version has no baseline and skips this check);
   and at least one canary station passed all of that. A canary station that went offline
   after it ran V blocks promotion (it may have crashed on V); one that went offline before
   it ever ran V is ignored (a dead station should not hold a rollout back forever);
3. otherwise wait, and say what blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from services.rollout.models import CanaryStation, Decision, Rollout

_SPAN = float(2**64)


def canary_bucket(station: str) -> float:
    """The station's place in [0, 1): stable across calls, processes and machines."""
    digest = hashlib.sha256(station.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / _SPAN


def in_canary(station: str, *, share: float | None, stations: Collection[str] | None) -> bool:
    """Whether ``station`` belongs to a canary of ``share`` (or of the explicit ``stations``)."""
    if stations is not None:
        return station in stations
    return share is not None and canary_bucket(station) < share


def select_canary(
    candidates: Collection[str], *, share: float | None, stations: Collection[str] | None
) -> list[str]:
    """The canary stations among ``candidates``, sorted."""
    return sorted(s for s in candidates if in_canary(s, share=share, stations=stations))


@dataclass(frozen=True)
class Tolerances:
    """How many failures a canary may show before it is rolled back (from the settings)."""

    max_update_failures: int = 0
    max_unhealthy_heartbeats: int = 3


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def decide(
    rollout: Rollout,
    stations: Sequence[CanaryStation],
    *,
    now_ms: int,
    tolerances: Tolerances,
) -> Decision:
    """The gate's verdict on an active canary ``rollout`` given its canary ``stations``."""
    version = rollout.version
    failures = [f"{s.station}: {f}" for s in stations for f in s.failures]
    if len(failures) > tolerances.max_update_failures:
        return Decision(
            verdict="rollback",
            reason=(
                f"{_plural(len(failures), 'failed update')} to {version} on the canary "
                f"(tolerated: {tolerances.max_update_failures}): " + "; ".join(failures)
            ),
        )
    sick = [s for s in stations if s.unhealthy_heartbeats > tolerances.max_unhealthy_heartbeats]
    if sick:
        return Decision(
            verdict="rollback",
            reason="; ".join(
                f"{s.station} reported UNHEALTHY {_plural(s.unhealthy_heartbeats, 'time')} "
                f"on {version} (tolerated: {tolerances.max_unhealthy_heartbeats})"
                for s in sick
            ),
        )

    soak_ms = rollout.soak_s * 1000
    blockers: list[str] = []
    passed = 0
    for s in stations:
        if not s.online:
            if s.since_ms is not None:
                blockers.append(f"{s.station} went offline while running {version}")
            continue
        if not s.on_version or s.since_ms is None:
            running = s.model_version or "no version"
            blockers.append(f"{s.station} runs {running}, not {version} yet")
            continue
        before = len(blockers)
        if s.update_status not in (None, "UPDATE_OK"):
            blockers.append(
                f"{s.station}: last update to {version} was {s.update_status}"
                + (f" ({s.update_reason})" if s.update_reason else "")
            )
        if s.health == "UNHEALTHY":
            blockers.append(f"{s.station} is UNHEALTHY")
        ran_ms = now_ms - s.since_ms
        if ran_ms < soak_ms:
            blockers.append(
                f"{s.station} ran {version} for {ran_ms / 1000:.0f} s "
                f"of the {rollout.soak_s:.0f} s soak"
            )
        if (
            s.baseline_fps is not None
            and s.baseline_fps > 0
            and (s.fps or 0.0) < rollout.min_fps_ratio * s.baseline_fps
        ):
            blockers.append(
                f"{s.station} runs at {s.fps or 0.0:.1f} fps, below {rollout.min_fps_ratio:g} x "
                f"its {s.baseline_fps:.1f} fps on the previous version"
            )
        passed += len(blockers) == before
    if not blockers and passed == 0:
        blockers.append(f"no online canary station runs {version} yet")
    if blockers:
        return Decision(verdict="wait", reason="; ".join(blockers), blockers=blockers)
    return Decision(
        verdict="promote",
        reason=(
            f"{_plural(passed, 'canary station')} ran {version} for at least "
            f"{rollout.soak_s:.0f} s, every update succeeded, FPS at least "
            f"{rollout.min_fps_ratio:g} x the previous version's"
        ),
    )
