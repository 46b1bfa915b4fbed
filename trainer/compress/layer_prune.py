"""Layer pruning: drop whole residual blocks whose BN scales are smallest; and the combined
``prune(model, percent=..., layers=...)``.

Ranking (:func:`block_scores`)
------------------------------
A CSP residual block is ``x + conv2(conv1(x))``. Its score is the mean ``|gamma|`` over
the channels of BOTH its BatchNorms (conv1's hidden BN and conv2's trunk BN, pooled, so
each channel counts once). conv2's BN scales the branch that is added to the trunk and
is the one YOLOv3/v4 layer pruners (coldlarry's ``shortcut`` pruning) rank by; conv1's
gates what reaches conv2: a branch with a dead hidden layer is as useless as one with a
dead output, so both count. :func:`plan_layer_prune` drops the ``n`` weakest blocks,
keeping at least ``min_blocks_per_stage`` present per stage (default 1; 0 allows a stage
to lose all its blocks: the shortcut remains, the stage still computes
``fuse(cat[transition(main(d)), skip(d)])``).

Dropping (:func:`apply_layer_prune`)
------------------------------------
``spec.without_blocks`` marks the blocks absent; the rest keep their names and weights.
With ``fold=True`` (default) the dropped branch's constant part is kept: with conv2's gamma
at 0 the branch outputs ``act(beta)`` (per trunk channel), which every later reader of the
trunk (the next blocks' conv1, the transition: 1x1 convs) receives; it is folded into
their BN ``running_mean`` exactly as :mod:`.channel_prune` folds removed channels. So the
pruned model equals, to float rounding, :func:`masked_blocks` (the model with the dropped
blocks' conv2 gamma set to 0); with ``fold=False`` it equals
``masked_blocks(zero_beta=True)`` (the branch adds exactly 0). Both are tested.

Layers first, then channels (:func:`prune`)
-------------------------------------------
Layer pruning changes which convs tie a trunk: the channel importance of a trunk is the max
over its writers, so a block about to be dropped would keep trunk channels alive if
channels were cut first; and the global channel threshold should be a percentile of the
channels that will exist. Layer scores, in turn, are means over a block's own channels,
and cutting channels first would inflate them for heavily cut blocks (the survivors are
the large gammas). So :func:`prune` drops blocks first, re-traces the graph, then cuts
channels.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer.model import load_weights

from .channel_prune import (
    PrunePlan,
    _apply_shifts,
    _build_like,
    apply_channel_prune,
    plan_channel_prune,
)
from .dependency import DependencyGraph, dependency_graph

__all__ = [
    "PruneResult",
    "apply_layer_prune",
    "block_scores",
    "masked_blocks",
    "plan_layer_prune",
    "prune",
]

_STAGE = re.compile(r"^(backbone\.stage\d+)\.blocks\.\d+$")


def block_scores(model: nn.Module) -> dict[str, float]:
    """Mean |gamma| over conv1's and conv2's BN channels, per present residual block."""
    modules = dict(model.named_modules())
    out = {}
    for block in model.spec.block_names():
        gammas = torch.cat(
            [
                modules[f"{block}.{c}.bn"].weight.detach().abs().double().cpu()
                for c in ("conv1", "conv2")
            ]
        )
        out[block] = float(gammas.mean())
    return out


def _stage(block: str) -> str:
    m = _STAGE.match(block)
    if m is None:
        raise ValueError(f"not a residual block name: {block!r}")
    return m.group(1)


def plan_layer_prune(model: nn.Module, n: int, *, min_blocks_per_stage: int = 1) -> list[str]:
    """The ``n`` weakest residual blocks (forward order) that may go.

    Raises ValueError if fewer than ``n`` can go with ``min_blocks_per_stage`` kept.
    """
    if n < 0 or min_blocks_per_stage < 0:
        raise ValueError("n and min_blocks_per_stage must be >= 0")
    scores = block_scores(model)
    left: dict[str, int] = {}
    for b in scores:
        left[_stage(b)] = left.get(_stage(b), 0) + 1
    chosen = []
    for b in sorted(scores, key=lambda b: (scores[b], b)):
        if len(chosen) == n:
            break
        if left[_stage(b)] > min_blocks_per_stage:
            chosen.append(b)
            left[_stage(b)] -= 1
    if len(chosen) < n:
        raise ValueError(
            f"only {len(chosen)} of {len(scores)} residual blocks can go while keeping "
            f"{min_blocks_per_stage} per stage; asked for {n}"
        )
    order = list(scores)
    return sorted(chosen, key=order.index)


def masked_blocks(model: nn.Module, blocks: Iterable[str], *, zero_beta: bool = False) -> nn.Module:
    """A copy of ``model`` with the blocks' conv2 gamma (and beta, if asked) set to 0."""
    m = copy.deepcopy(model)
    modules = dict(m.named_modules())
    with torch.no_grad():
        for b in blocks:
            bn = modules[f"{b}.conv2.bn"]
            bn.weight.zero_()
            if zero_beta:
                bn.bias.zero_()
    return m


def _branch_constants(model: nn.Module, blocks: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per block, the constant its branch adds when conv2's gamma is 0 (act(beta)), exact."""
    masked = masked_blocks(model, blocks)
    modules = dict(masked.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        modules[f"{b}.conv2"].register_forward_hook(
            lambda _m, _i, out, b=b: seen.__setitem__(b, out[0, :, 0, 0].detach().double())
        )
        for b in blocks
    ]
    p = next(masked.parameters())
    x = torch.rand(1, model.spec.in_channels, 32, 32, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            masked.eval()(x.to(device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return seen


def apply_layer_prune(
    model: nn.Module,
    blocks: Iterable[str],
    *,
    fold: bool = True,
    graph: DependencyGraph | None = None,
) -> tuple[Any, nn.Module]:
    """Drop residual blocks -> ``(new_spec, new_model)``; ``model`` is untouched."""
    blocks = list(blocks)
    known = set(model.spec.block_names())
    bad = [b for b in blocks if b not in known]
    if bad:
        raise ValueError(f"not present residual blocks: {bad}")
    new_spec = model.spec.without_blocks(blocks)
    source = model
    if fold and blocks:
        graph = graph if graph is not None else dependency_graph(model)
        order = {name: i for i, name in enumerate(graph.convs)}
        source = copy.deepcopy(model)
        modules = dict(source.named_modules())
        shifts: dict[str, torch.Tensor] = {}
        for b, k in _branch_constants(model, blocks).items():
            trunk = graph.group_of(f"{b}.conv2")
            after = order[f"{b}.conv2"]
            for c in trunk.consumers:
                if order[c.conv] <= after or c.conv.startswith(b + "."):
                    continue
                w = modules[graph.convs[c.conv].conv].weight.detach().double()
                w = w[:, c.offset : c.offset + c.length].sum((2, 3))
                s = w @ k[c.start : c.start + c.length].to(w.device)
                shifts[c.conv] = shifts.get(c.conv, 0) + s
        _apply_shifts(source, graph, shifts)
    prefixes = tuple(b + "." for b in blocks)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(prefixes)}
    new_model = _build_like(model, new_spec)
    load_weights(new_model, state)
    return new_spec, new_model


# --------------------------------------------------------------------------------------
# Layers and channels in one call
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` did."""

    spec: Any
    model: nn.Module
    blocks: tuple[str, ...]  # residual blocks dropped
    plan: PrunePlan | None  # the channel plan (on the layer-pruned model), None if no channels
    params_before: int
    params_after: int

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before

    def summary(self) -> str:
        parts = [
            f"params {self.params_before:,} -> {self.params_after:,} ({self.params_ratio:.1%})"
        ]
        if self.blocks:
            parts.append(f"dropped {len(self.blocks)} blocks: {', '.join(self.blocks)}")
        if self.plan is not None:
            parts.append(self.plan.summary())
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "blocks": list(self.blocks),
            "channels": None if self.plan is None else self.plan.to_dict(),
            "spec": self.spec.to_dict(),
        }


def prune(
    model: nn.Module,
    percent: float | None = None,
    layers: int | Sequence[str] | None = None,
    round_to: int = 8,
    *,
    fold: bool = True,
    min_blocks_per_stage: int = 1,
    **plan_kwargs: Any,
) -> PruneResult:
    """Layer pruning (``layers``: N weakest blocks, or block names), then channel pruning
    (``percent``); see the module docstring for the order. ``plan_kwargs`` go to
    :func:`plan_channel_prune` (min_keep_frac, min_keep, keep_by, groups)."""
    before = model.spec.num_params()
    blocks: list[str] = []
    current = model
    if layers:
        if isinstance(layers, int):
            blocks = plan_layer_prune(model, layers, min_blocks_per_stage=min_blocks_per_stage)
        else:
            blocks = list(layers)
        _, current = apply_layer_prune(model, blocks, fold=fold)
    plan = None
    if percent is not None and not math.isclose(percent, 0.0):
        plan = plan_channel_prune(current, None, percent, round_to=round_to, **plan_kwargs)
        _, current = apply_channel_prune(current, plan, fold=fold)
    elif current is model:
        current = copy.deepcopy(model)
    return PruneResult(
        spec=current.spec,
        model=current,
        blocks=tuple(blocks),
        plan=plan,
        params_before=before,
        params_after=current.spec.num_params(),
    )
