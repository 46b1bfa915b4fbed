"""Describe a data set: class counts, boxes per image, box sizes, image sizes.

:func:`compute_stats` gathers the numbers, :func:`print_stats` shows them as rich tables
and :func:`plot_stats` draws them into one PNG.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from trainer.data.dataset import DetectionDataset

QUANTILES = (("min", 0), ("p5", 5), ("median", 50), ("p95", 95), ("max", 100))


@dataclass
class DatasetStats:
    names: list[str]
    images: dict[str, int]  # split -> images
    class_counts: dict[str, np.ndarray]  # split -> (C,) boxes per class
    boxes_per_image: np.ndarray  # (I,)
    classes: np.ndarray  # (B,) class of every box
    sizes: np.ndarray  # (B, 4) box width, height in pixels, image width, height
    image_sizes: Counter  # (width, height) -> images

    @property
    def box_columns(self) -> dict[str, np.ndarray]:
        """Per-box measures, in pixels and relative to the image."""
        w, h, iw, ih = self.sizes.T if len(self.sizes) else np.zeros((4, 0))
        return {
            "width (px)": w,
            "height (px)": h,
            "area (px²)": w * h,
            "aspect (w/h)": w / np.maximum(h, 1e-9),
            "width (rel)": w / np.maximum(iw, 1),
            "height (rel)": h / np.maximum(ih, 1),
            "area (rel)": w * h / np.maximum(iw * ih, 1),
        }


def compute_stats(ds: DetectionDataset) -> DatasetStats:
    nc = len(ds.names)
    per_image, classes, sizes = [], [], []
    counts, images = {}, {}
    image_sizes: Counter = Counter()
    for split, samples in ds.splits.items():
        counts[split] = np.zeros(nc, np.int64)
        images[split] = len(samples)
        for sample in samples:
            per_image.append(len(sample.boxes))
            image_sizes[(sample.width, sample.height)] += 1
            if len(sample.boxes):
                counts[split] += np.bincount(sample.classes, minlength=nc)[:nc]
                classes.append(sample.classes)
                b = sample.boxes.astype(np.float64)
                wh = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
                sizes.append(
                    np.concatenate([wh, np.tile([sample.width, sample.height], (len(b), 1))], 1)
                )
    return DatasetStats(
        names=list(ds.names),
        images=images,
        class_counts=counts,
        boxes_per_image=np.array(per_image, np.int64),
        classes=np.concatenate(classes) if classes else np.zeros(0, np.int64),
        sizes=np.concatenate(sizes) if sizes else np.zeros((0, 4)),
        image_sizes=image_sizes,
    )


def quantiles(values: np.ndarray) -> list[float] | None:
    if len(values) == 0:
        return None
    return [float(v) for v in np.percentile(values, [q for _, q in QUANTILES])]


def print_stats(stats: DatasetStats, console: Console) -> None:
    splits = list(stats.images)
    classes = Table(title="Boxes per class")
    classes.add_column("class")
    for split in splits:
        classes.add_column(split, justify="right")
    classes.add_column("total", justify="right")
    for i, name in enumerate(stats.names):
        row = [int(stats.class_counts[s][i]) for s in splits]
        classes.add_row(name, *map(str, row), str(sum(row)))
    totals = [int(stats.class_counts[s].sum()) for s in splits]
    classes.add_row("[b]all[/b]", *map(str, totals), str(sum(totals)))
    console.print(classes)

    summary = Table(title="Images")
    summary.add_column("split")
    summary.add_column("images", justify="right")
    summary.add_column("without boxes", justify="right")
    start = 0
    for split in splits:
        n = stats.images[split]
        part = stats.boxes_per_image[start : start + n]
        summary.add_row(split, str(n), str(int((part == 0).sum())))
        start += n
    console.print(summary)

    sizes = Table(title="Sizes")
    sizes.add_column("measure")
    for name, _ in QUANTILES:
        sizes.add_column(name, justify="right")
    columns = {"boxes per image": stats.boxes_per_image.astype(float), **stats.box_columns}
    for label, values in columns.items():
        q = quantiles(values)
        cells = [_fmt(v) for v in q] if q else ["-"] * len(QUANTILES)
        sizes.add_row(label, *cells)
    console.print(sizes)

    shapes = Table(title="Image sizes")
    shapes.add_column("width x height")
    shapes.add_column("images", justify="right")
    for (w, h), n in stats.image_sizes.most_common(10):
        shapes.add_row(f"{w} x {h}", str(n))
    if len(stats.image_sizes) > 10:
        shapes.add_row(f"... {len(stats.image_sizes) - 10} more", "")
    console.print(shapes)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def plot_stats(stats: DatasetStats, path: Path) -> Path:
    """Draw class counts, box width-height, box areas and boxes per image into a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 9), layout="constrained")
    FigureCanvasAgg(fig)
    ax_cls, ax_wh, ax_area, ax_count = fig.subplots(2, 2).ravel()
    colors = [f"C{i % 10}" for i in range(len(stats.names))]

    x = np.arange(len(stats.names))
    width = 0.8 / max(len(stats.images), 1)
    for k, split in enumerate(stats.images):
        ax_cls.bar(x + k * width - 0.4 + width / 2, stats.class_counts[split], width, label=split)
    ax_cls.set_xticks(x, stats.names, rotation=30, ha="right")
    ax_cls.set_ylabel("boxes")
    ax_cls.set_title("Boxes per class")
    if stats.images:
        ax_cls.legend()

    w, h = stats.sizes[:, 0], stats.sizes[:, 1]
    for i, name in enumerate(stats.names):
        pick = stats.classes == i
        if pick.any():
            ax_wh.scatter(w[pick], h[pick], s=6, alpha=0.5, color=colors[i], label=name)
    ax_wh.set_xlabel("box width (px)")
    ax_wh.set_ylabel("box height (px)")
    ax_wh.set_title("Box width and height")
    if len(w):
        ax_wh.legend(markerscale=2, fontsize="small")

    area = w * h
    if len(area):
        bins = np.geomspace(max(area.min(), 1), max(area.max(), 2), 40)
        ax_area.hist(area, bins=bins, color="C0")
        ax_area.set_xscale("log")
    ax_area.set_xlabel("box area (px², log scale)")
    ax_area.set_ylabel("boxes")
    ax_area.set_title("Box area")

    counts = stats.boxes_per_image
    top = int(counts.max()) if len(counts) else 0
    ax_count.hist(counts, bins=np.arange(top + 2) - 0.5, color="C1", rwidth=0.8)
    ax_count.set_xlabel("boxes in the image")
    ax_count.set_ylabel("images")
    ax_count.set_title("Boxes per image")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
