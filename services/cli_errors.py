"""One rule for how the services' commands fail: a one-line message, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from pydantic import ValidationError
from redis.exceptions import RedisError


def fail_cleanly(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn bad ``what`` (settings), Redis and OS errors of a command into ClickExceptions."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ValidationError as exc:
                errors = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                    for e in exc.errors()
                )
                raise click.ClickException(f"invalid {what}: {errors}") from None
            except RedisError as exc:
                raise click.ClickException(f"redis: {exc}") from None
            except (OSError, ValueError) as exc:
                raise click.ClickException(str(exc)) from None

        return wrapper

    return decorate
