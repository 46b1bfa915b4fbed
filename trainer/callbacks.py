"""Training callbacks: how sparse training, pruning schedules and loggers hook into the loop.

Subclass :class:`Callback` and override the hooks you need; every hook is a no-op by
default. The engine calls them in this order::

    on_train_start(ctx)
    per epoch:
        per batch:   forward, loss, backward
                     [when an optimizer step is due:]
                     on_after_backward(model, step)   <- gradients complete, unscaled
                     clip gradients, optimizer.step(), zero grads, EMA update
                     on_batch_end(ctx, batch_index, parts)
        validate
        on_checkpoint(ctx, path, metadata)   (before each write of last.pt / best.pt)
        on_epoch_end(epoch, metrics)
    on_train_end(ctx, result)

``on_after_backward`` is where network slimming adds its L1 subgradient to the
BatchNorm gammas (``bn.weight.grad.add_(s * torch.sign(bn.weight))``). It runs once per
optimizer step, after all the accumulated backward passes and after AMP's ``unscale_``,
before gradient clipping and the step, so what it adds is clipped and stepped like the
loss gradient. Scale: the loss the engine backpropagates is ``sum over images`` of the
per-image loss (YoloLoss returns ``mean * B``), summed over ``ctx.accumulate`` batches,
i.e. the gradient of a sum over about ``nbs`` (64) images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from trainer.config import TrainConfig
    from trainer.ema import ModelEMA

__all__ = ["Callback", "CallbackList", "TrainContext"]


@dataclass
class TrainContext:
    """What a callback may look at (and, for ``stop``, set) during a run."""

    config: TrainConfig
    model: nn.Module  # the model being trained (a YOLOv4)
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None
    run_dir: Path
    class_names: list[str]
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0  # optimizer steps done
    batches_per_epoch: int = 0
    accumulate: int = 1  # batches per optimizer step right now (ramps up during warm-up)
    stop: bool = False  # set True to stop after the current epoch
    extra: dict[str, Any] = field(default_factory=dict)  # free room for callbacks


class Callback:
    """Base class: override the hooks you need."""

    def on_train_start(self, ctx: TrainContext) -> None:
        """Model, optimizer and run folder are ready; no batch has run."""

    def on_after_backward(self, model: nn.Module, step: int) -> None:
        """Gradients of the coming optimizer step ``step`` (0-based) are complete and
        unscaled; change them here (before clipping and ``optimizer.step()``)."""

    def on_batch_end(self, ctx: TrainContext, batch_index: int, parts: torch.Tensor) -> None:
        """After a batch (and its optimizer step, if one was due); ``parts`` the batch's
        detached loss parts."""

    def on_checkpoint(self, ctx: TrainContext, path: Path, metadata: dict[str, Any]) -> None:
        """Before ``path`` is written; entries added to ``metadata`` are saved with it
        (plain values and tensors only)."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After epoch ``epoch`` (1-based, as in results.csv) with its results.csv row."""

    def on_train_end(self, ctx: TrainContext, result: Any) -> None:
        """After the last epoch and the final plots; ``result`` is the TrainResult."""


class CallbackList(Callback):
    """Calls each callback's hook in order."""

    def __init__(self, callbacks: Iterable[Callback] = ()) -> None:
        self.callbacks: Sequence[Callback] = list(callbacks)

    def on_train_start(self, ctx):
        for cb in self.callbacks:
            cb.on_train_start(ctx)

    def on_after_backward(self, model, step):
        for cb in self.callbacks:
            cb.on_after_backward(model, step)

    def on_batch_end(self, ctx, batch_index, parts):
        for cb in self.callbacks:
            cb.on_batch_end(ctx, batch_index, parts)

    def on_checkpoint(self, ctx, path, metadata):
        for cb in self.callbacks:
            cb.on_checkpoint(ctx, path, metadata)

    def on_epoch_end(self, epoch, metrics):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, metrics)

    def on_train_end(self, ctx, result):
        for cb in self.callbacks:
            cb.on_train_end(ctx, result)
