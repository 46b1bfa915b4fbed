"""Pruning plots (matplotlib, Agg backend): channels kept per conv, |gamma| histogram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

__all__ = ["plot_channels_kept", "plot_gamma_histogram"]


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_channels_kept(original_spec, pruned_spec, png) -> Path:
    """Bars per conv (forward order): original width (grey) and kept width (colour).

    Convs of dropped residual blocks show 0 kept. Writes ``png``; returns its path.
    """
    before = original_spec.conv_widths()
    after = pruned_spec.conv_widths()
    names = list(before)
    b = np.array([before[n] for n in names])
    a = np.array([after.get(n, 0) for n in names])
    fig, ax = plt.subplots(figsize=(max(10, 0.16 * len(names)), 5), tight_layout=True)
    x = np.arange(len(names))
    ax.bar(x, b, color="0.8", width=0.9, label="original")
    colors = np.where(a == 0, "tab:red", "tab:blue")
    ax.bar(x, a, color=colors, width=0.9, label="kept")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=90, fontsize=5)
    ax.set_ylabel("output channels")
    ax.set_xlim(-1, len(names))
    ax.set_title(
        f"channels kept: {int(a.sum()):,} of {int(b.sum()):,} ({a.sum() / max(1, b.sum()):.1%}); "
        f"params {original_spec.num_params():,} -> {pruned_spec.num_params():,}"
    )
    ax.legend(loc="upper left")
    return _save(fig, png)


def plot_gamma_histogram(
    model: nn.Module, png, *, threshold: float | None = None, bins: int = 100
) -> Path:
    """Histogram of |gamma| over every BatchNorm (log counts); optional threshold line."""
    if hasattr(model, "named_bns"):
        bns = [bn for _, bn in model.named_bns()]
    else:
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    gammas = torch.cat([bn.weight.detach().abs().float().cpu() for bn in bns]).numpy()
    fig, ax = plt.subplots(figsize=(8, 4.5), tight_layout=True)
    ax.hist(gammas, bins=bins, color="tab:blue", log=True)
    ax.set_xlabel("|gamma| (BatchNorm scale)")
    ax.set_ylabel("channels")
    title = (
        f"{len(gammas):,} channels: median {np.median(gammas):.3g}, "
        f"{(gammas < 1e-2).mean():.1%} below 0.01"
    )
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.legend()
        title += f", {(gammas < threshold).mean():.1%} below threshold"
    ax.set_title(title)
    return _save(fig, png)
