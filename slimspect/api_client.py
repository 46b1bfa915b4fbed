"""A minimal JSON client of the HTTP API for the core and the trainer (the standard
library's HTTP client: the core depends on no HTTP library).

The demo reads stations, rollouts and stats through it; the pipeline's publish stage
starts a canary rollout through it. The operator commands (``slimspect stations``,
``slimspect rollout``) use the services' own client (services/api/client.py), which
turns every API error into a message for a terminal.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["Api", "ApiRequestError"]


class ApiRequestError(RuntimeError):
    """The API answered with an error status (``status``), with its own message."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Api:
    """``get_retries``: a GET answered 503 (the API's "retry later": Redis or the store
    briefly away, as while a restarted Redis reloads its AOF) is sent again that many
    times, after 0.5, 1, 2, ... s (5: about 15 s); a POST is never repeated."""

    def __init__(
        self, url: str, key: str | None, timeout_s: float = 10.0, get_retries: int = 5
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.timeout_s = timeout_s
        self.get_retries = get_retries

    def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            f"{self.url}{path}{'?' + query if query else ''}", data=data, headers=headers,
            method=method,
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail).get("detail", detail)
            except (ValueError, AttributeError):
                pass
            raise ApiRequestError(f"{method} {path}: HTTP {exc.code}: {detail}", exc.code) from None

    def get(self, path: str, **params: Any) -> Any:
        for attempt in range(self.get_retries):
            try:
                return self.request("GET", path, **params)
            except ApiRequestError as exc:
                if exc.status != 503:
                    raise
            time.sleep(0.5 * 2**attempt)
        return self.request("GET", path, **params)  # the last try: its error is raised

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def stations(self) -> list[dict[str, Any]]:
        return self.get("/v1/stations")

    def rollouts(self) -> list[dict[str, Any]]:
        return self.get("/v1/rollouts")

    def stats(self, group_by: str) -> dict[str, Any]:
        return self.get("/v1/stats", group_by=group_by)

    def defects(self, limit: int = 5) -> dict[str, Any]:
        return self.get("/v1/defects", limit=limit)
