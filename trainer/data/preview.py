"""Preview of the training augmentation: a grid PNG of augmented samples with their boxes
and class names drawn, to see at a glance that boxes still sit on the defects."""

from __future__ import annotations

import math
from pathlib import Path

import click
import cv2
import numpy as np

from trainer.data.augment import AugmentConfig, Augmenter, SampleProvider
from trainer.data.loader import open_provider

# BGR, one per class id (mod the length): distinct on grey steel.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (56, 56, 255),
    (151, 157, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (187, 212, 0),
    (255, 194, 0),
    (255, 115, 100),
    (236, 24, 0),
    (255, 56, 132),
    (199, 55, 255),
)
GAP = 2  # pixels between tiles


def draw_sample(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, names=()) -> np.ndarray:
    """A BGR copy of ``image`` with each box outlined and labelled with its class name."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.35
    for box, k in zip(np.rint(boxes).astype(int).tolist(), classes.tolist()):
        colour = PALETTE[k % len(PALETTE)]
        # Box edges are pixel edges: the last pixel inside is x2 - 1.
        p1 = (box[0], box[1])
        p2 = (max(box[0], box[2] - 1), max(box[1], box[3] - 1))
        cv2.rectangle(canvas, p1, p2, colour, 1, cv2.LINE_AA)
        label = names[k] if 0 <= k < len(names) else str(k)
        (tw, th), base = cv2.getTextSize(label, font, scale, 1)
        ty = p1[1] - 2 if p1[1] - th - base - 2 >= 0 else min(p2[1] + th + 2, canvas.shape[0] - 1)
        cv2.rectangle(canvas, (p1[0], ty - th - 1), (p1[0] + tw + 1, ty + base - 1), colour, -1)
        cv2.putText(canvas, label, (p1[0] + 1, ty - 1), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def tile_grid(tiles: list[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Equal-sized BGR tiles in rows of ``columns`` (default: a square grid), ``GAP`` apart."""
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    h, w = tiles[0].shape[:2]
    grid = np.full((rows * (h + GAP) - GAP, columns * (w + GAP) - GAP, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (h + GAP) : r * (h + GAP) + h, c * (w + GAP) : c * (w + GAP) + w] = tile
    return grid


def preview_grid(
    data: Path | str | SampleProvider,
    config: AugmentConfig,
    out_png: Path | str,
    n: int = 16,
    seed: int = 0,
    imgsz: int = 256,
    names: list[str] | None = None,
    split: str | None = "train",
) -> Path:
    """Write a grid PNG of ``n`` augmented samples with boxes and class names drawn.

    Args:
        data: a data set path readable by ``trainer.data.formats.read_dataset``, or a
            sample provider (``load(i) -> (image, boxes, classes)`` and ``len``).
        config: the augmentation to show.
        out_png: where the PNG goes; parent folders are made.
        n: number of samples; distinct ones while the data set has enough.
        seed: seeds the choice of samples and their augmentation.
        imgsz: side of each augmented sample.
        names: class names (a data set path brings its own).
        split: which split of a data set path to draw from.

    Returns:
        The path written.
    """
    if isinstance(data, (str, Path)):
        provider, ds_names = open_provider(Path(data), split)
        names = names if names is not None else ds_names
    else:
        provider = data
    if len(provider) == 0:
        raise ValueError("no samples to preview")
    augmenter = Augmenter(config, imgsz, seed=seed)
    order = np.random.default_rng(seed).permutation(len(provider))
    tiles = []
    for i in range(n):
        index = int(order[i % len(order)])
        sample = augmenter(provider, index, augmenter.rng_for(index, epoch=i // len(order)))
        tiles.append(draw_sample(*sample, names=names or ()))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), tile_grid(tiles)):
        raise OSError(f"could not write {out_png}")
    return out_png


@click.command("preview")
@click.argument("data", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("preview.png"),
    show_default=True,
    help="PNG to write.",
)
@click.option("--n", type=click.IntRange(1, 256), default=16, show_default=True, help="Samples.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of samples and augmentation."
)
@click.option(
    "--imgsz",
    type=click.IntRange(32, 2048),
    default=256,
    show_default=True,
    help="Sample side, px.",
)
@click.option("--split", default="train", show_default=True, help="Split to draw from.")
@click.option("--no-augment", is_flag=True, help="Letterbox only: check the labels themselves.")
def preview(
    data: Path, out: Path, n: int, seed: int, imgsz: int, split: str, no_augment: bool
) -> None:
    """Write a grid PNG of augmented training samples of DATA with their boxes drawn."""
    from trainer.data.problems import DatasetError

    config = AugmentConfig.none() if no_augment else AugmentConfig()
    try:
        written = preview_grid(data, config, out, n=n, seed=seed, imgsz=imgsz, split=split)
    except (DatasetError, RuntimeError, ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {written}")
