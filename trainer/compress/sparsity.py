"""Sparse training (network slimming): an L1 penalty on the BatchNorm scales of prunable channels.

    from trainer.compress.sparsity import sparse_train
    result = sparse_train(config, s=1e-3, schedule="global_decay", weights="runs/train/weights/best.pt")

Network slimming (Liu et al. 2017) trains with ``loss + s * sum |gamma|`` over the
BatchNorm scales, so the channels a model can do without are driven to zero and a global
|gamma| threshold can prune them (:mod:`.channel_prune`). Only the BNs of PRUNABLE channel
groups (:mod:`.dependency`) are penalised: shrinking a gamma that pruning can never remove
only costs accuracy.

What ``s`` means here
---------------------
In network slimming and the YOLOv3 pruning repositories the penalty's subgradient
``s * sign(gamma)`` is added to the gradient of a loss that is a MEAN over the batch's
images: the objective is ``mean per-image loss + s * sum|gamma|``. This engine
backpropagates a SUM over the images of an optimizer step (``YoloLoss`` returns
``mean * B``, summed over ``accumulate`` batches: about ``nbs`` = 64 images; see
:mod:`trainer.callbacks`). To keep ``s`` the coefficient of the per-image objective, the
callback adds ``N * s * sign(gamma)`` with ``N = config.batch * ctx.accumulate``, the
number of images in the step's gradient (``N`` follows the warm-up's accumulation ramp).
``reduction="per_step"`` adds the bare ``s * sign(gamma)`` instead (literally what those
repositories' ``updateBN`` does once per step, whatever their loss scale).

Per step, plain SGD then moves a gamma by ``lr * N * s`` towards zero (0.01 * 64 * 1e-3 =
6.4e-4 at the defaults; momentum 0.937 amplifies a steady push up to ~16x). Note that this
engine's loss gains are YOLOv5's, smaller than the darknet/YOLOv3-era gains those
repositories used, so the same ``s`` weighs relatively more here.

Choosing s (measured, :mod:`.penalty_probe`): the penalty ``N * s`` must be weaker than the
gradient of the channels that matter, or every gamma shrinks alike and |gamma| ranks
nothing. The gammas' gradients are small (median |dL/dgamma| ~2e-5 for yolov4-s at batch
8), so useful values of s are ~1e-6 .. 1e-5, far below the literature's 1e-4 .. 1e-3;
every run writes ``penalty.json`` (the gradient quantiles, the share of channels the
penalty dominates, a suggested s) and warns when it dominates nearly all of them.
``s="auto"`` runs the probe's first steps without a penalty and then uses the s whose
penalty dominates ``auto_share`` (70 %) of the channels.

AdamW: its step is about ``lr`` for any parameter whose gradient is dominated by the
penalty, whatever s is, so a gamma travels at most ``lr * steps``: 0.5 in 500 steps at
1e-3, not enough to take a gamma of 1 to zero in a short fine-tuning run.
``bn_lr_scale`` multiplies the BatchNorm group's lr (the engine's ``lr_scale``), so the
dominated gammas reach zero while the others keep what their gradients say.
``proximal=True`` is the other way: its threshold ``lr * N * s`` is not normalised.

Proximal mode
-------------
``proximal=True`` adds nothing to the gradient; after each optimizer step it
soft-thresholds the penalised gammas instead, ``gamma <- sign(gamma) * max(|gamma| - lr *
N * s, 0)`` with the BN group's lr of that step (ISTA's proximal step for the L1 term). It
reaches exact zeros and works under AdamW too. The engine's EMA is updated inside the step,
before ``on_batch_end``; the callback then adds to the EMA the change it missed
(``(1 - d) * (thresholded - before)``), so the EMA is what it would be had the step
included the threshold. A step that flushes an epoch's left-over gradients has no ``on_batch_end``: its threshold is
applied at the next hook (``on_checkpoint``), before anything is saved.

Schedules (``s`` per epoch; :class:`SparsitySchedule`)
------------------------------------------------------
* ``constant``: ``s`` throughout.
* ``global_decay``: ``s`` until ``round(decay_start * epochs)`` epochs are done, then
  ``s * decay_factor`` (``decay_shape="step"``), or a cosine from ``s`` down to
  ``s * decay_factor`` at the last epoch (``"cosine"``), so the network recovers accuracy
  late in training.
* ``local_decay``: ``s`` for every channel until ``round(decay_start * epochs)`` epochs are
  done; after that the strongest channels, the top ``keep_frac`` of all penalised gammas by
  |gamma| (the ranking recomputed at each epoch's first step), get ``s * local_factor``, the
  others keep ``s``: the channels pruning will keep are spared.

Logs (in the run folder)
------------------------
* ``gamma/epoch_XXX.png``: the |gamma| histogram of the penalised BNs
  (:func:`~trainer.compress.plots.plot_gamma_histogram`), ``epoch_000`` before training;
* ``sparsity.csv``: per epoch ``s``, the penalised channel count, the median |gamma| and the
  share of |gamma| below 1e-3, 1e-2, 0.05 and 0.1;
* ``penalty.json``: the penalty next to the gammas' gradients (:mod:`.penalty_probe`);
both of the weights the checkpoints hold (the EMA when on, as pruning will read them).
Checkpoints get ``metadata["sparsity"]`` (the settings) and ``stage = "sparse"``.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from trainer.callbacks import Callback, TrainContext
from trainer.compress.dependency import DependencyGraph, dependency_graph
from trainer.compress.penalty_probe import DOMINATED_WARNING, PenaltyProbe

__all__ = [
    "AUTO_SHARE",
    "SCHEDULES",
    "THRESHOLDS",
    "SparsityCallback",
    "SparsitySchedule",
    "gamma_stats",
    "prunable_bn_paths",
    "read_sparsity_csv",
    "sparse_train",
]

SCHEDULES = ("constant", "global_decay", "local_decay")
AUTO_SHARE = 0.7  # s="auto": the penalty dominates this share of the gammas' gradients
THRESHOLDS = (1e-3, 1e-2, 0.05, 0.1)


def prunable_bn_paths(model: nn.Module, graph: DependencyGraph | None = None) -> list[str]:
    """Module paths of the BatchNorms of every prunable group's member convs (forward order)."""
    graph = graph if graph is not None else dependency_graph(model)
    paths: list[str] = []
    for group in graph.prunable:
        for member in group.members:
            bn = graph.convs[member].bn
            if bn is not None and bn not in paths:
                paths.append(bn)
    return paths


def gamma_stats(gammas: torch.Tensor, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """``{"channels", "median", "below_<t>"...}`` of |gamma| (a 1-D tensor)."""
    g = gammas.detach().abs().double().cpu().flatten()
    out: dict[str, float] = {"channels": float(g.numel())}
    out["median"] = float(g.median()) if g.numel() else math.nan
    for t in thresholds:
        out[f"below_{t:g}"] = float((g < t).double().mean()) if g.numel() else math.nan
    return out


@dataclass(frozen=True)
class SparsitySchedule:
    """``s`` per epoch (0-based); see the module docstring."""

    s: float
    kind: Literal["constant", "global_decay", "local_decay"] = "constant"
    epochs: int = 1
    decay_start: float = 0.5  # share of the epochs after which the decay applies
    decay_factor: float = 0.01  # global_decay: s falls to s * decay_factor
    decay_shape: Literal["step", "cosine"] = "step"
    keep_frac: float = 0.15  # local_decay: share of channels (top |gamma|) spared
    local_factor: float = 0.01  # local_decay: their s is s * local_factor

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown sparsity schedule {self.kind!r}: {', '.join(SCHEDULES)}")
        if self.decay_shape not in ("step", "cosine"):
            raise ValueError(f"decay_shape must be step or cosine, got {self.decay_shape!r}")
        if self.s < 0:
            raise ValueError(f"s must be >= 0, got {self.s}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.decay_start <= 1:
            raise ValueError(f"decay_start is a share of the epochs, in [0, 1]: {self.decay_start}")
        if not 0 <= self.keep_frac <= 1:
            raise ValueError(f"keep_frac must be in [0, 1], got {self.keep_frac}")
        if self.decay_factor < 0 or self.local_factor < 0:
            raise ValueError("decay_factor and local_factor must be >= 0")

    @property
    def start_epoch(self) -> int:
        """First (0-based) epoch the decay applies to."""
        return round(self.decay_start * self.epochs)

    def decayed(self, epoch: int) -> bool:
        return self.kind != "constant" and epoch >= self.start_epoch

    def s_at(self, epoch: int) -> float:
        """The ``s`` of epoch ``epoch`` (0-based) for every channel, except, under
        ``local_decay``, the spared top channels (``s_at(epoch) * local_factor``)."""
        if self.kind != "global_decay" or not self.decayed(epoch):
            return self.s
        if self.decay_shape == "step":
            return self.s * self.decay_factor
        span = max(1, self.epochs - self.start_epoch)
        t = min(1.0, (epoch - self.start_epoch + 1) / span)
        return self.s * (
            self.decay_factor + (1 - self.decay_factor) * (1 + math.cos(math.pi * t)) / 2
        )

    def local_active(self, epoch: int) -> bool:
        """True when ``local_decay`` spares the top channels in this epoch."""
        return self.kind == "local_decay" and self.decayed(epoch) and self.keep_frac > 0


class SparsityCallback(Callback):
    """L1 penalty on the prunable BN scales; logs the |gamma| distribution per epoch.

    Args:
        s: the penalty coefficient of the per-image objective (module docstring).
        schedule: ``constant``, ``global_decay`` or ``local_decay``.
        proximal: soft-threshold after each step instead of adding the subgradient.
        reduction: ``per_image`` (add ``N * s * sign``, the default) or ``per_step``.
        bn_lr_scale: multiple of the scheduled lr for the BatchNorm weights' group.
        probe_steps: optimizer steps whose gamma gradients ``penalty.json`` reports on.
        decay_start, decay_factor, decay_shape, keep_frac, local_factor: see
            :class:`SparsitySchedule`.
        graph: the model's dependency graph (traced at train start when None).
        plots: write ``gamma/epoch_XXX.png``; None: follow ``config.plots``.
        thresholds: the |gamma| thresholds of ``sparsity.csv``.
    """

    def __init__(
        self,
        s: float | str = 1e-3,
        schedule: str = "constant",
        *,
        proximal: bool = False,
        reduction: Literal["per_image", "per_step"] = "per_image",
        bn_lr_scale: float = 1.0,
        probe_steps: int = 20,
        auto_share: float = AUTO_SHARE,
        decay_start: float = 0.5,
        decay_factor: float = 0.01,
        decay_shape: Literal["step", "cosine"] = "step",
        keep_frac: float = 0.15,
        local_factor: float = 0.01,
        graph: DependencyGraph | None = None,
        plots: bool | None = True,
        thresholds: Sequence[float] = THRESHOLDS,
    ) -> None:
        if reduction not in ("per_image", "per_step"):
            raise ValueError(f"reduction must be per_image or per_step, got {reduction!r}")
        if not bn_lr_scale > 0:
            raise ValueError(f"bn_lr_scale must be > 0, got {bn_lr_scale}")
        if isinstance(s, str) and s != "auto":
            raise ValueError(f"s is a number or 'auto', got {s!r}")
        if not 0 < auto_share < 1:
            raise ValueError(f"auto_share must be in (0, 1), got {auto_share}")
        # "auto": no penalty during the probe's steps, then the s it suggests (auto_share)
        self.auto = s == "auto"
        self.auto_share = float(auto_share)
        self.settings = {
            "s": 0.0 if self.auto else float(s),
            "kind": schedule,
            "decay_start": float(decay_start),
            "decay_factor": float(decay_factor),
            "decay_shape": decay_shape,
            "keep_frac": float(keep_frac),
            "local_factor": float(local_factor),
        }
        self.schedule = SparsitySchedule(**self.settings)  # validated; epochs set at start
        self.proximal = bool(proximal)
        self.reduction = reduction
        self.bn_lr_scale = float(bn_lr_scale)
        self.graph = graph
        self.plots = plots
        self.thresholds = tuple(thresholds)
        self.ctx: TrainContext | None = None
        self.bn_paths: list[str] = []
        self._local_mask: dict[str, torch.Tensor] | None = None
        self._mask_epoch = -1
        self._prox_done = 0  # optimizer steps whose proximal step has been applied
        self.probe: PenaltyProbe | None = PenaltyProbe(probe_steps)

    # ---- set-up --------------------------------------------------------------------------

    def on_train_start(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.schedule = SparsitySchedule(**self.settings, epochs=ctx.config.epochs)
        self.bn_paths = prunable_bn_paths(ctx.model, self.graph)
        if self.bn_lr_scale != 1.0:  # the engine multiplies the group's scheduled lr by it
            for group in ctx.optimizer.param_groups:
                if group.get("name") == "bn_weight":
                    group["lr_scale"] = self.bn_lr_scale
        if not self.bn_paths:
            warnings.warn("no prunable BatchNorm: sparse training penalises nothing", stacklevel=2)
        self._prox_done = ctx.step
        if ctx.config.optimizer == "AdamW" and not self.proximal and self.bn_lr_scale == 1:
            warnings.warn(
                "sparse training under AdamW: a gamma moves at most about lr per step whatever "
                "s is, so a short run cannot take it to zero: raise bn_lr_scale (or use "
                "proximal=True)",
                stacklevel=2,
            )
        if not (ctx.run_dir / "sparsity.csv").exists():  # a fresh run: log the start
            self._log(0, self.schedule.s_at(0))

    def _bns(self, model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
        return [(p, model.get_submodule(p)) for p in self.bn_paths]

    # ---- the penalty -----------------------------------------------------------------------

    def images_per_step(self) -> int:
        """N: images in the gradient of the coming step (``batch * accumulate``)."""
        if self.ctx is None:
            raise RuntimeError("SparsityCallback: on_train_start has not run")
        return int(self.ctx.config.batch) * int(self.ctx.accumulate)

    def coefficient(self) -> float:
        """What multiplies ``sign(gamma)`` this step (before local_decay's factor)."""
        s = self.schedule.s_at(self.ctx.epoch if self.ctx else 0)
        return s * (self.images_per_step() if self.reduction == "per_image" else 1)

    def channel_factors(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Per penalised BN, the factor on each channel's ``s`` (``local_factor`` on the
        spared top channels, 1 elsewhere); None when every factor is 1."""
        epoch = self.ctx.epoch if self.ctx else 0
        if not self.schedule.local_active(epoch):
            return None
        if self._mask_epoch != epoch or self._local_mask is None:
            bns = self._bns(model)
            all_g = torch.cat([bn.weight.detach().abs().flatten().float().cpu() for _, bn in bns])
            k = math.ceil(self.schedule.keep_frac * all_g.numel())
            factors: dict[str, torch.Tensor] = {}
            if k > 0:
                threshold = torch.topk(all_g, k).values.min()
                for path, bn in bns:
                    top = bn.weight.detach().abs() >= threshold.to(bn.weight.device)
                    f = torch.ones_like(bn.weight.detach())
                    f[top] = self.schedule.local_factor
                    factors[path] = f
            self._local_mask, self._mask_epoch = factors, epoch
        return self._local_mask or None

    def on_after_backward(self, model: nn.Module, step: int) -> None:
        self._prox_pending()
        self._probe(model)
        if self.proximal:
            return
        c = self.coefficient()
        if c == 0:
            return
        factors = self.channel_factors(model)
        with torch.no_grad():
            for path, bn in self._bns(model):
                w = bn.weight
                add = torch.sign(w.detach()) * c
                if factors is not None and path in factors:
                    add = add * factors[path]
                if w.grad is None:
                    w.grad = add.to(w.dtype)
                else:
                    w.grad.add_(add.to(w.grad.dtype))

    def _probe(self, model: nn.Module) -> None:
        """Feeds the first steps' gamma gradients (before the penalty) to the probe; then
        writes ``penalty.json`` and warns when the penalty dominates nearly every channel."""
        if self.probe is None or not self.bn_paths:
            return
        grads = [bn.weight.grad for _, bn in self._bns(model)]
        if any(g is None for g in grads):
            return
        self.probe.add(torch.cat([g.detach().flatten() for g in grads]))
        if not self.probe.done:
            return
        probe, self.probe = self.probe, None
        if self.auto:  # the probe's steps ran without a penalty: now set it
            self.auto = False
            suggested = probe.report(0.0, self.images_per_step(), self.auto_share)["suggested_s"]
            self.settings["s"] = suggested
            self.schedule = SparsitySchedule(**self.settings, epochs=self.ctx.config.epochs)
        report = probe.report(self.coefficient(), self.images_per_step(), self.auto_share)
        report["s"] = self.settings["s"]
        report["proximal"] = self.proximal
        self.ctx.run_dir.mkdir(parents=True, exist_ok=True)
        (self.ctx.run_dir / "penalty.json").write_text(json.dumps(report, indent=2) + "\n")
        if not self.proximal and report["dominated_share"] > DOMINATED_WARNING:
            warnings.warn(
                f"sparse training: the penalty (N * s = {report['penalty']:.3g}) is larger than "
                f"the gradient of {report['dominated_share']:.0%} of the BatchNorm scales, so "
                "they all shrink alike and |gamma| will hardly rank the channels; an s of about "
                f"{report['suggested_s']:.2g} leaves the strongest {1 - report['suggested_share']:.0%} "
                "their own say (penalty.json in the run folder)",
                stacklevel=2,
            )

    # ---- proximal mode ------------------------------------------------------------------

    def _bn_lr(self, weight: nn.Parameter) -> float:
        for group in self.ctx.optimizer.param_groups:
            if any(p is weight for p in group["params"]):
                return float(group["lr"])
        raise RuntimeError("a penalised BatchNorm weight is in no optimizer group")

    def _prox_pending(self) -> None:
        if not self.proximal or self.ctx is None or self.ctx.step <= self._prox_done:
            return
        self._prox_done = self.ctx.step
        c = self.coefficient()
        if c == 0:
            return
        model = self.ctx.model
        ema = self.ctx.ema
        # the step's EMA update saw the weights before the threshold: give it the change
        # it missed, so the EMA is exactly what it would be had it seen the thresholded ones
        d = ema.decay_at(ema.updates) if ema is not None else None
        factors = self.channel_factors(model)
        with torch.no_grad():
            for path, bn in self._bns(model):
                w = bn.weight
                t = self._bn_lr(w) * c
                if factors is not None and path in factors:
                    t = t * factors[path]
                new = torch.sign(w) * (w.abs() - t).clamp(min=0)
                if ema is not None:
                    ema.ema.get_submodule(path).weight.add_(new - w, alpha=1 - d)
                w.copy_(new)

    def on_batch_end(self, ctx: TrainContext, batch_index: int, parts: torch.Tensor) -> None:
        self._prox_pending()

    # ---- logs ---------------------------------------------------------------------------

    def on_checkpoint(self, ctx: TrainContext, path: Path, metadata: dict[str, Any]) -> None:
        self._prox_pending()
        metadata["stage"] = "sparse"
        metadata["sparsity"] = {
            **self.metadata(),
            "epoch_s": self.schedule.s_at(ctx.epoch),
        }

    def metadata(self) -> dict[str, Any]:
        """The settings, as checkpoints store them (:meth:`from_metadata` reads them back)."""
        return {
            **self.settings,
            "schedule": self.settings["kind"],
            "proximal": self.proximal,
            "reduction": self.reduction,
            "bn_lr_scale": self.bn_lr_scale,
            "s_auto": self.auto,  # True only while the probe has not set s yet
            "penalised_bns": len(self.bn_paths),
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], **kwargs: Any) -> SparsityCallback:
        keys = ("decay_start", "decay_factor", "decay_shape", "keep_frac", "local_factor")
        return cls(
            "auto" if meta.get("s_auto") else meta["s"],
            meta["schedule"],
            proximal=meta.get("proximal", False),
            reduction=meta.get("reduction", "per_image"),
            bn_lr_scale=meta.get("bn_lr_scale", 1.0),
            **{k: meta[k] for k in keys if k in meta},
            **kwargs,
        )

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self._prox_pending()
        self._log(epoch, self.schedule.s_at(epoch - 1))

    def logged_model(self) -> nn.Module:
        """The weights the checkpoints hold: the EMA's when on, else the raw model."""
        ctx = self.ctx
        return ctx.ema.ema if ctx.ema is not None else ctx.model

    def gammas(self, model: nn.Module | None = None) -> torch.Tensor:
        model = model if model is not None else self.logged_model()
        return torch.cat(
            [bn.weight.detach().abs().flatten().float().cpu() for _, bn in self._bns(model)]
        )

    def _log(self, epoch: int, s: float) -> None:
        ctx = self.ctx
        model = self.logged_model()
        stats = gamma_stats(self.gammas(model), self.thresholds)
        row = {"epoch": epoch, "s": s, **stats}
        path = ctx.run_dir / "sparsity.csv"
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(list(row))
            writer.writerow([epoch] + [f"{v:.6g}" for k, v in row.items() if k != "epoch"])
        plots = ctx.config.plots if self.plots is None else self.plots
        if plots:
            from trainer.compress.plots import plot_gamma_histogram

            penalised = nn.ModuleList([bn for _, bn in self._bns(model)])
            try:
                plot_gamma_histogram(penalised, ctx.run_dir / "gamma" / f"epoch_{epoch:03d}.png")
            except Exception as exc:  # noqa: BLE001 - a plot must not stop training
                warnings.warn(f"gamma histogram not drawn: {exc}", stacklevel=2)


def read_sparsity_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``sparsity.csv`` as floats."""
    with Path(path).open(newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def sparse_train(
    config,
    s: float | str = 1e-3,
    schedule: str = "constant",
    *,
    weights: str | Path | None = None,
    proximal: bool = False,
    reduction: Literal["per_image", "per_step"] = "per_image",
    bn_lr_scale: float = 1.0,
    probe_steps: int = 20,
    decay_start: float = 0.5,
    decay_factor: float = 0.01,
    decay_shape: Literal["step", "cosine"] = "step",
    keep_frac: float = 0.15,
    local_factor: float = 0.01,
    plots: bool | None = True,
    callbacks: Iterable[Callback] = (),
    resume: str | Path | None = None,
    run_dir: str | Path | None = None,
    train_batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
):
    """Sparse-train a model (usually the baseline's ``best.pt``) with :class:`SparsityCallback`.

    Args:
        config: a TrainConfig; ``weights`` (if given) replaces its ``model``; a run still
            named ``train`` (the default) is named ``sparse``. With ``resume`` it may be None
            or the machine settings, as for :func:`trainer.engine.train`.
        s, schedule, proximal, reduction, decay_*, keep_frac, local_factor, plots: see
            :class:`SparsityCallback`. On ``resume`` the settings saved in ``last.pt`` win.
        weights: checkpoint to start from (the baseline).
        callbacks: more callbacks, after the sparsity one.
    Returns:
        the :class:`trainer.engine.TrainResult`; the run folder also holds ``sparsity.csv``
        and ``gamma/epoch_XXX.png``.
    """
    from trainer.engine import train

    options = {
        "proximal": proximal,
        "reduction": reduction,
        "bn_lr_scale": bn_lr_scale,
        "probe_steps": probe_steps,
        "decay_start": decay_start,
        "decay_factor": decay_factor,
        "decay_shape": decay_shape,
        "keep_frac": keep_frac,
        "local_factor": local_factor,
        "plots": plots,
    }
    if resume is not None:
        from trainer.model import load_checkpoint

        last = Path(resume)
        last = last / "weights" / "last.pt" if last.is_dir() else last
        # a missing file: train() raises its ConfigError
        saved = load_checkpoint(last)[1].get("sparsity") if last.is_file() else None
        cb = (
            SparsityCallback.from_metadata(saved, plots=plots)
            if saved
            else SparsityCallback(s, schedule, **options)
        )
        return train(config, callbacks=[cb, *callbacks], resume=resume, train_batches=train_batches)

    changes: dict[str, Any] = {}
    if weights is not None:
        changes["model"] = str(Path(weights))
    if config.name == "train":
        changes["name"] = "sparse"
    if changes:
        config = config.updated(**changes)
    cb = SparsityCallback(s, schedule, **options)
    return train(config, callbacks=[cb, *callbacks], run_dir=run_dir, train_batches=train_batches)
