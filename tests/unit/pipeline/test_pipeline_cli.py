"""``slimspect pipeline run``: a bad config or run id is a clear one-line error, before
anything starts (no Ray, no store)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from slimspect.cli import cli


def test_pipeline_is_a_slimspect_command():
    result = CliRunner().invoke(cli, ["pipeline", "run", "--help"])
    assert result.exit_code == 0, result.output
    assert "--address" in result.output and "--run-id" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sparse: {s: [1, 2\n", "not valid YAML"),
        ("sparse:\n  epochs: many\n", "sparse.epochs: Input should be a valid integer"),
    ],
)
def test_bad_yaml(tmp_path, text, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["pipeline", "run", str(path)])
    assert result.exit_code == 1
    assert f"Error: {path}" in result.output and message in result.output
    assert "Traceback" not in result.output


def test_missing_file(tmp_path):
    result = CliRunner().invoke(cli, ["pipeline", "run", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and "cannot read" in result.output


def test_bad_run_id(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("{}\n")
    result = CliRunner().invoke(cli, ["pipeline", "run", str(path), "--run-id", "../x"])
    assert result.exit_code == 1 and "run id '../x'" in result.output
