"""``slimspect aggregator``: run the ingest server (the default) and manage station tokens.

Options override :class:`AggregatorSettings` (``SLIMSPECT_AGGREGATOR_*``). Every expected
failure prints one line (``Error: ...``) and exits 1, never a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import click
import redis.asyncio as aioredis

from services.aggregator.auth import TokenStore, token_store
from services.aggregator.settings import AggregatorSettings
from services.cli_errors import fail_cleanly

_CONTEXT = {"help_option_names": ["-h", "--help"]}


def _settings(**overrides: Any) -> AggregatorSettings:
    return AggregatorSettings(**{k: v for k, v in overrides.items() if v is not None})


_fail_cleanly = fail_cleanly("aggregator settings")


def _with_tokens(
    settings: AggregatorSettings, action: Callable[[TokenStore], Coroutine[Any, Any, Any]]
) -> Any:
    async def run() -> Any:
        redis = aioredis.Redis.from_url(settings.redis_url)
        try:
            return await action(token_store(settings, redis))
        finally:
            await redis.aclose()

    return asyncio.run(run())


_serve_options = [
    click.option("--host", help="listen address [env SLIMSPECT_AGGREGATOR_HOST]"),
    click.option("--port", type=int, help="gRPC port [env SLIMSPECT_AGGREGATOR_PORT]"),
    click.option("--redis-url", help="redis://host:port/db [env SLIMSPECT_AGGREGATOR_REDIS_URL]"),
    click.option(
        "--metrics-port", type=int, help="Prometheus /metrics port [env ..._METRICS_PORT]"
    ),
]


def _add(options: list[Callable[..., Any]]) -> Callable[..., Any]:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


@click.group(invoke_without_command=True, context_settings=_CONTEXT)
@click.pass_context
def aggregator(ctx: click.Context) -> None:
    """gRPC ingest of inspection events into Redis (runs `serve` when no command is given)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@aggregator.command(context_settings=_CONTEXT)
@_add(_serve_options)
@_fail_cleanly
def serve(**overrides: Any) -> None:
    """Run the aggregator until SIGTERM/SIGINT (then stop gracefully)."""
    from services.aggregator.server import serve as run_server

    asyncio.run(run_server(_settings(**overrides)))


_redis_option = click.option(
    "--redis-url", help="redis://host:port/db [env SLIMSPECT_AGGREGATOR_REDIS_URL]"
)


@aggregator.group(context_settings=_CONTEXT)
def token() -> None:
    """Station tokens (stored hashed; the token store is SLIMSPECT_AGGREGATOR_TOKEN_STORE)."""


@token.command("add", context_settings=_CONTEXT)
@click.argument("station")
@_redis_option
@_fail_cleanly
def token_add(station: str, redis_url: str | None) -> None:
    """Create a token for STATION and print it (shown once; only its hash is kept)."""
    value = _with_tokens(_settings(redis_url=redis_url), lambda s: s.add(station))
    click.echo(f"token for station {station} (shown once, keep it secret):", err=True)
    click.echo(value)


@token.command("list", context_settings=_CONTEXT)
@_redis_option
@_fail_cleanly
def token_list(redis_url: str | None) -> None:
    """List stations with their tokens' creation time and hash prefix."""
    infos = _with_tokens(_settings(redis_url=redis_url), lambda s: s.list())
    if not infos:
        click.echo("no tokens")
        return
    for t in infos:
        created = datetime.fromtimestamp(t.created_at_ms / 1000, tz=UTC)
        click.echo(f"{t.station}\t{created:%Y-%m-%d %H:%M:%S}Z\tsha256:{t.digest[:12]}")


@token.command("revoke", context_settings=_CONTEXT)
@click.argument("station")
@_redis_option
@_fail_cleanly
def token_revoke(station: str, redis_url: str | None) -> None:
    """Remove every token of STATION (its open streams keep running until they reconnect)."""
    n = _with_tokens(_settings(redis_url=redis_url), lambda s: s.revoke(station))
    click.echo(f"revoked {n} token(s) of station {station}")
