"""Validation: mAP of a model on a split, through the one post-processing of the stations.

Images are letterboxed by :func:`slimspect.detection.preprocess`, the raw maps decoded
and suppressed by :func:`slimspect.detection.postprocess` (one label per box, as a
station runs it), boxes come back in source pixels and are scored against the source
ground truth by :class:`trainer.evaluate.Evaluator` (COCO AP, Ultralytics P/R).

    result = validate(model, "data/steel", split="val")
    print_table(result)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimspect.detection import postprocess
from trainer.data.dataset import DetectionDataset
from trainer.data.loader import ValDataset, val_loader
from trainer.evaluate import EvalResult, Evaluator

__all__ = ["validate", "validate_with_loss"]

LossFn = Callable[[list[torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def validate(
    model: nn.Module,
    dataset: DetectionDataset | ValDataset | str | Path,
    split: str = "val",
    imgsz: int | None = None,
    conf: float = 0.001,
    iou: float = 0.6,
    batch: int = 16,
    plots_dir: str | Path | None = None,
    *,
    max_det: int = 300,
    workers: int = 0,
) -> EvalResult:
    """mAP50, mAP50-95, P, R of ``model`` (a YOLOv4) on ``split`` of ``dataset``.

    Args:
        dataset: a data set, its path, or a ready :class:`ValDataset` (then ``split`` and
            ``imgsz`` are its own).
        imgsz: network input side; default the model spec's.
        conf, iou: score and NMS thresholds (low score: the whole PR curve).
        plots_dir: when given, ``PR_curve.png`` and ``confusion_matrix.png`` go there.
    """
    result, _ = _run(
        model, dataset, split, imgsz, conf, iou, batch, plots_dir, None, max_det, workers
    )
    return result


def validate_with_loss(
    model: nn.Module,
    dataset: DetectionDataset | ValDataset | str | Path,
    loss_fn: LossFn,
    split: str = "val",
    imgsz: int | None = None,
    conf: float = 0.001,
    iou: float = 0.6,
    batch: int = 16,
    plots_dir: str | Path | None = None,
    *,
    max_det: int = 300,
    workers: int = 0,
) -> tuple[EvalResult, np.ndarray]:
    """:func:`validate` plus the mean loss parts on the split, ``loss_fn(maps, targets)``
    (a ``YoloLoss``) evaluated on the same forward passes: float64 (3,) [box, obj, cls]."""
    result, losses = _run(
        model, dataset, split, imgsz, conf, iou, batch, plots_dir, loss_fn, max_det, workers
    )
    assert losses is not None
    return result, losses


def _as_val_dataset(model, dataset, split, imgsz) -> ValDataset:
    if isinstance(dataset, ValDataset):
        return dataset
    if isinstance(dataset, (str, Path)):
        from trainer.data.formats import read_dataset

        dataset = read_dataset(Path(dataset))
    spec = model.spec
    return ValDataset(dataset, split, imgsz or spec.input_size, spec.in_channels)


@torch.no_grad()
def _run(model, dataset, split, imgsz, conf, iou, batch, plots_dir, loss_fn, max_det, workers):
    val_ds = _as_val_dataset(model, dataset, split, imgsz)
    spec = model.spec
    if len(val_ds.names) != spec.num_classes:
        raise ValueError(
            f"the data set has {len(val_ds.names)} classes, the model {spec.num_classes}"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    evaluator = Evaluator(val_ds.names)
    loss_sum = torch.zeros(3, dtype=torch.float64)
    batches = 0
    try:
        for vb in val_loader(val_ds, batch, workers):
            images = vb.images.to(device, non_blocking=True)  # (B, C, S, S)
            maps = model(images)  # 3 x (B, A*(5+C), H, W)
            maps = [m.float() for m in maps]
            if loss_fn is not None:
                _, parts = loss_fn(maps, vb.targets.to(device))
                loss_sum += parts.detach().cpu().double()
            batches += 1
            dets = postprocess(
                [m.cpu().numpy() for m in maps],
                spec.flat_anchors,
                spec.strides,
                val_ds.names,
                vb.infos,
                score_threshold=conf,
                iou_threshold=iou,
                max_detections=max_det,
            )  # B x (N, 6) source pixels
            for det, gt_boxes, gt_classes in zip(dets, vb.boxes, vb.classes, strict=True):
                evaluator.update(det, gt_boxes, gt_classes)
    finally:
        model.train(was_training)
    result = evaluator.compute()
    if plots_dir is not None:
        from trainer.plots import plot_confusion_matrix, plot_pr_curve

        plot_pr_curve(result, Path(plots_dir) / "PR_curve.png")
        plot_confusion_matrix(result, Path(plots_dir) / "confusion_matrix.png")
    losses = (loss_sum / max(batches, 1)).numpy() if loss_fn is not None else None
    return result, losses
