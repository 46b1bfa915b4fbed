"""``slimspect agent --config station.yaml``: run the station agent until SIGTERM or SIGINT.

Exit status: 0 after a graceful stop, 2 when the configuration cannot work (the message
names the key; the systemd unit does not restart on it), 1 on any other failure (the unit
restarts the agent).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from edge_agent.errors import ConfigError
from edge_agent.settings import ENV_PREFIX, load_settings
from slimspect.logs import configure_logging

log = logging.getLogger("slimspect.agent")

CONFIG_EXIT = 2


@click.command("agent")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar=ENV_PREFIX + "CONFIG",
    help=f"Station YAML file [env {ENV_PREFIX}CONFIG]; {ENV_PREFIX}<KEY> variables override it.",
)
@click.option("--check", is_flag=True, help="Check the configuration, print it, and exit.")
def agent(config_path: Path | None, check: bool) -> None:
    """Run the station agent: cameras, ONNX Runtime, spool, uplink, heartbeat and updates."""
    try:
        settings = load_settings(config_path)
    except ConfigError as exc:
        click.echo(f"error: configuration: {exc}", err=True)
        raise SystemExit(CONFIG_EXIT) from None
    if check:
        click.echo(settings.model_dump_json(indent=2, exclude={"token"}))
        return
    configure_logging(settings.log_level)
    try:
        asyncio.run(_serve(settings))
    except ConfigError as exc:
        log.error("configuration error", extra={"key": exc.key, "error": str(exc)})
        click.echo(f"error: configuration: {exc}", err=True)
        raise SystemExit(CONFIG_EXIT) from None


async def _serve(settings) -> None:
    from edge_agent.agent import Agent  # after the settings: a bad config answers fast

    agent = Agent(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()
