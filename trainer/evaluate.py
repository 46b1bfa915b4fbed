"""Detection evaluation: COCO-style mAP, Ultralytics-style P/R, a confusion matrix.

Numpy only. Inputs are per image, all in the same pixel space:

* predictions: ``(N, 6)`` float array ``x1, y1, x2, y2, score, class_id`` (the
  :mod:`slimspect.detection` hot-path layout);
* ground truth: ``(M, 4)`` boxes ``x1, y1, x2, y2`` and ``(M,)`` integer class ids.

What is computed, and whose definition it follows:

* **AP** exactly as ``pycocotools`` / ``faster-coco-eval`` ``COCOeval`` (``iouType="bbox"``,
  area range ``all``, ``maxDets=100``): per image and class the detections are sorted by
  score (stable) and cut to ``max_det``; each is matched greedily, in score order, to the
  unmatched ground truth box of the same class with the highest IoU ``>= t``, for
  ``t`` in ``0.50:0.05:0.95``; precision is made monotone (the envelope) and read at the
  101 recall points ``0:0.01:1``; AP is their mean.
* **mAP50 / mAP50-95** are means over the classes that have ground truth. As in COCO, a
  class with no ground-truth instance in the evaluated set has no AP and is left out of
  the mean (even if the model predicts it: those predictions are not counted anywhere in
  mAP). A class with ground truth but no prediction counts with AP 0.
* **P and R per class** as Ultralytics reports them: precision and recall at IoU 0.50 as
  functions of the confidence threshold (1000 points), read at the single threshold that
  maximises the (smoothed) F1 averaged over the classes with ground truth. The "all" row
  is the mean over those classes. That threshold is returned as ``conf_threshold``.
* **Confusion matrix** as Ultralytics ``ConfusionMatrix`` (detect): detections with score
  ``> 0.25``, matched to ground truth with IoU ``> 0.45`` regardless of class, one-to-one
  by descending IoU; rows are predicted classes, columns true classes, the last row and
  column "background" (last row: missed ground truth, last column: false positives).

Typical use::

    ev = Evaluator(class_names)
    for preds, boxes, classes in batches:
        ev.update(preds, boxes, classes)
    result = ev.compute()
    print_table(result)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimspect.detection import box_iou  # the one IoU, shared with NMS

__all__ = [
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "ClassMetrics",
    "ConfusionMatrix",
    "EvalResult",
    "Evaluator",
    "PRCurves",
    "evaluate",
    "print_table",
]

# Exactly the grids COCOeval builds (np.linspace, so the float values agree bit for bit).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.00 - 0.0) / 0.01)) + 1)
# Ultralytics' confidence grid for the P / R / F1 curves.
CONFIDENCE_GRID = np.linspace(0.0, 1.0, 1000)

_EPS = 1e-16


@dataclass(frozen=True)
class ClassMetrics:
    """One row of the table. Metrics are ``nan`` for a class without ground truth."""

    class_id: int
    name: str
    images: int  # images holding at least one ground-truth instance of the class
    instances: int  # ground-truth instances
    precision: float
    recall: float
    ap50: float
    ap50_95: float

    @property
    def has_gt(self) -> bool:
        return self.instances > 0


@dataclass(frozen=True)
class PRCurves:
    """Curves for plotting; one row per class (all ``nan`` for a class without ground truth).

    ``precision`` is COCO's interpolated precision (the envelope) at IoU 0.50 read at
    ``recall`` (101 points), the curve whose mean is AP50. ``p_conf``, ``r_conf`` and
    ``f1_conf`` are precision, recall and F1 at IoU 0.50 against ``confidence``.
    """

    recall: np.ndarray  # (101,)
    precision: np.ndarray  # (C, 101)
    confidence: np.ndarray  # (1000,)
    p_conf: np.ndarray  # (C, 1000)
    r_conf: np.ndarray  # (C, 1000)
    f1_conf: np.ndarray  # (C, 1000)


@dataclass(frozen=True)
class ConfusionMatrix:
    """``matrix[pred, true]`` counts over ``names + ["background"]``."""

    names: list[str]  # class names then "background"
    matrix: np.ndarray  # (C+1, C+1) int64
    iou_threshold: float
    conf_threshold: float

    def normalized(self) -> np.ndarray:
        """Each column (true class) divided by its total, as Ultralytics plots it."""
        m = self.matrix.astype(np.float64)
        return m / (m.sum(0, keepdims=True) + 1e-9)


@dataclass(frozen=True)
class EvalResult:
    map50: float  # nan when no class has ground truth
    map50_95: float
    precision: float  # mean over classes with ground truth, at conf_threshold
    recall: float
    conf_threshold: float  # the confidence maximising mean F1
    images: int
    instances: int
    per_class: list[ClassMetrics]
    pr_curves: PRCurves
    confusion: ConfusionMatrix
    ap: np.ndarray = field(repr=False)  # (C, 10) AP per class and IoU threshold, nan without GT

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.per_class]

    @property
    def excluded_classes(self) -> list[str]:
        """Classes without ground truth, left out of every mean (as COCO does)."""
        return [c.name for c in self.per_class if not c.has_gt]

    def metrics_row(self) -> dict[str, float]:
        """The metric columns of an Ultralytics ``results.csv``."""
        return {
            "metrics/precision(B)": self.precision,
            "metrics/recall(B)": self.recall,
            "metrics/mAP50(B)": self.map50,
            "metrics/mAP50-95(B)": self.map50_95,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (``nan`` becomes ``None``); no curves."""
        return {
            "map50": _num(self.map50),
            "map50_95": _num(self.map50_95),
            "precision": _num(self.precision),
            "recall": _num(self.recall),
            "conf_threshold": _num(self.conf_threshold),
            "images": self.images,
            "instances": self.instances,
            "excluded_classes": self.excluded_classes,
            "per_class": [
                {
                    "class_id": c.class_id,
                    "name": c.name,
                    "images": c.images,
                    "instances": c.instances,
                    "precision": _num(c.precision),
                    "recall": _num(c.recall),
                    "map50": _num(c.ap50),
                    "map50_95": _num(c.ap50_95),
                }
                for c in self.per_class
            ],
            "confusion": {
                "names": list(self.confusion.names),
                "matrix": self.confusion.matrix.tolist(),
                "iou_threshold": self.confusion.iou_threshold,
                "conf_threshold": self.confusion.conf_threshold,
            },
        }


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _as_predictions(pred: Any, nc: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    if p.size == 0:
        p = p.reshape(0, 6)
    if p.ndim != 2 or p.shape[1] != 6:
        raise ValueError(f"predictions must be (N, 6) x1,y1,x2,y2,score,class_id, got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("predictions contain nan or inf")
    if np.any(p[:, 2] < p[:, 0]) or np.any(p[:, 3] < p[:, 1]):
        raise ValueError("predicted boxes must have x2 >= x1 and y2 >= y1")
    cls = p[:, 5]
    cls_i = np.rint(cls).astype(np.int64)
    if np.any(cls_i != cls) or np.any((cls_i < 0) | (cls_i >= nc)):
        raise ValueError(f"prediction class ids must be integers in [0, {nc})")
    return p[:, :4], p[:, 4], cls_i


def _as_ground_truth(boxes: Any, classes: Any, nc: int) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    c = np.asarray(classes).reshape(-1)
    if b.ndim != 2 or b.shape[1] != 4 or len(c) != len(b):
        raise ValueError(
            f"ground truth must be (M, 4) boxes and (M,) classes, got {b.shape} and {c.shape}"
        )
    if not np.isfinite(b).all():
        raise ValueError("ground-truth boxes contain nan or inf")
    if np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]):
        raise ValueError("ground-truth boxes must have x2 >= x1 and y2 >= y1")
    c_i = np.rint(c.astype(np.float64)).astype(np.int64)
    if np.any(c_i != c) or np.any((c_i < 0) | (c_i >= nc)):
        raise ValueError(f"ground-truth class ids must be integers in [0, {nc})")
    return b, c_i


def _match(ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """COCO greedy matching. ``ious`` is (D, G) with detections already in score order.

    Returns (D, T) bool: detection d is a true positive at threshold t.
    """
    n_det, n_gt = ious.shape
    n_t = len(thresholds)
    tp = np.zeros((n_det, n_t), dtype=bool)
    if n_det == 0 or n_gt == 0:
        return tp
    thr = np.minimum(thresholds, 1 - 1e-10)  # as COCOeval
    matched = np.zeros((n_t, n_gt), dtype=bool)
    rows = np.arange(n_t)
    for d in range(n_det):
        iou = ious[d]
        if iou.max() < thr[0]:
            continue
        cand = np.where(matched, -1.0, iou[None, :])  # (T, G)
        # COCOeval keeps the LAST ground truth among equal best IoUs: argmax on the reversed row.
        best = n_gt - 1 - np.argmax(cand[:, ::-1], axis=1)
        ok = cand[rows, best] >= thr
        tp[d] = ok
        matched[rows[ok], best[ok]] = True
    return tp


def _smooth(y: np.ndarray, f: float = 0.05) -> np.ndarray:
    """Ultralytics' box filter (fraction ``f`` of the length), edge-padded."""
    nf = round(len(y) * f * 2) // 2 + 1
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


class Evaluator:
    """Accumulates images, then :meth:`compute` gives an :class:`EvalResult`.

    ``max_det`` is COCO's ``maxDets``: the detections kept per image *and class*, highest
    scores first (COCOeval cuts per image and category). ``confusion_iou`` and
    ``confusion_conf`` are Ultralytics' confusion-matrix thresholds.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        max_det: int = 100,
        confusion_iou: float = 0.45,
        confusion_conf: float = 0.25,
    ) -> None:
        self.class_names = list(class_names)
        if not self.class_names:
            raise ValueError("class_names is empty")
        self.nc = len(self.class_names)
        self.max_det = int(max_det)
        self.confusion_iou = float(confusion_iou)
        self.confusion_conf = float(confusion_conf)
        self._scores: list[list[np.ndarray]] = [[] for _ in range(self.nc)]
        self._tp: list[list[np.ndarray]] = [[] for _ in range(self.nc)]
        self._n_gt = np.zeros(self.nc, dtype=np.int64)
        self._n_img = np.zeros(self.nc, dtype=np.int64)
        self._images = 0
        self._confusion = np.zeros((self.nc + 1, self.nc + 1), dtype=np.int64)

    def update(self, predictions: Any, gt_boxes: Any, gt_classes: Any) -> None:
        """Add one image."""
        p_box, p_score, p_cls = _as_predictions(predictions, self.nc)
        g_box, g_cls = _as_ground_truth(gt_boxes, gt_classes, self.nc)
        self._images += 1
        counts = np.bincount(g_cls, minlength=self.nc)
        self._n_gt += counts
        self._n_img += counts > 0
        for c in np.union1d(np.unique(p_cls), np.unique(g_cls)):
            di = np.flatnonzero(p_cls == c)
            gi = np.flatnonzero(g_cls == c)
            if len(di) == 0:
                continue
            order = np.argsort(-p_score[di], kind="mergesort")[: self.max_det]
            di = di[order]
            if len(gi):
                ious = np.asarray(box_iou(p_box[di], g_box[gi]), dtype=np.float64)
                tp = _match(ious, IOU_THRESHOLDS)
            else:
                tp = np.zeros((len(di), len(IOU_THRESHOLDS)), dtype=bool)
            self._scores[c].append(p_score[di])
            self._tp[c].append(tp)
        self._update_confusion(p_box, p_score, p_cls, g_box, g_cls)

    def _update_confusion(self, p_box, p_score, p_cls, g_box, g_cls) -> None:
        m, bg = self._confusion, self.nc
        keep = p_score > self.confusion_conf
        p_box, p_cls = p_box[keep], p_cls[keep]
        if len(g_cls) == 0:
            np.add.at(m, (p_cls, bg), 1)
            return
        if len(p_cls) == 0:
            np.add.at(m, (bg, g_cls), 1)
            return
        iou = np.asarray(box_iou(g_box, p_box), dtype=np.float64)  # (G, D)
        gi, di = np.nonzero(iou > self.confusion_iou)
        if len(gi):
            v = iou[gi, di]
            o = np.argsort(-v, kind="stable")
            gi, di, v = gi[o], di[o], v[o]
            _, first = np.unique(di, return_index=True)  # each detection once, best IoU
            first = np.sort(first)
            gi, di = gi[first], di[first]
            _, first = np.unique(gi, return_index=True)  # then each ground truth once
            gi, di = gi[first], di[first]
        det_of_gt = np.full(len(g_cls), -1)
        det_of_gt[gi] = di
        hit = det_of_gt >= 0
        np.add.at(m, (p_cls[det_of_gt[hit]], g_cls[hit]), 1)
        np.add.at(m, (bg, g_cls[~hit]), 1)
        unmatched = np.ones(len(p_cls), dtype=bool)
        unmatched[di] = False
        np.add.at(m, (p_cls[unmatched], bg), 1)

    def compute(self) -> EvalResult:
        nc, n_t = self.nc, len(IOU_THRESHOLDS)
        ap = np.full((nc, n_t), np.nan)
        q50 = np.full((nc, len(RECALL_THRESHOLDS)), np.nan)
        px = CONFIDENCE_GRID
        p_conf = np.full((nc, len(px)), np.nan)
        r_conf = np.full((nc, len(px)), np.nan)
        for c in range(nc):
            n_gt = int(self._n_gt[c])
            if n_gt == 0:
                continue  # COCO: no AP for a class without ground truth
            if self._scores[c]:
                scores = np.concatenate(self._scores[c])
                tp = np.concatenate(self._tp[c])
            else:
                scores, tp = np.zeros(0), np.zeros((0, n_t), dtype=bool)
            order = np.argsort(-scores, kind="mergesort")
            scores, tp = scores[order], tp[order]
            tpc = np.cumsum(tp, axis=0, dtype=np.float64)
            fpc = np.cumsum(~tp, axis=0, dtype=np.float64)
            rc = tpc / n_gt
            pr = tpc / (tpc + fpc + np.spacing(1))
            env = np.maximum.accumulate(pr[::-1], axis=0)[::-1]
            for t in range(n_t):
                idx = np.searchsorted(rc[:, t], RECALL_THRESHOLDS, side="left")
                q = np.zeros(len(RECALL_THRESHOLDS))
                ok = idx < len(scores)
                q[ok] = env[idx[ok], t]
                ap[c, t] = q.mean()
                if t == 0:
                    q50[c] = q
            if len(scores):
                # Ultralytics' curves at IoU 0.50 against confidence (interp needs increasing x).
                r_conf[c] = np.interp(-px, -scores, tpc[:, 0] / (n_gt + _EPS), left=0)
                p_conf[c] = np.interp(-px, -scores, tpc[:, 0] / (tpc[:, 0] + fpc[:, 0]), left=1)
            else:
                r_conf[c] = 0.0
                p_conf[c] = 0.0
        f1_conf = 2 * p_conf * r_conf / (p_conf + r_conf + _EPS)

        has_gt = self._n_gt > 0
        if has_gt.any():
            i = int(_smooth(f1_conf[has_gt].mean(0), 0.1).argmax())
            conf_thr = float(px[i])
            p_cls, r_cls = p_conf[:, i], r_conf[:, i]
            map50 = float(ap[has_gt, 0].mean())
            map50_95 = float(ap[has_gt].mean())
            mp, mr = float(p_cls[has_gt].mean()), float(r_cls[has_gt].mean())
        else:
            conf_thr = map50 = map50_95 = mp = mr = math.nan
            p_cls = r_cls = np.full(nc, np.nan)

        per_class = [
            ClassMetrics(
                class_id=c,
                name=self.class_names[c],
                images=int(self._n_img[c]),
                instances=int(self._n_gt[c]),
                precision=float(p_cls[c]),
                recall=float(r_cls[c]),
                ap50=float(ap[c, 0]),
                ap50_95=float(ap[c].mean()),
            )
            for c in range(nc)
        ]
        return EvalResult(
            map50=map50,
            map50_95=map50_95,
            precision=mp,
            recall=mr,
            conf_threshold=conf_thr,
            images=self._images,
            instances=int(self._n_gt.sum()),
            per_class=per_class,
            pr_curves=PRCurves(
                recall=RECALL_THRESHOLDS.copy(),
                precision=q50,
                confidence=px.copy(),
                p_conf=p_conf,
                r_conf=r_conf,
                f1_conf=f1_conf,
            ),
            confusion=ConfusionMatrix(
                names=[*self.class_names, "background"],
                matrix=self._confusion.copy(),
                iou_threshold=self.confusion_iou,
                conf_threshold=self.confusion_conf,
            ),
            ap=ap,
        )


def evaluate(
    predictions: Sequence[Any],
    gt_boxes: Sequence[Any],
    gt_classes: Sequence[Any],
    class_names: Sequence[str],
    **kwargs: Any,
) -> EvalResult:
    """Evaluate whole lists at once: element ``i`` of each list is image ``i``."""
    if not (len(predictions) == len(gt_boxes) == len(gt_classes)):
        raise ValueError("predictions, gt_boxes and gt_classes must have one entry per image")
    ev = Evaluator(class_names, **kwargs)
    for p, b, c in zip(predictions, gt_boxes, gt_classes, strict=True):
        ev.update(p, b, c)
    return ev.compute()


def print_table(result: EvalResult, console: Any = None) -> None:
    """Print the ``yolo val`` table: an "all" row, then one row per class with ground truth."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("Class", justify="right")
    for col in ("Images", "Instances", "P", "R", "mAP50", "mAP50-95"):
        table.add_column(col, justify="right")

    def fmt(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:.3g}"

    table.add_row(
        "all",
        str(result.images),
        str(result.instances),
        fmt(result.precision),
        fmt(result.recall),
        fmt(result.map50),
        fmt(result.map50_95),
    )
    for c in result.per_class:
        if c.has_gt:
            table.add_row(
                c.name,
                str(c.images),
                str(c.instances),
                fmt(c.precision),
                fmt(c.recall),
                fmt(c.ap50),
                fmt(c.ap50_95),
            )
    excluded = result.excluded_classes
    if excluded:
        table.caption = "no ground truth, left out of the means (as COCO): " + ", ".join(excluded)
    console.print(table)
