"""``slimspect stations`` and ``slimspect rollout start|status|promote|rollback|list``:
thin clients of the HTTP API (client.py) that print rich tables.

Reading needs a viewer key, acting an operator key (``--key`` or SLIMSPECT_API_KEY). An
unreachable API or an error answer prints ``Error: <the API's message>`` and exits 1.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from services.api.client import ApiClient, ApiError, ClientSettings

_CONTEXT = {"help_option_names": ["-h", "--help"]}


def _client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--key", help="API key [env SLIMSPECT_API_KEY]")(fn)
    fn = click.option(
        "--api", "api_url", help="API URL, default http://127.0.0.1:8080 [env SLIMSPECT_API_URL]"
    )(fn)
    return fn


def _calls_api(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Builds the client from --api/--key/env, passes it as ``client``, turns errors into exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, api_url: str | None, key: str | None, **kwargs: Any) -> Any:
        try:
            settings = ClientSettings(
                **{k: v for k, v in {"url": api_url, "key": key}.items() if v}
            )
        except ValidationError as exc:
            raise click.ClickException(f"invalid client settings: {exc}") from None
        try:
            with ApiClient.from_settings(settings) as client:
                return fn(*args, client=client, **kwargs)
        except ApiError as exc:
            raise click.ClickException(str(exc)) from None

    return _client_options(wrapper)


def _print(table: Table) -> None:
    Console(highlight=False).print(table)


def _ago(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = max(0.0, time.time() - ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _or_dash(value: Any) -> str:
    return "-" if value in (None, "") else str(value)


@click.command(context_settings=_CONTEXT)
@_calls_api
def stations(client: ApiClient) -> None:
    """List stations: status, model, health, FPS, spool, newest heartbeat and event."""
    rows = client.get("/v1/stations")
    table = Table(title=f"{len(rows)} station(s)")
    for column in ("station", "status", "model", "channel", "health", "fps", "spool"):
        table.add_column(column)
    table.add_column("heartbeat")
    table.add_column("last event")
    colors = {"online": "green", "offline": "red", "no heartbeat": "yellow"}
    for s in rows:
        fleet = s.get("fleet") or {}
        model = f"{s['model_name']} {s['model_version']}" if s.get("model_name") else "-"
        table.add_row(
            s["station"],
            f"[{colors.get(s['status'], 'white')}]{s['status']}[/]",
            model,
            _or_dash(fleet.get("channel")),
            _or_dash(fleet.get("health")),
            f"{fleet['fps']:.1f}" if fleet else "-",
            _or_dash(fleet.get("spool_depth")),
            _ago(s.get("last_heartbeat_ms")),
            _ago(s.get("last_event_ms")),
        )
    _print(table)


@click.group(context_settings=_CONTEXT)
def rollout() -> None:
    """Start, inspect, promote and roll back model rollouts (through the API)."""


def _rollout_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "model", "version", "from", "channel", "target", "state", "by", "created"):
        table.add_column(column)
    for r in rows:
        target = (
            ", ".join(r["stations"])
            if r.get("stations")
            else (f"{r['share']:.0%} of fleet" if r.get("share") else "all")
        )
        table.add_row(
            r["id"],
            r["model_name"],
            r["version"],
            _or_dash(r.get("previous_version")),
            r["channel"],
            target,
            r["state"],
            r["created_by"],
            _when(r["created_at_ms"]),
        )
    return table


@rollout.command("start", context_settings=_CONTEXT)
@click.argument("model_name")
@click.argument("version")
@click.option("--share", type=float, help="canary share of the fleet, in (0, 1]")
@click.option("--station", "station_list", multiple=True, help="a canary station (repeatable)")
@click.option(
    "--channel",
    type=click.Choice(["canary", "stable"]),
    default="canary",
    show_default=True,
    help="stable: set the stable version at once (no --share/--station)",
)
@click.option("--reason", default="", help="why (recorded in the audit log)")
@click.option("--soak-s", type=float, help="seconds canaries run before promotion")
@_calls_api
def rollout_start(
    client: ApiClient,
    model_name: str,
    version: str,
    share: float | None,
    station_list: tuple[str, ...],
    channel: str,
    reason: str,
    soak_s: float | None,
) -> None:
    """Start rolling VERSION of MODEL_NAME out (operator key)."""
    body: dict[str, Any] = {
        "model_name": model_name,
        "version": version,
        "channel": channel,
        "reason": reason,
    }
    if share is not None:
        body["share"] = share
    if station_list:
        body["stations"] = list(station_list)
    if soak_s is not None:
        body["soak_s"] = soak_s
    r = client.post("/v1/rollouts", body)
    _print(_rollout_table([r], "rollout started"))


@rollout.command("list", context_settings=_CONTEXT)
@click.option("--model", "model_name", help="only this model")
@click.option("--active", is_flag=True, help="only active rollouts")
@_calls_api
def rollout_list(client: ApiClient, model_name: str | None, active: bool) -> None:
    """List rollouts, newest first."""
    rows = client.get("/v1/rollouts", model_name=model_name, active_only=active or None)
    _print(_rollout_table(rows, f"{len(rows)} rollout(s)"))


@rollout.command("status", context_settings=_CONTEXT)
@click.argument("rollout_id")
@_calls_api
def rollout_status(client: ApiClient, rollout_id: str) -> None:
    """Show a rollout: its canary stations and the promotion gate's verdict."""
    p = client.get(f"/v1/rollouts/{quote(rollout_id, safe='')}")
    r, gate = p["rollout"], p["gate"]
    _print(_rollout_table([r], f"rollout {r['id']}"))
    table = Table(title="canary stations")
    for column in ("station", "online", "version", "soaked", "health", "fps ratio", "update"):
        table.add_column(column)
    for s in p["stations"]:
        table.add_row(
            s["station"],
            "yes" if s["online"] else "no",
            _or_dash(s.get("model_version")),
            f"{s['soaked_s']:.0f}s / {r['soak_s']:.0f}s",
            _or_dash(s.get("health")),
            "-" if s.get("fps_ratio") is None else f"{s['fps_ratio']:.2f}",
            _or_dash(s.get("update_status")),
        )
    _print(table)
    click.echo(f"gate: {gate['verdict']}: {gate['reason']}")
    for blocker in gate.get("blockers") or []:
        click.echo(f"  - {blocker}")


@rollout.command("promote", context_settings=_CONTEXT)
@click.argument("rollout_id")
@click.option("--force", is_flag=True, help="promote even though the gate has not passed")
@click.option("--reason", default="", help="why (recorded in the audit log)")
@_calls_api
def rollout_promote(client: ApiClient, rollout_id: str, force: bool, reason: str) -> None:
    """Promote a canary rollout: its version becomes stable (operator key)."""
    r = client.post(
        f"/v1/rollouts/{quote(rollout_id, safe='')}/promote", {"force": force, "reason": reason}
    )
    _print(_rollout_table([r], "promoted"))


@rollout.command("rollback", context_settings=_CONTEXT)
@click.argument("rollout_id")
@click.option("--reason", default="", help="why (recorded in the audit log)")
@_calls_api
def rollout_rollback(client: ApiClient, rollout_id: str, reason: str) -> None:
    """Roll a canary rollout back to the stable version (operator key)."""
    r = client.post(f"/v1/rollouts/{quote(rollout_id, safe='')}/rollback", {"reason": reason})
    _print(_rollout_table([r], "rolled back"))
