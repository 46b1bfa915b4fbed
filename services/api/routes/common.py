"""What the routers share: the documented error answers."""

from __future__ import annotations

from typing import Any

from services.api.responses import Problem

_MEANING = {
    400: "malformed request: a cursor this API did not issue, a body that is not JSON",
    401: "missing, unknown or revoked API key",
    403: "the key's role does not allow this",
    404: "not found",
    409: "not possible in the current state",
    422: "invalid parameters",
    503: "a backend (Redis, model store, rollout service) is unavailable",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these status codes, all with the :class:`Problem` body."""
    return {code: {"model": Problem, "description": _MEANING[code]} for code in codes}
