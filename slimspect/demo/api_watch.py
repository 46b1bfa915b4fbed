"""What the demo reads from the stack's HTTP API while it waits: stations, rollouts, stats.

The standard library's HTTP client on purpose: the demo is part of the core package, which
does not depend on an HTTP client library; four JSON GETs with a bearer key need none.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Api", "DemoTimeout", "wait_until"]

T = TypeVar("T")


class DemoTimeout(RuntimeError):
    """A step did not reach its state in time; the message says what was last seen."""


class Api:
    def __init__(self, url: str, key: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout_s = timeout_s

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        request = urllib.request.Request(
            f"{self.url}{path}{'?' + query if query else ''}",
            headers={"Authorization": f"Bearer {self.key}", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def stations(self) -> list[dict[str, Any]]:
        return self.get("/v1/stations")

    def rollouts(self) -> list[dict[str, Any]]:
        return self.get("/v1/rollouts")

    def stats(self, group_by: str) -> dict[str, Any]:
        return self.get("/v1/stats", group_by=group_by)

    def defects(self, limit: int = 5) -> dict[str, Any]:
        return self.get("/v1/defects", limit=limit)


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    describe: Callable[[], str] = lambda: "",
    interval_s: float = 1.0,
    on_poll: Callable[[], None] | None = None,
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
        if on_poll is not None:
            on_poll()
        if time.monotonic() > deadline:
            try:
                seen = describe()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                seen = f"the API did not answer: {exc}"
            raise DemoTimeout(f"{what}: not reached in {timeout_s:.0f} s; last seen: {seen}")
        time.sleep(interval_s)
