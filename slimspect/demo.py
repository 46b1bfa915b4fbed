"""``slimspect demo``: the whole story on the embedded default, step by step.

Each step runs as its own ``slimspect`` sub-process, the way a user would type it, so the
demo exercises the real commands and the core never imports a deployable. Today the story
is the data set: synthesize it, check it, describe it. Later steps (train, compress,
publish, roll out, stream) join this list as they land.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console

console = Console()


def _steps(workdir: Path, images: int, size: int, seed: int) -> list[tuple[str, list[str]]]:
    data = workdir / "data"
    return [
        (
            "synthesize a defect data set",
            ["data", "synth", "--out", str(data), "--images", str(images),
             "--size", str(size), "--seed", str(seed), "--format", "yolo", "--overwrite"],
        ),
        ("check it", ["data", "check", str(data)]),
        ("print its statistics", ["data", "stats", str(data), "--plot", str(workdir / "stats.png")]),
    ]


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("runs/demo"),
              show_default=True, help="Where the demo writes everything it makes.")
@click.option("--images", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Synthetic images to generate.")
@click.option("--size", type=click.IntRange(min=64), default=200, show_default=True,
              help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(workdir: Path, images: int, size: int, seed: int) -> None:
    """Run the end-to-end story on the embedded default."""
    workdir.mkdir(parents=True, exist_ok=True)
    steps = _steps(workdir, images, size, seed)
    started = time.perf_counter()
    for number, (title, args) in enumerate(steps, 1):
        console.rule(f"[bold]step {number}/{len(steps)}: {title}")
        console.print(f"$ slimspect {' '.join(args)}", style="dim")
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "slimspect.cli", *args], check=False)
        if result.returncode != 0:
            raise click.ClickException(f"step {number} ({title}) failed with exit code {result.returncode}")
        console.print(f"[green]done[/] in {time.perf_counter() - t0:.1f} s")
    console.rule("[bold green]demo finished")
    console.print(f"{len(steps)} steps in {time.perf_counter() - started:.1f} s; outputs in {workdir}/")
