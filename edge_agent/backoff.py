"""Exponential backoff with jitter, shared by everything in the agent that retries.

The uplink reconnecting and the cameras reopening their sources wait alike: the ceiling
doubles with every failed attempt, from ``initial`` up to ``maximum``, and the wait is
drawn from the upper half of it ("equal jitter"). The jitter spreads a fleet of stations
that lost the aggregator at the same moment, so they do not all come back in one burst;
keeping half of the ceiling fixed still guarantees the wait grows.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    initial: float,
    maximum: float,
    *,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
    if attempt <= 0:
        return 0.0
    ceiling = min(maximum, initial * 2 ** min(attempt - 1, 62))
    return ceiling / 2 + rng() * ceiling / 2
