"""``slimspect data``: synth, convert, check and stats end to end on a tiny data set."""

from __future__ import annotations

import cv2
import pytest
from click.testing import CliRunner

from slimspect.cli import cli
from trainer.data.cli import data


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_synth_convert_check_stats(runner, tmp_path):
    ds = tmp_path / "ds"
    result = runner.invoke(
        cli,
        [
            "data",
            "synth",
            "--out",
            str(ds),
            "--images",
            "20",
            "--size",
            "64",
            "--seed",
            "1",
            "--format",
            "yolo",
            "--val-fraction",
            "0.25",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 20 images (15 train, 5 val)" in result.output
    assert "images/s" in result.output
    for fmt in ("voc", "coco"):
        converted = runner.invoke(data, ["convert", str(ds), str(tmp_path / fmt), "--to", fmt])
        assert converted.exit_code == 0, converted.output
        checked = runner.invoke(data, ["check", str(tmp_path / fmt)])
        assert checked.exit_code == 0 and checked.output.startswith("OK: 20 images, "), (
            checked.output
        )

    plot = tmp_path / "plots" / "stats.png"
    described = runner.invoke(data, ["stats", str(tmp_path / "coco"), "--plot", str(plot)])
    assert described.exit_code == 0, described.output
    for expected in (
        "Boxes per class",
        "crazing",
        "median",
        "width (px)",
        "64 x 64",
        f"wrote plot: {plot}",
    ):
        assert expected in described.output
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100

    default = runner.invoke(data, ["stats", str(ds)])
    assert default.exit_code == 0, default.output
    assert cv2.imread(str(ds / "stats.png")) is not None


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["synth", "--out", "{tmp}/x", "--images", "2", "--format", "tiff"],
            "unknown format 'tiff'",
        ),
        (["convert", "{tmp}/missing", "{tmp}/out", "--to", "voc"], "does not exist"),
        (["convert", "{tmp}", "{tmp}/out", "--to", "parquet"], "unknown format 'parquet'"),
        (["convert", "{tmp}", "{tmp}/out", "--to", "voc"], "cannot tell the format"),
        (["check", "{tmp}/missing"], "does not exist"),
        (["stats", "{tmp}/missing"], "does not exist"),
        (["stats", "{tmp}"], "cannot tell the format"),
    ],
)
def test_bad_input_is_one_clear_line(runner, tmp_path, args, message):
    result = runner.invoke(data, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_check_of_a_folder_of_something_else_exits_1(runner, tmp_path):
    result = runner.invoke(data, ["check", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path}:0: bad-layout: cannot tell the format" in result.output


def test_synth_refuses_a_folder_that_is_not_empty(runner, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = runner.invoke(data, ["synth", "--out", str(tmp_path), "--images", "2", "--size", "64"])
    assert result.exit_code == 1
    assert "not an empty folder" in result.output
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("command", [[], ["synth"], ["convert"], ["check"], ["stats"]])
def test_every_command_has_help(runner, command):
    result = runner.invoke(data, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3
