"""The training loop: one function, :func:`train`, for a local process or a Ray Train worker.

    from trainer.config import TrainConfig
    from trainer.engine import train
    result = train(TrainConfig(data="data/steel", model="yolov4-s", epochs=30))
    result.best  # runs/train/weights/best.pt

What it does (YOLOv5 / Ultralytics recipe)
-----------------------------------------
* Optimizer: SGD (Nesterov) or AdamW with three parameter groups, Ultralytics' order:
  ``pg0`` biases (no decay), ``pg1`` conv weights (decay), ``pg2`` BatchNorm weights
  (no decay). Weight decay is scaled by ``batch * accumulate / nbs``.
* Schedule (:class:`Schedule`, a pure function of the batch index ``ni`` and the epoch):
  for the first ``max(warmup_epochs * nb, warmup_min_iters)`` batches the lr rises
  linearly from 0 (biases: from ``warmup_bias_lr`` down) to ``lr0 * lf(epoch)``, SGD's
  momentum from ``warmup_momentum`` to ``momentum`` and the accumulation from 1 batch to
  ``accumulate``; after that ``lr = lr0 * lf(epoch)`` with ``lf`` a cosine from 1 to
  ``lrf`` over the epochs. A group with an ``lr_scale`` entry (set by a callback at train
  start, e.g. sparse training's faster BatchNorm scales) gets that multiple of it.
* Gradients of ``accumulate`` batches are summed, then: AMP unscale, the callbacks'
  ``on_after_backward``, clipping to ``grad_clip``, the step, the EMA update. An epoch
  always ends on a step (left-over gradients are flushed), so every epoch boundary is a
  clean resume point.
* Validation on the EMA weights every ``val_every`` epochs and the last
  (:mod:`trainer.validate`), fitness ``0.1 * mAP50 + 0.9 * mAP50-95``.
* AMP (fp16 autocast + GradScaler) on CUDA only; the loss always runs in fp32.

Determinism and resume
----------------------
Every random stream is a function of ``(seed, epoch[, index])``: the model init
(``build(spec, seed)``), the shuffle (a generator seeded per epoch), the augmentation
(``Augmenter.rng_for(index, epoch)``, independent of worker count and order) and torch's
global RNG (reseeded at every epoch start, for anything a custom loss draws). With
``deterministic`` the loop runs under ``torch.use_deterministic_algorithms`` (restored on
exit). ``last.pt`` carries the raw weights, optimizer, AMP scaler, EMA update count, step
counters, best fitness and the results history, so training N epochs straight and
training k, stopping, and resuming give bit-identical weights on CPU.

The run folder (Ultralytics layout)
-----------------------------------
::

    runs/train/                  project/name, incremented (train2, train3) unless exist_ok
      args.yaml                  the full resolved TrainConfig
      anchors.json               anchors used; K-means++ vs default YOLOv4 report
      labels.png                 label statistics (plots on)
      results.csv                one row per epoch, Ultralytics column names
      results.png  PR_curve.png  confusion_matrix.png
      weights/last.pt best.pt    trainer.model checkpoints (EMA weights)

Hooks for later stages
----------------------
* ``callbacks``: :class:`trainer.callbacks.Callback` objects (sparse training adds its L1
  subgradient in ``on_after_backward``).
* ``loss_fn(outputs, targets, images) -> (loss, parts)``: replaces the detection loss
  (distillation). ``outputs`` is what ``model(images)`` returns: the raw maps, or
  ``(maps, features)`` when ``loss_fn.needs_features`` is true. ``loss`` is the scalar to
  backpropagate, summed over the batch's images (the default's ``YoloLoss`` scale);
  ``parts`` a detached 1-D tensor logged as ``train/<name>`` for the names in
  ``loss_fn.part_names`` (default ``box_loss, obj_loss, cls_loss``). The loss's own
  trainable parameters, if it is an ``nn.Module`` with any (distillation's feature
  adapters), are a 4th optimizer group named ``loss`` that follows the weights' schedule,
  and are saved in ``last.pt``'s resume state, so such a run resumes exactly too.
  Validation losses always use the detection loss.
* ``train_batches(epoch) -> iterable of (images, targets)``: replaces the local
  DataLoader (e.g. a Ray Data shard); batches follow :mod:`trainer.data.loader`'s
  contract and there should be ``ceil(len(train split) / batch)`` of them.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trainer.anchors import (
    DEFAULT_ANCHOR_SIZE,
    DEFAULT_YOLOV4_ANCHORS,
    anchor_fitness,
    compare_report,
    scale_anchors,
    wh_from_boxes,
)
from trainer.callbacks import Callback, CallbackList, TrainContext
from trainer.config import ConfigError, TrainConfig
from trainer.data.augment import AugmentConfig, Augmenter
from trainer.data.dataset import DetectionDataset
from trainer.data.loader import DatasetSamples, TrainDataset, ValDataset, epoch_seed, train_loader
from trainer.ema import ModelEMA
from trainer.evaluate import EvalResult
from trainer.loss import YoloLoss
from trainer.model import (
    YoloSpec,
    YOLOv4,
    build,
    get_spec,
    list_variants,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from trainer.validate import validate, validate_with_loss

__all__ = [
    "BIAS_GROUP",
    "BN_GROUP",
    "WEIGHT_GROUP",
    "DetectionLoss",
    "Schedule",
    "TrainResult",
    "build_optimizer",
    "fitness",
    "increment_path",
    "param_groups",
    "resolve_model",
    "results_columns",
    "train",
]

BIAS_GROUP, WEIGHT_GROUP, BN_GROUP = 0, 1, 2  # lr/pg0, lr/pg1, lr/pg2 of results.csv
GROUP_NAMES = ("bias", "weight", "bn_weight")
PART_NAMES = ("box_loss", "obj_loss", "cls_loss")
METRIC_COLUMNS = (
    "metrics/precision(B)",
    "metrics/recall(B)",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
)
VAL_COLUMNS = tuple(f"val/{n}" for n in PART_NAMES)
LR_COLUMNS = ("lr/pg0", "lr/pg1", "lr/pg2")
RESUME_CHANGES = ("device", "workers", "verbose", "plots")
"""Settings of the machine, not of the run: a resume may change them."""


@dataclass
class TrainResult:
    """What a run produced. ``history`` holds every results.csv row (resumed runs too)."""

    run_dir: Path
    last: Path
    best: Path
    best_epoch: int  # 1-based; 0 if never validated
    best_fitness: float
    epochs_done: int
    history: list[dict[str, float]]
    seconds: float  # wall time of this call
    train_seconds: float  # time in training batches (forward, backward, step) in this call
    train_images: int  # images trained on in this call
    epoch_seconds: list[float] = field(default_factory=list)  # per epoch of this call
    best_result: EvalResult | None = None
    stopped_early: bool = False

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else math.nan


def results_columns(part_names: Sequence[str] = PART_NAMES) -> list[str]:
    """The header of results.csv."""
    return [
        "epoch",
        *(f"train/{n}" for n in part_names),
        *METRIC_COLUMNS,
        *VAL_COLUMNS,
        *LR_COLUMNS,
        "time",
    ]


def fitness(metrics: dict[str, float]) -> float:
    """Ultralytics' model fitness: ``0.1 * mAP50 + 0.9 * mAP50-95`` (nan counts 0)."""
    m50 = metrics.get("metrics/mAP50(B)", math.nan)
    m = metrics.get("metrics/mAP50-95(B)", math.nan)
    return 0.1 * (0.0 if math.isnan(m50) else m50) + 0.9 * (0.0 if math.isnan(m) else m)


# ---------------------------------------------------------------------------------------------
# Schedule and optimizer


@dataclass(frozen=True)
class Schedule:
    """Learning rate, momentum and accumulation as functions of the batch index ``ni``
    (counted from the start of training) and the epoch; see the module docstring."""

    lr0: float
    lrf: float
    epochs: int
    warmup_iters: int  # 0: no warm-up
    warmup_bias_lr: float
    momentum: float
    warmup_momentum: float
    accumulate: int

    @classmethod
    def from_config(cls, config: TrainConfig, batches_per_epoch: int) -> Schedule:
        warmup = 0
        if config.warmup_epochs > 0:
            warmup = max(round(config.warmup_epochs * batches_per_epoch), config.warmup_min_iters)
        return cls(
            lr0=config.lr0,
            lrf=config.lrf,
            epochs=config.epochs,
            warmup_iters=warmup,
            warmup_bias_lr=config.warmup_bias_lr,
            momentum=config.momentum,
            warmup_momentum=config.warmup_momentum,
            accumulate=config.accumulate_steps,
        )

    def lr_factor(self, epoch: int) -> float:
        """Cosine from 1 (epoch 0) to ``lrf`` (epoch ``epochs``)."""
        return (1 - math.cos(epoch * math.pi / self.epochs)) / 2 * (self.lrf - 1) + 1

    def lr(self, group: int, ni: int, epoch: int) -> float:
        target = self.lr0 * self.lr_factor(epoch)
        if ni < self.warmup_iters:
            start = self.warmup_bias_lr if group == BIAS_GROUP else 0.0
            return float(np.interp(ni, [0, self.warmup_iters], [start, target]))
        return target

    def momentum_at(self, ni: int) -> float:
        if ni < self.warmup_iters:
            return float(
                np.interp(ni, [0, self.warmup_iters], [self.warmup_momentum, self.momentum])
            )
        return self.momentum

    def accumulate_at(self, ni: int) -> int:
        if ni < self.warmup_iters:
            return max(1, round(float(np.interp(ni, [0, self.warmup_iters], [1, self.accumulate]))))
        return self.accumulate


def param_groups(model: nn.Module) -> tuple[list[nn.Parameter], ...]:
    """(biases, weights, normalisation weights): every trainable parameter exactly once."""
    norms = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    biases, weights, bn_weights = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name == "bias":
                biases.append(p)
            elif isinstance(module, norms):
                bn_weights.append(p)
            else:
                weights.append(p)
    return biases, weights, bn_weights


def build_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over :func:`param_groups`; decay on conv weights only."""
    biases, weights, bn_weights = param_groups(model)
    if name == "SGD":
        opt = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    elif name == "AdamW":
        opt = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ConfigError(f"unknown optimizer {name!r}: SGD or AdamW")
    opt.add_param_group({"params": weights, "weight_decay": weight_decay})
    opt.add_param_group({"params": bn_weights, "weight_decay": 0.0})
    for group, group_name in zip(opt.param_groups, GROUP_NAMES, strict=True):
        group["initial_lr"] = lr
        group["name"] = group_name
    return opt


LOSS_GROUP_NAME = "loss"


def _trainable(loss_fn) -> dict[str, nn.Parameter]:
    """The loss's own trainable parameters by name (none for a plain function)."""
    if not isinstance(loss_fn, nn.Module):
        return {}
    return {k: p for k, p in loss_fn.named_parameters() if p.requires_grad}


class DetectionLoss(nn.Module):
    """The default ``loss_fn``: :class:`~trainer.loss.YoloLoss` on the raw maps, in fp32."""

    part_names = PART_NAMES
    needs_features = False

    def __init__(self, loss: YoloLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs, targets: torch.Tensor, images: torch.Tensor | None = None):
        return self.loss([m.float() for m in outputs], targets)


# ---------------------------------------------------------------------------------------------
# Setup: run folder, data, model, anchors


def increment_path(path: str | Path, exist_ok: bool = False) -> Path:
    """``runs/train`` if free (or ``exist_ok``), else ``runs/train2``, ``runs/train3``, ..."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    n = 2
    while (candidate := path.with_name(f"{path.name}{n}")).exists():
        n += 1
    return candidate


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available")
    return device


def _read_data(path: str) -> DetectionDataset:
    from trainer.data.formats import read_dataset

    if not Path(path).exists():
        raise ConfigError(f"data not found: {path}")
    ds = read_dataset(Path(path))  # DatasetError (file:line) on a fault
    if not ds.names:
        raise ConfigError(f"{path}: the data set names no classes")
    if not ds.splits.get("train"):
        raise ConfigError(f"{path}: no 'train' split with images")
    return ds


def epoch_augment(config: TrainConfig, epoch: int) -> AugmentConfig:
    """The augmentation of ``epoch`` (0-based): the last ``close_mosaic`` epochs train on
    whole images, as the model will see them, without mosaic and mixup (Ultralytics)."""
    if epoch >= config.epochs - config.close_mosaic:
        return config.augment.without_mosaic()
    return config.augment


def pick_val_split(ds: DetectionDataset) -> str:
    for split in ("val", "test"):
        if ds.splits.get(split):
            return split
    return "train"


def _labels_hash(ds: DetectionDataset) -> str:
    h = hashlib.sha256()
    for split, sample in ds.samples():
        h.update(f"{split}/{sample.image}:{sample.width}x{sample.height}".encode())
        h.update(sample.boxes.tobytes())
        h.update(sample.classes.tobytes())
    return h.hexdigest()


def resolve_model(
    config: TrainConfig, class_names: Sequence[str], model: nn.Module | None = None
) -> tuple[YOLOv4, str]:
    """The model to train and where it came from: ``variant``, ``spec``, ``checkpoint`` or
    ``module`` (passed in). Its spec carries the data set's class names and ``imgsz``.

    Raises:
        ConfigError: unknown variant (lists the known ones), file not found, or a
            checkpoint / module whose class count differs from the data set's.
    """
    names = tuple(class_names)
    nc = len(names)
    if model is not None:
        source = "module"
        if not isinstance(getattr(model, "spec", None), YoloSpec):
            raise ConfigError("model must be built from a YoloSpec (trainer.model.build)")
    else:
        ref = config.model
        path = Path(ref)
        if ref in list_variants():
            source = "variant"
            spec = get_spec(ref, num_classes=nc, class_names=names, input_size=config.imgsz)
            model = build(spec, seed=config.seed)
        elif path.suffix.lower() in (".yaml", ".yml", ".json"):
            source = "spec"
            if not path.is_file():
                raise ConfigError(f"model spec not found: {path}")
            spec = YoloSpec.load(path)
            spec = dataclasses.replace(
                spec, num_classes=nc, class_names=names, input_size=config.imgsz
            )
            model = build(spec, seed=config.seed)
        elif path.suffix.lower() == ".pt":
            source = "checkpoint"
            if not path.is_file():
                raise ConfigError(f"checkpoint not found: {path}")
            model, _ = load_checkpoint(path)
        else:
            raise ConfigError(
                f"unknown model {ref!r}: use a variant ({', '.join(list_variants())}), "
                "a spec .yaml/.json or a checkpoint .pt"
            )
    spec = model.spec
    if spec.num_classes != nc:
        raise ConfigError(
            f"the model has {spec.num_classes} classes, the data set {nc} ({', '.join(names)})"
        )
    model.spec = dataclasses.replace(spec, class_names=names, input_size=config.imgsz)
    return model, source


def choose_anchors(
    config: TrainConfig, spec: YoloSpec, source: str, samples: Sequence
) -> tuple[tuple, dict[str, Any]]:
    """Anchors per scale for ``config.anchors`` and the report written to anchors.json."""
    boxes = [s.boxes for s in samples]
    sizes = [np.tile([s.width, s.height], (len(s.boxes), 1)) for s in samples]
    wh = wh_from_boxes(np.concatenate(boxes), np.concatenate(sizes), config.imgsz)
    wh = wh[(wh > 0).all(axis=1)]
    k = spec.num_anchors * len(spec.strides)
    comparison, note = None, None
    try:
        comparison = compare_report(wh, config.imgsz, k=k, seed=config.seed)
    except ValueError as exc:  # too few distinct label sizes for k clusters
        note = str(exc)
    mode = config.anchors
    used = mode if mode != "auto" else ("kmeans" if source == "variant" else "spec")
    if used == "kmeans" and comparison is None:
        used, note = "default", f"K-means++ not possible ({note}); YOLOv4's default anchors used"
    if used == "kmeans":
        flat = np.asarray(comparison["ours"]["anchors"], dtype=np.float64)
    elif used == "default":
        flat = scale_anchors(DEFAULT_YOLOV4_ANCHORS, DEFAULT_ANCHOR_SIZE, config.imgsz)
    else:
        flat = np.asarray(spec.flat_anchors, dtype=np.float64)
    per_scale = tuple(
        tuple((round(float(w), 1), round(float(h), 1)) for w, h in scale)
        for scale in flat.reshape(len(spec.strides), spec.num_anchors, 2)
    )
    report: dict[str, Any] = {
        "mode": mode,
        "used": used,
        "input_size": config.imgsz,
        "anchors": [[list(a) for a in scale] for scale in per_scale],
        "fitness": dataclasses.asdict(anchor_fitness(wh, flat)) if len(wh) else None,
        "comparison": comparison,
    }
    if note:
        report["note"] = note
    return per_scale, report


def _find_last(resume: str | Path) -> Path:
    path = Path(resume)
    if path.is_dir():
        path = path / "weights" / "last.pt"
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    return path


def _write_results(path: Path, history: list[dict[str, float]], columns: list[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in history:
            writer.writerow(
                [int(row["epoch"])] + [f"{float(row.get(c, math.nan)):.6g}" for c in columns[1:]]
            )


# ---------------------------------------------------------------------------------------------
# The loop


def train(
    config: TrainConfig | Mapping[str, Any] | None = None,
    *,
    model: nn.Module | None = None,
    loss_fn: Callable | None = None,
    callbacks: Iterable[Callback] = (),
    resume: str | Path | None = None,
    run_dir: str | Path | None = None,
    train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
) -> TrainResult:
    """Train a YOLOv4-family detector; see the module docstring.

    Args:
        config: the run's settings. With ``resume`` the run's own ``train_args`` are used:
            ``config`` may then be None, a TrainConfig (its ``device`` and ``workers`` are
            taken) or a dict of :data:`RESUME_CHANGES` keys.
        model: start from this model (a YOLOv4) instead of ``config.model``.
        loss_fn: replaces the detection loss (see "Hooks").
        callbacks: :class:`~trainer.callbacks.Callback` objects, called in order.
        resume: ``last.pt`` of a stopped run, or its run folder: continue it exactly.
        run_dir: write here instead of the incremented ``project/name``.
        train_batches: ``epoch -> iterable of (images, targets)`` replacing the DataLoader.

    Raises:
        ConfigError: data, model or checkpoint not found, unknown variant, class mismatch.
        trainer.data.problems.DatasetError: a fault in the data set (file:line).
    """
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        return _train(config, model, loss_fn, callbacks, resume, run_dir, train_batches)
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def detection_loss(config: TrainConfig, spec) -> YoloLoss:
    """The detection loss of a run: YoloLoss on the spec's anchors with the config's gains
    scaled to classes, image size and scales (the one place it is built)."""
    nc = spec.num_classes
    return YoloLoss(
        spec.flat_anchors,
        spec.strides,
        nc,
        **config.loss.scaled(nc, config.imgsz, len(spec.strides)),
        balance=config.loss.balance,
        anchor_t=config.loss.anchor_t,
        label_smoothing=config.loss.label_smoothing,
    )


def _train(config, model, loss_fn, callbacks, resume, run_dir, train_batches) -> TrainResult:
    from rich.console import Console

    wall_start = time.perf_counter()

    # ---- resume: the run's own config, folder and state --------------------------------
    state: dict[str, Any] | None = None
    meta: dict[str, Any] = {}
    if resume is not None:
        if model is not None:
            raise ConfigError("resume continues the checkpoint's model: pass no model")
        last_path = _find_last(resume)
        model, meta = load_checkpoint(last_path)
        state = meta.get("resume")
        if state is None:
            raise ConfigError(f"{last_path} holds no training state (resume from last.pt)")
        saved = TrainConfig.from_dict(meta["train_args"])
        if isinstance(config, TrainConfig):
            saved = saved.updated(device=config.device, workers=config.workers)
        elif config:
            other = set(config) - set(RESUME_CHANGES)
            if other:
                raise ConfigError(
                    f"resume keeps the run's settings; only {', '.join(RESUME_CHANGES)} may "
                    f"change, not {', '.join(sorted(other))}"
                )
            saved = saved.updated(**config)
        config = saved
        run_dir = last_path.parent.parent
        if meta["epoch"] >= config.epochs:
            raise ConfigError(
                f"{last_path}: the run finished all {config.epochs} epochs; nothing to resume"
            )
    if not isinstance(config, TrainConfig):
        raise ConfigError("train() needs a TrainConfig (or resume=)")

    console = Console(quiet=not config.verbose)
    device = _resolve_device(config.device)
    amp = device.type == "cuda" and config.amp in (True, "auto")
    if config.amp is True and device.type != "cuda":
        console.print("[yellow]amp: CUDA only; training in fp32 on CPU[/]")
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    # ---- data --------------------------------------------------------------------------
    ds = _read_data(config.data)
    names = list(ds.names)
    val_split = pick_val_split(ds)
    if val_split == "train":
        console.print("[yellow]no val or test split: validating on the training images[/]")

    # ---- model, anchors, run folder ----------------------------------------------------
    anchors_report = None
    source = meta.get("model_source", "checkpoint")
    if state is None:
        data_path = str(Path(config.data).resolve())
        model_ref = config.model
        if model is None and Path(model_ref).suffix.lower() in (".yaml", ".yml", ".json", ".pt"):
            model_ref = str(Path(model_ref).resolve())
        config = config.updated(data=data_path, model=model_ref)
        model, source = resolve_model(config, names, model)
        anchors, anchors_report = choose_anchors(config, model.spec, source, ds.splits["train"])
        model.spec = dataclasses.replace(model.spec, anchors=anchors)
        run_dir = Path(run_dir) if run_dir else increment_path(config.run_dir, config.exist_ok)
    else:
        if list(model.spec.class_names or ()) != names:
            raise ConfigError(f"the data set's classes {names} differ from the checkpoint's")
    run_dir = Path(run_dir)
    weights_dir = run_dir / "weights"
    weights_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = weights_dir / "last.pt", weights_dir / "best.pt"
    if state is None:
        config.dump(run_dir / "args.yaml")
        (run_dir / "anchors.json").write_text(json.dumps(anchors_report, indent=2) + "\n")
        if anchors_report["comparison"] is not None:
            ours, dflt = (
                anchors_report["comparison"]["ours"],
                anchors_report["comparison"]["default"],
            )
            console.print(
                f"anchors ({anchors_report['used']}): K-means++ mean IoU {ours['mean_iou']:.3f} "
                f"BPR {ours['bpr']:.3f} | YOLOv4 default mean IoU {dflt['mean_iou']:.3f} "
                f"BPR {dflt['bpr']:.3f}"
            )
        if config.plots:
            try:
                from trainer.data.stats import compute_stats, plot_stats

                plot_stats(compute_stats(ds), run_dir / "labels.png")
            except Exception as exc:  # noqa: BLE001 - a plot must not stop training
                console.print(f"[yellow]labels.png not drawn: {exc}[/]")
    spec = model.spec

    # ---- datasets and batches ----------------------------------------------------------
    channels = spec.in_channels
    augmenters = {
        cfg: Augmenter(cfg, config.imgsz, seed=config.seed)
        for cfg in {config.augment, config.augment.without_mosaic()}
    }
    augmenter = augmenters[config.augment]
    train_ds = TrainDataset(DatasetSamples(ds, "train", gray=channels == 1), augmenter, channels)
    val_ds = ValDataset(ds, val_split, config.imgsz, channels)
    workers = config.loader_workers(device.type)
    if train_batches is None:

        def train_batches(epoch: int):
            train_ds.augmenter = augmenters[epoch_augment(config, epoch)]  # resumable
            return train_loader(train_ds, config.batch, workers, config.seed, epoch)

    nb = math.ceil(len(train_ds) / config.batch)  # batches per epoch

    # ---- loss, optimizer, EMA ----------------------------------------------------------
    det_loss = detection_loss(config, spec).to(device)
    loss_fn = loss_fn or DetectionLoss(det_loss)
    part_names = tuple(getattr(loss_fn, "part_names", PART_NAMES))
    needs_features = bool(getattr(loss_fn, "needs_features", False))
    columns = results_columns(part_names)

    ema_state = None
    if state is not None:  # the checkpoint's weights are the EMA; the raw ones are in state
        ema_state = {k: v.clone() for k, v in model.state_dict().items()}
        if state.get("model") is not None:
            load_weights(model, state["model"])
    model.to(device)
    schedule = Schedule.from_config(config, nb)
    weight_decay = config.weight_decay * config.batch * schedule.accumulate / config.nbs
    optimizer = build_optimizer(model, config.optimizer, config.lr0, config.momentum, weight_decay)
    loss_params = _trainable(loss_fn)
    if loss_params:
        optimizer.add_param_group(
            {
                "params": list(loss_params.values()),
                "weight_decay": weight_decay,
                "initial_lr": config.lr0,
                "name": LOSS_GROUP_NAME,
            }
        )
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    ema = ModelEMA(model, config.ema_decay, config.ema_tau) if config.ema else None

    start_epoch, step, last_opt_step = 0, 0, -1
    best_fitness, best_epoch, elapsed_before = -math.inf, 0, 0.0
    history: list[dict[str, float]] = []
    if state is not None:
        saved = state.get("loss_params") or {}
        if saved or loss_params:
            if set(saved) != set(loss_params):
                raise ConfigError(
                    "the run's loss parameters differ from this loss's: resume with the same "
                    f"loss settings (saved {sorted(saved)}, now {sorted(loss_params)})"
                )
            with torch.no_grad():
                for name, p in loss_params.items():
                    p.copy_(saved[name])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.ema.load_state_dict(ema_state)
            ema.updates = int(state["ema_updates"])
        start_epoch = int(meta["epoch"])
        step, last_opt_step = int(state["step"]), int(state["last_opt_step"])
        best_fitness, best_epoch = float(state["best_fitness"]), int(state["best_epoch"])
        elapsed_before = float(state["elapsed"])
        history = [dict(r) for r in state["history"]]
        console.print(f"resuming {run_dir} from epoch {start_epoch + 1}/{config.epochs}")

    base_meta = {
        "epochs": config.epochs,
        "class_names": names,
        "train_args": config.to_dict(),
        "anchors": [[list(a) for a in scale] for scale in spec.anchors],
        "thresholds": {"score": config.conf, "iou": config.iou},
        "data": {
            "path": config.data,
            "train_images": len(train_ds),
            "val_split": val_split,
            "val_images": len(val_ds),
            "labels_sha256": _labels_hash(ds),
        },
        "stage": "train",
        "model_source": source,
    }
    cb = CallbackList(callbacks)
    ctx = TrainContext(
        config=config,
        model=model,
        optimizer=optimizer,
        ema=ema,
        run_dir=run_dir,
        class_names=names,
        step=step,
        batches_per_epoch=nb,
    )
    cb.on_train_start(ctx)

    def optimizer_step() -> None:
        scaler.unscale_(optimizer)  # true-unit gradients (a no-op without AMP)
        cb.on_after_backward(model, ctx.step)  # e.g. + s * sign(gamma) on BN weights
        if config.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        ctx.step += 1

    best_result: EvalResult | None = None
    train_seconds, train_images, epoch_seconds = 0.0, 0, []
    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.perf_counter()
        ctx.epoch = epoch
        torch.manual_seed(epoch_seed(config.seed, epoch))  # any global-RNG use, per epoch
        model.train()
        optimizer.zero_grad(set_to_none=True)
        mean_parts = torch.zeros(len(part_names))
        pending = False
        pbar = tqdm(
            train_batches(epoch),
            total=nb,
            desc=f"{epoch + 1}/{config.epochs}",
            disable=not config.verbose,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        i = -1
        for i, (images, targets) in enumerate(pbar):
            ni = i + nb * epoch  # batches since the start of training
            for j, group in enumerate(optimizer.param_groups):
                group["lr"] = schedule.lr(j, ni, epoch) * group.get("lr_scale", 1.0)
                if "momentum" in group:
                    group["momentum"] = schedule.momentum_at(ni)
            ctx.accumulate = accumulate = schedule.accumulate_at(ni)

            images = images.to(device, non_blocking=True)  # (B, C, S, S) float in [0, 1]
            targets = targets.to(device)  # (T, 6) [img, cls, cx, cy, w, h] input pixels
            with torch.autocast(device.type, enabled=amp):
                outputs = model(images, return_features=needs_features)  # 3 x (B, A*(5+C), H, W)
            loss, parts = loss_fn(outputs, targets, images)  # fp32; loss summed over images
            scaler.scale(loss).backward()
            pending = True
            if ni - last_opt_step >= accumulate:
                optimizer_step()
                last_opt_step, pending = ni, False

            parts = parts.detach().float().cpu()
            mean_parts = (mean_parts * i + parts) / (i + 1)  # running mean over the epoch
            train_images += images.shape[0]
            pbar.set_postfix_str(
                " ".join(
                    f"{n.removesuffix('_loss')}={v:.4g}"
                    for n, v in zip(part_names, mean_parts.tolist())
                )
                + f" inst={targets.shape[0]}",
                refresh=False,
            )
            cb.on_batch_end(ctx, i, parts)
        if pending:  # end every epoch on a step: epochs are clean resume points
            optimizer_step()
            last_opt_step = i + nb * epoch
        pbar.close()
        train_seconds += time.perf_counter() - epoch_start

        # ---- validate, log, checkpoint ---------------------------------------------------
        final = epoch + 1 == config.epochs
        eval_model = ema.ema if ema is not None else model
        row: dict[str, float] = {"epoch": epoch + 1}
        row.update({f"train/{n}": float(v) for n, v in zip(part_names, mean_parts.tolist())})
        result = None
        if (epoch + 1) % config.val_every == 0 or final:
            result, val_parts = validate_with_loss(
                eval_model,
                val_ds,
                det_loss,
                batch=config.batch,
                conf=config.val_conf,
                iou=config.val_iou,
            )
            row.update(result.metrics_row())
            row.update(dict(zip(VAL_COLUMNS, val_parts.tolist(), strict=True)))
            console.print(
                f"  val {val_split}: P {result.precision:.3f}  R {result.recall:.3f}  "
                f"mAP50 {result.map50:.3f}  mAP50-95 {result.map50_95:.3f}"
            )
        else:
            row.update(dict.fromkeys((*METRIC_COLUMNS, *VAL_COLUMNS), math.nan))
        row.update({c: float(g["lr"]) for c, g in zip(LR_COLUMNS, optimizer.param_groups)})
        row["time"] = elapsed_before + time.perf_counter() - wall_start
        history.append(row)
        _write_results(run_dir / "results.csv", history, columns)

        fit = fitness(row)
        improved = result is not None and fit > best_fitness
        if improved:
            best_fitness, best_epoch, best_result = fit, epoch + 1, result
        metrics = {k: v for k, v in row.items() if k != "epoch"}
        epoch_meta = {
            **base_meta,
            "epoch": epoch + 1,
            "metrics": {**metrics, "fitness": fit},
            "best_fitness": best_fitness,
            "best_epoch": best_epoch,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        resume_state = {
            "model": model.state_dict() if ema is not None else None,  # the raw weights
            "optimizer": optimizer.state_dict(),
            "loss_params": {k: v.detach().cpu().clone() for k, v in loss_params.items()},
            "scaler": scaler.state_dict(),
            "ema_updates": ema.updates if ema is not None else 0,
            "step": ctx.step,
            "last_opt_step": last_opt_step,
            "best_fitness": best_fitness,
            "best_epoch": best_epoch,
            "elapsed": row["time"],
            "history": history,
        }
        if improved:
            cb.on_checkpoint(ctx, best_path, epoch_meta)
            save_checkpoint(best_path, eval_model, epoch_meta)
        last_meta = {**epoch_meta, "resume": resume_state}
        cb.on_checkpoint(ctx, last_path, last_meta)
        save_checkpoint(last_path, eval_model, last_meta)
        epoch_seconds.append(time.perf_counter() - epoch_start)

        cb.on_epoch_end(epoch + 1, row)
        if config.patience and result is not None and epoch + 1 - best_epoch >= config.patience:
            console.print(f"early stop: no better fitness in {config.patience} epochs")
            stopped_early = True
            break
        if ctx.stop:
            stopped_early = not final
            break

    # ---- the end: plots, summary -------------------------------------------------------
    if not best_path.exists():  # never validated with a better fitness: keep the last
        save_checkpoint(
            best_path, ema.ema if ema is not None else model, {**base_meta, "epoch": epoch + 1}
        )
    if config.plots:
        from trainer.plots import plot_results_csv

        plot_results_csv(run_dir / "results.csv", run_dir / "results.png")
        if best_result is None and best_epoch > 0:  # the best epoch ran before a resume
            best_model, _ = load_checkpoint(best_path, map_location=device)
            best_result = validate(
                best_model, val_ds, batch=config.batch, conf=config.val_conf, iou=config.val_iou
            )
        if best_result is not None:
            from trainer.plots import plot_confusion_matrix, plot_pr_curve

            plot_pr_curve(best_result, run_dir / "PR_curve.png")
            plot_confusion_matrix(best_result, run_dir / "confusion_matrix.png")

    out = TrainResult(
        run_dir=run_dir,
        last=last_path,
        best=best_path,
        best_epoch=best_epoch,
        best_fitness=best_fitness if best_epoch else math.nan,
        epochs_done=epoch + 1,
        history=history,
        seconds=time.perf_counter() - wall_start,
        train_seconds=train_seconds,
        train_images=train_images,
        epoch_seconds=epoch_seconds,
        best_result=best_result,
        stopped_early=stopped_early,
    )
    _summary(console, out, best_result)
    cb.on_train_end(ctx, out)
    return out


def _summary(console, result: TrainResult, best: EvalResult | None) -> None:
    from rich.table import Table

    from trainer.evaluate import print_table

    table = Table(title="training done", show_header=False, box=None, pad_edge=False)
    table.add_row("run", str(result.run_dir))
    table.add_row(
        "epochs", f"{result.epochs_done}" + (" (stopped early)" if result.stopped_early else "")
    )
    if result.best_epoch:
        row = result.history[[int(r["epoch"]) for r in result.history].index(result.best_epoch)]
        table.add_row(
            "best",
            f"epoch {result.best_epoch}: mAP50 {row['metrics/mAP50(B)']:.4f}  "
            f"mAP50-95 {row['metrics/mAP50-95(B)']:.4f}  fitness {result.best_fitness:.4f}",
        )
    table.add_row(
        "time", f"{result.seconds:.1f} s, {result.images_per_second:.1f} training images/s"
    )
    table.add_row("weights", f"{result.best}  {result.last}")
    console.print(table)
    if best is not None and not console.quiet:
        print_table(best, console)
