"""``slimspect up``, ``down`` and ``status``: the embedded stack (slimspect/embedded/stack.py).

Every expected failure prints one line (``Error: ...``) and exits 1, never a traceback; a
process that fails to start adds the tail of its log. ``status`` exits 0 when every
recorded process runs and answers, 1 when one does not, 3 when no stack is recorded.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from slimspect.embedded.stack import (
    DEFAULT_MODEL,
    DEFAULT_STATE_DIR,
    StackOptions,
)
from slimspect.embedded.stack import (
    down as stack_down,
)
from slimspect.embedded.stack import (
    status as stack_status,
)
from slimspect.embedded.stack import (
    up as stack_up,
)
from slimspect.errors import SlimspectError

NOT_RECORDED_EXIT = 3

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    envvar="SLIMSPECT_STACK_DIR",
    help="the stack's directory: stack.json, logs, data, credentials [env SLIMSPECT_STACK_DIR]",
)


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlimspectError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def _print_table(table: Table) -> None:
    Console(highlight=False).print(table)


def _short(path: str, state_dir: Path) -> str:
    try:
        return str(Path(path).relative_to(state_dir.resolve()))
    except ValueError:
        return path


@click.command(context_settings=_CONTEXT)
@click.option(
    "--stations", type=click.IntRange(0, 100), default=2, show_default=True,
    help="simulated stations (synthetic cameras)",
)  # fmt: skip
@_state_dir_option
@click.option("--ray/--no-ray", default=True, show_default=True, help="start a local Ray head")
@click.option("--ray-dashboard", is_flag=True, help="with the Ray dashboard (needs ray[default])")
@click.option(
    "--model-name", default=DEFAULT_MODEL, show_default=True,
    help="the model the stations wait for (SLIMSPECT_ROLLOUT_DEFAULT_MODEL of the API)",
)  # fmt: skip
@click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=1), default=180.0, show_default=True,
    help="seconds each process may take to answer",
)  # fmt: skip
@_fail_cleanly
def up(
    stations: int,
    state_dir: Path,
    ray: bool,
    ray_dashboard: bool,
    model_name: str,
    timeout_s: float,
) -> None:
    """Start Redis, the S3 store, Ray, the aggregator, the API and N stations, in the background."""
    options = StackOptions(
        state_dir=state_dir,
        stations=stations,
        ray=ray,
        ray_dashboard=ray_dashboard,
        model_name=model_name,
        startup_timeout_s=timeout_s,
    )
    click.echo(f"starting the stack in {state_dir.resolve()} ...")
    state = stack_up(options, echo=click.echo)
    table = Table("service", "URL / port", "pid", "log", title="slimspect stack")
    for s in state.services:
        table.add_row(s.name, s.url, str(s.process.pid), _short(s.process.log, state_dir))
    _print_table(table)
    ep, cred = state.endpoints, state.credentials
    click.echo(f"dashboard     {ep['dashboard']}")
    click.echo(f"operator key  {cred['operator_key']}")
    if "ray" in ep:
        click.echo(f"Ray           {ep['ray']} (Ray Client {ep['ray_client']})")
    click.echo(f"stations wait for a model named {ep['model_name']} to be published and rolled out")
    click.echo(f"use it from a shell:  source {cred['env']}")
    click.echo(f"stop it:              slimspect down --state-dir {state_dir}")


@click.command(context_settings=_CONTEXT)
@click.argument("name")
@_state_dir_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=120.0,
              show_default=True, help="seconds the process may take to answer")  # fmt: skip
@_fail_cleanly
def restart(name: str, state_dir: Path, timeout_s: float) -> None:
    """Restart one process of the stack as it was started: redis, aggregator or station-N.

    For a process that crashed, or was killed: the same argv, ports and log; the others
    reconnect to it on their own.
    """
    from slimspect.embedded.stack_restart import restart as stack_restart

    stack_restart(state_dir, name, timeout_s=timeout_s, echo=click.echo)


@click.command(context_settings=_CONTEXT)
@_state_dir_option
@_fail_cleanly
def down(state_dir: Path) -> None:
    """Stop every process of the stack (newest first); data, keys and logs stay."""
    stopped = stack_down(state_dir, echo=click.echo)
    if not stopped:
        click.echo(f"no stack recorded in {state_dir.resolve()}: nothing to stop")
        return
    click.echo(f"stack in {state_dir.resolve()} stopped ({len(stopped)} processes)")


@click.command(context_settings=_CONTEXT)
@_state_dir_option
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
@_fail_cleanly
def status(state_dir: Path, as_json: bool) -> None:
    """What runs: each process's pid, whether it is alive and answers; exit 1 if one does not."""
    rows = stack_status(state_dir)
    if rows is None:
        if as_json:
            click.echo("[]")
        else:
            click.echo(f"no stack recorded in {state_dir.resolve()}: nothing running")
        raise SystemExit(NOT_RECORDED_EXIT)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        table = Table("service", "pid", "state", "health", "URL / port")
        for r in rows:
            state = "running" if r.alive else "[red]dead[/]"
            health = r.detail if r.answering else f"[red]{r.detail}[/]"
            table.add_row(r.name, str(r.pid), state, health, r.url)
        _print_table(table)
    if not all(r.alive and r.answering for r in rows):
        raise SystemExit(1)
