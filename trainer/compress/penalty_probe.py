"""How hard the L1 penalty pushes next to the BatchNorm scales' own gradients.

Network slimming ranks channels by |gamma| after sparse training. That ranking means
something only where the penalty ``c = N * s`` (what is added to each gamma's gradient,
see :mod:`.sparsity`) is weaker than the gradient of the channels that matter: then they
hold their gamma and the others sink. Measured on this project's CPU baseline (yolov4-s,
batch 8), the gammas' gradients are small: median |dL/dgamma| 2e-5, 99th percentile
7e-4. An s of 1e-2 (c = 0.08) pushed a hundred times harder than the strongest of them,
so every gamma shrank alike and pruning by |gamma| was close to pruning at random.

:class:`PenaltyProbe` collects |grad| of the penalised gammas over the first optimizer
steps of a sparse run (before the penalty is added) and reports the share of channels
whose mean |grad| is below ``c`` (the ones the penalty dominates) and the s that would
dominate a chosen share. The sparse callback writes it to ``penalty.json`` and warns
when the penalty dominates (nearly) every channel.
"""

from __future__ import annotations

from typing import Any

import torch

QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)
DOMINATED_WARNING = 0.98  # share of channels above which the ranking says little


class PenaltyProbe:
    """Mean |grad| per penalised channel over the first ``steps`` optimizer steps."""

    def __init__(self, steps: int = 20) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = steps
        self.seen = 0
        self._sum: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.seen >= self.steps

    def add(self, grads: torch.Tensor) -> None:
        """One step's gradients of the penalised gammas (a 1-D tensor, fixed order)."""
        g = grads.detach().abs().double().cpu().flatten()
        self._sum = g if self._sum is None else self._sum + g
        self.seen += 1

    def mean_abs(self) -> torch.Tensor:
        if self._sum is None:
            raise RuntimeError("PenaltyProbe: no gradients added")
        return self._sum / self.seen

    def report(self, c: float, images_per_step: int, share: float = 0.7) -> dict[str, Any]:
        """The probe's findings for a penalty ``c`` (= images_per_step * s).

        ``suggested_s``: the s whose penalty equals the ``share`` quantile of the mean
        |grad|, so about that share of the channels is dominated by it.
        """
        g = self.mean_abs()
        q = torch.quantile(g, torch.tensor(QUANTILES, dtype=g.dtype))
        return {
            "steps": self.seen,
            "channels": int(g.numel()),
            "penalty": c,
            "grad_abs_quantiles": {f"{k:g}": float(v) for k, v in zip(QUANTILES, q, strict=True)},
            "dominated_share": float((g < c).double().mean()),
            "suggested_share": share,
            "suggested_s": float(torch.quantile(g, share)) / max(images_per_step, 1),
        }
