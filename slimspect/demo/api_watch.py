"""Waiting on the stack's state as the HTTP API shows it (the client: slimspect.api_client)."""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable
from typing import TypeVar

__all__ = ["DemoTimeout", "wait_until"]

T = TypeVar("T")


class DemoTimeout(RuntimeError):
    """A step did not reach its state in time; the message says what was last seen."""


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    describe: Callable[[], str] = lambda: "",
    interval_s: float = 1.0,
) -> T:
    """Poll ``check`` until it returns something other than None/False; then return it.

    An API that is briefly unreachable counts as "not yet". On timeout :class:`DemoTimeout`
    names ``what`` and, from ``describe()``, the state last seen.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except (urllib.error.URLError, OSError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            try:
                seen = describe()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                seen = f"the API did not answer: {exc}"
            raise DemoTimeout(f"{what}: not reached in {timeout_s:.0f} s; last seen: {seen}")
        time.sleep(interval_s)
