"""Every ``slimspect`` command and sub-command answers ``--help``."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from slimspect.cli import COMMANDS, cli


def _walk(command: click.Command, path: list[str], ctx: click.Context):
    yield path
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            yield from _walk(sub, [*path, name], click.Context(sub, parent=ctx, info_name=name))


def _all_command_paths() -> list[list[str]]:
    ctx = click.Context(cli, info_name="slimspect")
    return list(_walk(cli, [], ctx))


def test_every_mounted_command_loads():
    ctx = click.Context(cli, info_name="slimspect")
    for name in COMMANDS:
        assert isinstance(cli.get_command(ctx, name), click.Command), name


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "slimspect")
def test_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    # A command without a docstring shows an empty summary: every command says what it does.
    assert result.output.split("\n\n")[1].strip(), f"'slimspect {' '.join(path)}' has no help text"


def test_root_help_imports_no_deployable():
    """Listing commands must stay cheap: no torch, no trainer import for `slimspect --help`."""
    code = (
        "import sys; from click.testing import CliRunner; from slimspect.cli import cli; "
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
        "bad = [m for m in ('torch', 'trainer', 'edge_agent', 'services') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_command_is_a_clear_error():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output
