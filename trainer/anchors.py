"""Anchor boxes from the label statistics: K-means++ under the distance ``1 - IoU``.

Step 2 of the paper: cluster the widths and heights of the training labels (in the pixels
of the network input, i.e. after the letterbox) into 9 anchors, 3 per output scale, with
the distance ``d(box, centroid) = 1 - IoU(box, centroid)`` where both boxes are placed at
a common corner, so only their sizes matter. Big and small boxes are then treated alike
(a Euclidean distance would let the big boxes dominate).

Numpy only. Centroids are updated with the per-cluster **median** of widths and heights
(as the original darknet/YOLOv2 anchor scripts do): the ``1 - IoU`` objective has no closed
form minimiser, so the mean is not "the right" update either, and the median is robust to
the long tail of box sizes that defect data has (a few huge scratches, many pinholes)
and to a few mislabelled boxes. Lloyd iterations stop when the assignment no longer
changes.

Fitness: the mean over labels of the best-anchor IoU, and the best possible recall (BPR),
the share of labels that some anchor can learn: ``max(w/aw, aw/w, h/ah, ah/h) < 4``. This
ratio form is chosen because it is exactly the rule that assigns labels to anchors in
``trainer/loss.py`` (``anchor_t = 4``), itself the reach of the decode, whose
``wh = (2*sigmoid(t))**2 * anchor`` cannot exceed 4x the anchor: a label outside it is
never trained on. The IoU form (best IoU > 0.25, the IoU of a box 4x its anchor along one
side) is reported too, as ``bpr_iou``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_YOLOV4_ANCHORS = np.array(
    [
        [12, 16],
        [19, 36],
        [40, 28],
        [36, 75],
        [76, 55],
        [72, 146],
        [142, 110],
        [192, 243],
        [459, 401],
    ],
    dtype=np.float64,
)
"""The YOLOv4 (MS COCO) anchors, (9, 2) width, height in pixels of a 608 x 608 input."""

DEFAULT_ANCHOR_SIZE = 608
"""The input size the default anchors are given for."""

BPR_RATIO_THRESHOLD = 4.0
"""A label is recallable when an anchor is within this factor on both sides (loss anchor_t)."""

BPR_IOU_THRESHOLD = 0.25
"""The secondary, IoU form: best-anchor IoU above this."""


def _hw(size: int | Sequence[int]) -> tuple[float, float]:
    """``416`` or ``(H, W)`` -> ``(H, W)``."""
    if isinstance(size, (int, float, np.integer, np.floating)):
        return float(size), float(size)
    h, w = size
    return float(h), float(w)


def _check_wh(wh: np.ndarray, name: str = "wh") -> np.ndarray:
    """(N, 2) positive finite widths and heights, as float64; a clear error otherwise."""
    arr = np.asarray(wh, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) (width, height), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values")
    bad = np.nonzero(np.any(arr <= 0, axis=1))[0]
    if bad.size:
        raise ValueError(
            f"{name} holds {bad.size} zero- or negative-size boxes (first at row {bad[0]}: "
            f"{arr[bad[0]].tolist()}); drop degenerate labels before clustering"
        )
    return arr


def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of sizes aligned at a common corner: (N, 2) x (K, 2) -> (N, K).

    ``min(w1, w2) * min(h1, h2) / (w1*h1 + w2*h2 - min(w1, w2) * min(h1, h2))``.
    """
    a = np.asarray(wh, dtype=np.float64)[:, None, :]  # (N, 1, 2)
    b = np.asarray(anchors, dtype=np.float64)[None, :, :]  # (1, K, 2)
    inter = np.minimum(a, b).prod(axis=2)  # (N, K)
    return inter / (a.prod(axis=2) + b.prod(axis=2) - inter)


def scale_anchors(
    anchors: np.ndarray | Sequence[float],
    from_size: int | Sequence[int],
    to_size: int | Sequence[int],
) -> np.ndarray:
    """Anchors (K, 2) (or flat) for an input of ``from_size`` -> for ``to_size``.

    Sizes are an int (square) or ``(H, W)``; widths scale with W, heights with H.
    """
    a = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)  # (K, 2)
    fh, fw = _hw(from_size)
    th, tw = _hw(to_size)
    return a * np.array([tw / fw, th / fh])


def wh_from_boxes(
    boxes: np.ndarray,
    image_sizes: np.ndarray | Sequence[int],
    input_size: int | Sequence[int],
) -> np.ndarray:
    """Label boxes -> their (N, 2) width, height in training-input pixels, as letterbox scales.

    ``boxes``: (N, 4) ``x1, y1, x2, y2`` in source-image pixels. ``image_sizes``: the
    ``(width, height)`` of each box's source image, (N, 2), or one ``(width, height)`` for
    all. ``input_size``: the training input, an int or ``(H, W)``. Each box is multiplied
    by its image's letterbox factor ``min(H / height, W / width)`` (padding does not change
    sizes). Degenerate boxes are passed through: :func:`kmeans_anchors` rejects them.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    sizes = np.asarray(image_sizes, dtype=np.float64)
    sizes = np.broadcast_to(sizes.reshape(-1, 2), (len(b), 2))  # (N, 2) width, height
    if np.any(sizes <= 0):
        raise ValueError("image sizes must be positive")
    in_h, in_w = _hw(input_size)
    scale = np.minimum(in_h / sizes[:, 1], in_w / sizes[:, 0])  # (N,)
    wh = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)  # (N, 2)
    return wh * scale[:, None]


def _sort_by_area(anchors: np.ndarray) -> np.ndarray:
    area = anchors.prod(axis=1)
    return anchors[np.lexsort((anchors[:, 0], area))]  # area ascending, then width


def _kmeans_pp_seeds(wh: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K-means++ seeding under ``d = 1 - IoU``: next seed drawn with probability ~ d**2."""
    n = len(wh)
    centroids = np.empty((k, 2), dtype=np.float64)  # (k, 2)
    centroids[0] = wh[rng.integers(n)]
    dist = 1.0 - wh_iou(wh, centroids[:1])[:, 0]  # (N,) distance to the nearest seed
    for j in range(1, k):
        weights = dist**2
        total = weights.sum()
        if total <= 0:  # cannot happen with >= k distinct sizes; kept as a guard
            raise ValueError("k-means++ seeding: no distinct box size left to seed from")
        pick = rng.choice(n, p=weights / total)
        centroids[j] = wh[pick]
        dist = np.minimum(dist, 1.0 - wh_iou(wh, centroids[j : j + 1])[:, 0])
    return centroids


def _lloyd(wh: np.ndarray, centroids: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
    """Lloyd iterations, median update; returns the centroids and their mean best IoU."""
    assign = None
    for _ in range(iters):
        iou = wh_iou(wh, centroids)  # (N, k)
        new_assign = iou.argmax(axis=1)  # (N,)
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        for j in range(len(centroids)):
            members = wh[assign == j]
            if len(members):
                centroids[j] = np.median(members, axis=0)
            else:  # empty cluster: move it to the label worst served by the others
                worst = int(iou.max(axis=1).argmin())
                centroids[j] = wh[worst]
    fitness = float(wh_iou(wh, centroids).max(axis=1).mean())
    return centroids, fitness


def kmeans_anchors(
    wh: np.ndarray,
    k: int = 9,
    seed: int = 0,
    iters: int = 300,
    *,
    n_init: int = 10,
) -> np.ndarray:
    """Cluster label sizes into ``k`` anchors: K-means++ seeds, then Lloyd, ``d = 1 - IoU``.

    ``wh``: (N, 2) label widths and heights in training-input pixels (see
    :func:`wh_from_boxes`). Runs ``n_init`` seedings from ``np.random.default_rng(seed)``
    and keeps the one with the highest mean best-anchor IoU, so the result is a pure
    function of the data and ``seed``. (One seeding alone ends in a local optimum, two
    anchors sharing a cluster, about a third of the time on well separated synthetic
    clusters; ten make that negligible at ~0.1 s per 3,000 labels.) Centroids are updated by the per-cluster median
    (robust to the long tail of sizes; see the module docstring). Returns (k, 2) float64
    anchors, width and height, sorted by area, small to large (scale i of a 3-scale head
    takes rows ``3i:3i+3``).

    Raises ``ValueError`` for zero/negative/non-finite sizes and for fewer distinct sizes
    than ``k`` (k anchors cannot be told apart then: lower ``k`` or add labels).
    """
    if k < 1 or iters < 1 or n_init < 1:
        raise ValueError(f"k, iters and n_init must be >= 1 (got {k}, {iters}, {n_init})")
    arr = _check_wh(wh)
    n_unique = len(np.unique(arr, axis=0))
    if n_unique < k:
        raise ValueError(
            f"kmeans_anchors: {n_unique} distinct box sizes ({len(arr)} labels) for k={k} "
            "anchors; lower k or add labels"
        )
    rng = np.random.default_rng(seed)
    best: np.ndarray | None = None
    best_fit = -1.0
    for _ in range(n_init):
        centroids, fit = _lloyd(arr, _kmeans_pp_seeds(arr, k, rng), iters)
        if fit > best_fit:
            best, best_fit = centroids, fit
    assert best is not None
    return _sort_by_area(best)


@dataclass(frozen=True)
class AnchorFitness:
    """How well a set of anchors covers the labels.

    ``mean_iou``: mean over labels of the best-anchor IoU (sizes aligned at a corner).
    ``bpr``: best possible recall, share of labels with some anchor within
    ``ratio_threshold`` x on both sides (the loss's assignment rule).
    ``anchors_per_label``: mean number of such anchors per label (targets per label).
    ``bpr_iou``: share of labels with best IoU > ``iou_threshold``.
    """

    mean_iou: float
    bpr: float
    anchors_per_label: float
    bpr_iou: float
    ratio_threshold: float
    iou_threshold: float
    n_labels: int


def anchor_fitness(
    wh: np.ndarray,
    anchors: np.ndarray | Sequence[float],
    ratio_threshold: float = BPR_RATIO_THRESHOLD,
    iou_threshold: float = BPR_IOU_THRESHOLD,
) -> AnchorFitness:
    """Score ``anchors`` (K, 2) (or flat) against label sizes ``wh`` (N, 2), same pixels."""
    arr = _check_wh(wh)
    anc = _check_wh(np.asarray(anchors, dtype=np.float64).reshape(-1, 2), "anchors")
    iou = wh_iou(arr, anc)  # (N, K)
    best = iou.max(axis=1)  # (N,)
    ratio = arr[:, None, :] / anc[None, :, :]  # (N, K, 2)
    worst_side = np.maximum(ratio, 1.0 / ratio).max(axis=2)  # (N, K)
    fits = worst_side < ratio_threshold  # (N, K)
    return AnchorFitness(
        mean_iou=float(best.mean()),
        bpr=float(fits.any(axis=1).mean()),
        anchors_per_label=float(fits.sum(axis=1).mean()),
        bpr_iou=float((best > iou_threshold).mean()),
        ratio_threshold=float(ratio_threshold),
        iou_threshold=float(iou_threshold),
        n_labels=len(arr),
    )


def compare_report(
    wh: np.ndarray,
    input_size: int | Sequence[int],
    k: int = 9,
    seed: int = 0,
    iters: int = 300,
) -> dict[str, Any]:
    """Our K-means++ anchors vs the YOLOv4 defaults scaled to ``input_size``, on ``wh``.

    Returns a JSON-ready dict: ``input_size``, ``n_labels``, the thresholds, and for
    ``"ours"`` and ``"default"`` the anchors (rounded to 0.1 px) with their
    :class:`AnchorFitness` figures.
    """
    arr = _check_wh(wh)
    ours = kmeans_anchors(arr, k=k, seed=seed, iters=iters)
    default = scale_anchors(DEFAULT_YOLOV4_ANCHORS, DEFAULT_ANCHOR_SIZE, input_size)

    def entry(anc: np.ndarray) -> dict[str, Any]:
        fit = asdict(anchor_fitness(arr, anc))
        return {"anchors": np.round(anc, 1).tolist(), **fit}

    size = list(_hw(input_size))
    return {
        "input_size": [int(v) for v in size],
        "n_labels": len(arr),
        "ratio_threshold": BPR_RATIO_THRESHOLD,
        "iou_threshold": BPR_IOU_THRESHOLD,
        "ours": entry(ours),
        "default": entry(default),
    }
