"""A small HTTP client of the API, for the operator commands (``slimspect stations``,
``slimspect rollout ...``): they go through the API, never to Redis, so they work from any
machine that can reach it and every action is authorized and audited like a dashboard's.

Where the API is and which key to send: ``--api`` / ``--key``, else ``SLIMSPECT_API_URL`` /
``SLIMSPECT_API_KEY`` (:class:`ClientSettings`). An unreachable API or a 4xx/5xx answer
becomes :class:`ApiError` with the API's own message; the commands print it and exit 1.
"""

from __future__ import annotations

from typing import Any, Self

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

TIMEOUT_S = 10.0


class ClientSettings(BaseSettings):
    """``SLIMSPECT_API_URL`` and ``SLIMSPECT_API_KEY``."""

    model_config = SettingsConfigDict(env_prefix="SLIMSPECT_API_", extra="ignore", frozen=True)

    url: str = "http://127.0.0.1:8080"
    key: SecretStr | None = None


class ApiError(Exception):
    """The API could not be reached, or answered with an error (``status`` then set)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    def __init__(self, url: str, key: str | None, *, transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=TIMEOUT_S, transport=transport
        )

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> ApiClient:
        key = settings.key.get_secret_value() if settings.key else None
        return cls(settings.url, key)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the API at {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise ApiError(_message(response), status=response.status_code)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body or {})


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    text = detail if isinstance(detail, str) else (response.text[:300] or response.reason_phrase)
    hint = ""
    if response.status_code == 401:
        hint = " (pass --key or set SLIMSPECT_API_KEY)"
    message = f"API answered {response.status_code}: {text}{hint}"
    if isinstance(body, dict) and body.get("blockers"):
        message += "\n  blockers:\n" + "\n".join(f"  - {b}" for b in body["blockers"])
    return message
