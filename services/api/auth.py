"""Who is calling: the API key of a request, checked against its role.

A key is sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (both declared in
the OpenAPI document, so /docs can authorize). Routes declare the role they need with
``Depends(require(Role.viewer))``; the caller is kept on ``request.state.caller`` (the
rollout routes record its name as the actor).

- no key, or one that is unknown or revoked: 401 with ``WWW-Authenticate: Bearer``;
- a valid key whose role is too low: 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.api.context import Ctx
from services.api.keys import KeyInfo, Role

_bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer <key>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require(role: Role) -> Callable[..., Awaitable[KeyInfo]]:
    """A dependency that returns the caller's key, or refuses with 401/403."""

    async def caller(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header: Annotated[str | None, Depends(_header)],
        ctx: Ctx,
    ) -> KeyInfo:
        key = (bearer.credentials if bearer else None) or header
        if not key:
            raise HTTPException(
                401,
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers=_CHALLENGE,
            )
        info = await ctx.keys.lookup(key.strip())
        if info is None:
            raise HTTPException(401, "unknown or revoked API key", headers=_CHALLENGE)
        if info.role < role:
            raise HTTPException(
                403, f"key {info.name!r} has role {info.role.name}; this needs {role.name}"
            )
        request.state.caller = info
        return info

    return caller


viewer = require(Role.viewer)
operator = require(Role.operator)
