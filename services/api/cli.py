"""``slimspect api``: run the HTTP API (with the Fleet gRPC server) and manage API keys.

Options override :class:`ApiSettings` (``SLIMSPECT_API_*``), the rollout service's
settings (``SLIMSPECT_ROLLOUT_*``) and, with ``--model-store``, the model store's
(``SLIMSPECT_STORE_*``). Key commands talk to Redis directly, like ``slimspect aggregator
token``. Every expected failure prints one line (``Error: ...``) and exits 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import click
import redis.asyncio as aioredis

from services.api.keys import ROLE_NAMES, ApiKeyStore, Role
from services.api.settings import ApiSettings
from services.cli_errors import fail_cleanly

_CONTEXT = {"help_option_names": ["-h", "--help"]}


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


_fail_cleanly = fail_cleanly("settings")


def _with_keys(
    redis_url: str | None, action: Callable[[ApiKeyStore], Coroutine[Any, Any, Any]]
) -> Any:
    settings = ApiSettings(**_given(redis_url=redis_url))

    async def run() -> Any:
        redis = aioredis.Redis.from_url(settings.redis_url)
        try:
            return await action(ApiKeyStore(redis))
        finally:
            await redis.aclose()

    return asyncio.run(run())


@click.group(context_settings=_CONTEXT)
def api() -> None:
    """HTTP query API, dashboard and fleet rollouts (`serve`), and its API keys (`key`)."""


@api.command(context_settings=_CONTEXT)
@click.option("--host", help="HTTP listen address [env SLIMSPECT_API_HOST]")
@click.option("--port", type=int, help="HTTP port, 0: any free one [env SLIMSPECT_API_PORT]")
@click.option("--redis-url", help="redis://host:port/db [env SLIMSPECT_API_REDIS_URL]")
@click.option(
    "--fleet/--no-fleet",
    default=None,
    help="serve Fleet.Heartbeat (gRPC) [env SLIMSPECT_API_FLEET]",
)
@click.option("--fleet-port", type=int, help="Fleet gRPC port [env SLIMSPECT_ROLLOUT_PORT]")
@click.option(
    "--model-store/--no-model-store",
    default=None,
    help="list models of the S3 store of SLIMSPECT_STORE_* [env SLIMSPECT_API_MODEL_STORE]",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    help="[env SLIMSPECT_API_LOG_LEVEL]",
)
@_fail_cleanly
def serve(
    host: str | None,
    port: int | None,
    redis_url: str | None,
    fleet: bool | None,
    fleet_port: int | None,
    model_store: bool | None,
    log_level: str | None,
) -> None:
    """Run the API, the dashboard and the Fleet gRPC server until SIGTERM/SIGINT."""
    from services.api.server import serve as run_server
    from services.rollout.settings import RolloutSettings
    from slimspect.settings import StoreSettings

    settings = ApiSettings(
        **_given(
            host=host,
            port=port,
            redis_url=redis_url,
            fleet=fleet,
            model_store=model_store,
            log_level=log_level,
        )
    )
    rollout = RolloutSettings(**_given(port=fleet_port))
    store = StoreSettings() if settings.model_store else None
    asyncio.run(run_server(settings, rollout, store))


_redis_option = click.option(
    "--redis-url", help="redis://host:port/db [env SLIMSPECT_API_REDIS_URL]"
)


@api.group(context_settings=_CONTEXT)
def key() -> None:
    """API keys: viewer (read) or operator (also rollouts); stored hashed in Redis."""


@key.command("add", context_settings=_CONTEXT)
@click.argument("name")
@click.option("--role", type=click.Choice(ROLE_NAMES), required=True, help="what the key may do")
@_redis_option
@_fail_cleanly
def key_add(name: str, role: str, redis_url: str | None) -> None:
    """Create an API key named NAME and print it (shown once; only its hash is kept)."""
    value = _with_keys(redis_url, lambda s: s.add(name, Role[role]))
    click.echo(f"{role} key {name} (shown once, keep it secret):", err=True)
    click.echo(value)


@key.command("list", context_settings=_CONTEXT)
@_redis_option
@_fail_cleanly
def key_list(redis_url: str | None) -> None:
    """List API keys: name, role, creation time and hash prefix."""
    infos = _with_keys(redis_url, lambda s: s.list())
    if not infos:
        click.echo("no API keys")
        return
    for k in infos:
        created = datetime.fromtimestamp(k.created_at_ms / 1000, tz=UTC)
        click.echo(f"{k.name}\t{k.role.name}\t{created:%Y-%m-%d %H:%M:%S}Z\tsha256:{k.digest[:12]}")


@key.command("revoke", context_settings=_CONTEXT)
@click.argument("name")
@_redis_option
@_fail_cleanly
def key_revoke(name: str, redis_url: str | None) -> None:
    """Remove every API key named NAME (refused from the next request on)."""
    n = _with_keys(redis_url, lambda s: s.revoke(name))
    click.echo(f"revoked {n} key(s) named {name}")
