"""Every failure answers ``{"detail": "<what is wrong>"}`` with the status that fits.

- invalid parameters (FastAPI's validation, and :class:`BadRequest` raised by the routes
  for what a type cannot express: a time that does not parse, from > to): 422, with one
  readable line per parameter;
- a cursor the API did not issue: 400;
- Redis unreachable: 503 (the client may retry); the model store unreachable: 503;
- anything unexpected: logged with its traceback, then a 500 that says nothing more
  (tests assert it never happens for any input).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.cursor import CursorError
from services.api.responses import Problem
from slimspect.errors import StoreUnreachableError

log = logging.getLogger("slimspect.api")


class BadRequest(HTTPException):
    """A parameter that passed its type but is still wrong (422, naming the parameter)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(422, f"{param}: {message}")
        self.param = param


def problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse(
        Problem(detail=detail, **extra).model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
    )


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("query", "path", "header", "body"):
        kind, rest = parts[0], parts[1:]
        return f"{'.'.join(rest) or kind} ({kind})"
    return ".".join(parts)


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"param": _where(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
    detail = "; ".join(f"{e['param']}: {e['message']}" for e in errors) or "invalid request"
    return problem(422, f"invalid parameters: {detail}", errors=errors)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return problem(exc.status_code, detail, headers=getattr(exc, "headers", None))


async def _cursor(request: Request, exc: CursorError) -> JSONResponse:
    return problem(400, f"cursor: {exc}")


async def _redis(request: Request, exc: RedisError) -> JSONResponse:
    log.warning("redis unavailable", extra={"path": request.url.path, "error": str(exc)})
    return problem(503, "event storage (Redis) is unavailable; retry later")


async def _store(request: Request, exc: StoreUnreachableError) -> JSONResponse:
    return problem(503, str(exc))


class CatchAll:
    """ASGI middleware: an unexpected error becomes a logged 500 with a JSON body.

    (Starlette's handler for ``Exception`` answers too, but then re-raises, which makes
    the server print a second, non-JSON traceback; here the error ends with its log line.)
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error(
                "unhandled error",
                exc_info=exc,
                extra={"method": scope.get("method"), "path": scope.get("path")},
            )
            if started:  # too late for a clean answer: let the server drop the connection
                raise
            await problem(500, "internal error (logged on the server)")(scope, receive, send)


def install(app: FastAPI) -> None:
    """Adds the handlers; :class:`CatchAll` is added by the app as its outermost middleware."""
    app.add_exception_handler(RequestValidationError, _validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    app.add_exception_handler(CursorError, _cursor)  # type: ignore[arg-type]
    app.add_exception_handler(RedisError, _redis)  # type: ignore[arg-type]
    app.add_exception_handler(StoreUnreachableError, _store)  # type: ignore[arg-type]
