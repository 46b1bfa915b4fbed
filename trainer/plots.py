"""Evaluation and training plots (matplotlib, Agg backend: no display needed).

* :func:`plot_pr_curve`: precision-recall at IoU 0.50 per class and their mean (mAP50).
* :func:`plot_confusion_matrix`: Ultralytics-style matrix, predicted (rows) x true (columns).
* :func:`plot_results_csv`: losses and metrics per epoch from an Ultralytics ``results.csv``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # before pyplot; harmless if already Agg
import matplotlib.pyplot as plt
import numpy as np

if TYPE_CHECKING:
    from trainer.evaluate import EvalResult

__all__ = ["RESULTS_COLUMNS", "plot_confusion_matrix", "plot_pr_curve", "plot_results_csv"]

# Ultralytics' results.csv columns (YOLOv5-style obj loss), in its plotting order.
RESULTS_COLUMNS = [
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision(B)",
    "metrics/recall(B)",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
    "lr/pg0",
]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def plot_pr_curve(result: EvalResult, path) -> Path:
    """COCO's interpolated precision (envelope) against recall at IoU 0.50, one line per class
    with ground truth (legend when 20 classes or fewer) and the class mean in bold."""
    curves = result.pr_curves
    fig, ax = plt.subplots(1, 1, figsize=(9, 6), tight_layout=True)
    has_gt = [c.has_gt for c in result.per_class]
    show_legend = sum(has_gt) <= 20
    for c, keep in zip(result.per_class, has_gt, strict=True):
        if keep:
            ax.plot(
                curves.recall,
                curves.precision[c.class_id],
                linewidth=1,
                label=f"{c.name} {c.ap50:.3f}" if show_legend else None,
            )
    if any(has_gt):
        mean = curves.precision[np.asarray(has_gt)].mean(0)
        ax.plot(
            curves.recall,
            mean,
            linewidth=3,
            color="blue",
            label=f"all classes {result.map50:.3f} mAP@0.5",
        )
    else:
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title("Precision-Recall Curve (IoU 0.50)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(bbox_to_anchor=(1.04, 1), loc="upper left")
    return _save(fig, path)


def plot_confusion_matrix(result: EvalResult, path, normalize: bool = True) -> Path:
    """Rows: predicted class, columns: true class, last row/column "background".

    ``normalize`` divides each column by its total (fraction of each true class)."""
    cm = result.confusion
    m = cm.normalized() if normalize else cm.matrix.astype(np.float64)
    n = len(cm.names)
    size = max(6.0, 0.6 * n + 2)
    fig, ax = plt.subplots(1, 1, figsize=(size * 1.15, size), tight_layout=True)
    shown = np.where(m < 0.005, np.nan, m) if normalize else np.where(m == 0, np.nan, m)
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= 30:
        top = np.nanmax(shown) if np.isfinite(shown).any() else 1.0
        for i in range(n):
            for j in range(n):
                v = shown[i, j]
                if np.isfinite(v):
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}" if normalize else f"{int(v)}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if v > 0.5 * top else "black",
                    )
        ax.set_xticks(range(n), cm.names, rotation=90)
        ax.set_yticks(range(n), cm.names)
    ax.set_xlabel("True")
    ax.set_ylabel("Predicted")
    title = "Confusion Matrix" + (" Normalized" if normalize else "")
    ax.set_title(f"{title} (IoU {cm.iou_threshold:g}, conf {cm.conf_threshold:g})")
    return _save(fig, path)


def _read_results_csv(csv_path) -> dict[str, np.ndarray]:
    with Path(csv_path).open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{csv_path} is empty")
    header = [h.strip() for h in rows[0]]
    data: dict[str, np.ndarray] = {}
    for k, name in enumerate(header):
        vals = []
        for r in rows[1:]:
            try:
                vals.append(float(r[k]))
            except (IndexError, ValueError):
                vals.append(math.nan)
        data[name] = np.asarray(vals, dtype=np.float64)
    return data


def plot_results_csv(csv_path, out_png) -> Path:
    """One panel per column of ``results.csv`` against ``epoch`` (row index when absent):
    the Ultralytics columns that exist, in their usual order, then any other numeric column."""
    data = _read_results_csv(csv_path)
    n_rows = len(next(iter(data.values())))
    x = data.pop("epoch", np.arange(n_rows, dtype=np.float64))
    known = [c for c in RESULTS_COLUMNS if c in data]
    extra = [c for c in data if c not in RESULTS_COLUMNS and c and np.isfinite(data[c]).any()]
    cols = known + extra
    ncols = min(5, max(1, len(cols)))
    nrows = max(1, math.ceil(len(cols) / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows), tight_layout=True, squeeze=False
    )
    for ax, name in zip(axes.flat, cols, strict=False):
        y = data[name]
        ok = np.isfinite(y)
        ax.plot(x[ok], y[ok], marker=".", linewidth=1.5, markersize=6)
        ax.set_title(name, fontsize=11)
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    if not cols:
        axes.flat[0].text(0.5, 0.5, "no columns to plot", ha="center", va="center")
    return _save(fig, out_png)
