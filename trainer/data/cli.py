"""``slimspect data``: synthesize, convert, check and describe defect data sets."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import click

from trainer.data.problems import DatasetError

WRITABLE = ("yolo", "voc", "coco")
READABLE = ("yolo", "coco", "voc", "neu")


def _choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if value is not None and value.lower() not in allowed:
        raise click.ClickException(f"unknown {what} {value!r}: choose one of {', '.join(allowed)}")
    return value.lower() if value else None


def _existing(path: Path) -> Path:
    if not path.exists():
        raise click.ClickException(f"{path} does not exist")
    return path


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def data() -> None:
    """Synthesize, convert, check and describe defect data sets (YOLO, COCO, VOC, NEU-DET)."""


@data.command()
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="New or empty folder to write to."
)
@click.option(
    "--images",
    default=2000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of images.",
)
@click.option(
    "--size",
    default=200,
    show_default=True,
    type=click.IntRange(min=32),
    help="Image side in pixels.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Random seed: the same seed writes byte-identical files.",
)
@click.option("--format", "fmt", default="yolo", show_default=True, help="yolo, voc or coco.")
@click.option(
    "--val-fraction",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Share of images held out as the val split.",
)
@click.option(
    "--overwrite", is_flag=True, help="Delete what is in --out first (otherwise it must be empty)."
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Processes to draw with (the files do not depend on it).",
)
@click.option(
    "--contrast",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, max=20, min_open=True),
    help="Scale of every defect's contrast (1: faint to strong, as NEU-DET; 3: plain to see).",
)
def synth(
    out: Path,
    images: int,
    size: int,
    seed: int,
    fmt: str,
    val_fraction: float,
    overwrite: bool,
    workers: int,
    contrast: float,
) -> None:
    """Write a synthetic NEU-DET-like data set: grey steel with six kinds of boxed defects."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from trainer.data.synth import synthesize

    fmt = _choice(fmt, WRITABLE, "format")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise click.ClickException(
                f"{out} exists and is not an empty folder; choose a new one or pass --overwrite"
            )
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    start = time.perf_counter()
    try:
        with Progress(*columns) as progress:
            task = progress.add_task("synth", total=images)
            ds = synthesize(
                out,
                images,
                size=size,
                seed=seed,
                fmt=fmt,
                val_fraction=val_fraction,
                workers=workers,
                progress=lambda n: progress.advance(task, n),
                contrast=contrast,
            )
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    seconds = time.perf_counter() - start
    split_text = ", ".join(f"{len(v)} {k}" for k, v in ds.splits.items())
    click.echo(
        f"wrote {ds.num_images} images ({split_text}), {ds.num_boxes} boxes, {fmt}, to {out}"
    )
    click.echo(f"{seconds:.2f} s: {ds.num_images / seconds:.0f} images/s")


@data.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, help="Output format: yolo, voc or coco.")
@click.option(
    "--from", "src_format", default=None, help="Input format (default: told from the layout)."
)
def convert(src: Path, dst: Path, to: str, src_format: str | None) -> None:
    """Convert the data set SRC (YOLO, COCO, VOC or NEU-DET) into a new folder DST."""
    from trainer.data.convert import convert as run

    to = _choice(to, WRITABLE, "format")
    src_format = _choice(src_format, READABLE, "input format")
    try:
        ds = run(_existing(src), dst, to, src_format)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {ds.num_images} images, {ds.num_boxes} boxes, {to}, to {dst}")


@data.command()
@click.argument("path", metavar="DIR", type=click.Path(path_type=Path))
def check(path: Path) -> None:
    """Report every problem of the data set in DIR as file:line: kind: message.

    Exits 1 if there is any problem, 0 otherwise.
    """
    from trainer.data.check import inspect

    ds, problems = inspect(_existing(path))
    for problem in problems:
        click.echo(str(problem))
    if problems:
        click.echo(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}", err=True)
        raise SystemExit(1)
    click.echo(f"OK: {ds.num_images} images, {ds.num_boxes} boxes")


@data.command()
@click.argument("path", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=None,
    help="PNG to draw the figures into (default: stats.png in DIR, else here).",
)
def stats(path: Path, plot: Path | None) -> None:
    """Describe the data set in DIR: class counts, boxes per image, box and image sizes."""
    from rich.console import Console

    from trainer.data.formats import read_dataset
    from trainer.data.stats import compute_stats, plot_stats, print_stats

    try:
        ds = read_dataset(_existing(path))
    except DatasetError as exc:
        raise click.ClickException(
            f"{exc} (run 'slimspect data check' to see every problem)"
        ) from exc
    numbers = compute_stats(ds)
    print_stats(numbers, Console())
    folder = path if path.is_dir() else path.parent
    plot = plot or (folder / "stats.png" if os.access(folder, os.W_OK) else Path("stats.png"))
    click.echo(f"wrote plot: {plot_stats(numbers, plot)}")


def _mount_preview() -> None:
    from trainer.data.preview import preview

    data.add_command(preview)


_mount_preview()
