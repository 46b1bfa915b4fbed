"""Exponential moving average of the weights (YOLOv5's ``ModelEMA``).

After every optimizer step, every floating-point entry of the state dict (weights and
BatchNorm statistics) moves toward the model's::

    d = decay * (1 - exp(-updates / tau))     # ramps from 0 to ``decay``
    ema = d * ema + (1 - d) * model

The ramp lets the average follow the fast early changes (d is ~0 at the first update)
and settle to a slow average later. The averaged copy is what validation measures and
what the checkpoints hold.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """Keeps ``self.ema``, an averaged copy of a model (eval mode, no gradients).

    Args:
        model: the model being trained (copied; not modified).
        decay: the final decay.
        tau: ramp length in updates (at ``updates = tau`` the decay is 63 % of ``decay``).
        updates: updates already done (when resuming).
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0
    ) -> None:
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.tau = float(tau)
        self.updates = int(updates)

    def decay_at(self, updates: int) -> float:
        """The decay used by update number ``updates`` (1-based)."""
        return self.decay * (1 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step toward ``model``'s current state."""
        self.updates += 1
        d = self.decay_at(self.updates)
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:  # num_batches_tracked (int) stays as copied
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
