"""Channel pruning by BN scale (network slimming): plan, mask, fold, cut.

Plan (:func:`plan_channel_prune`)
---------------------------------
Each prunable channel group (:mod:`.dependency`) gets one importance per channel:
``|gamma|`` of its BatchNorm (``keep_by="gamma"``, the paper's criterion), or
``|gamma| / sqrt(running_var + eps)`` (``keep_by="scaled"``: the BN's true output scale),
or ``|gamma| / macs ** FLOPS_POWER`` (``keep_by="flops"``: a channel's multiply-adds, its
share of the convs writing and reading it, :func:`channel_macs`). The global |gamma|
ranking spares the early, high-resolution layers (their gammas are large), where most of
the multiply-adds are: half the channels cut took only a third of the GFLOPs (BENCHMARKS.md
"The default pipeline"); ``flops`` weighs a channel's cost in.
A group of convs tied by residual adds (a CSP trunk) takes, per channel, the MAX over its
members: a trunk channel is cut only when every conv writing it has a small gamma, so no
member loses a channel it still relies on (the sum would let one strong member hide three
dead ones less often, but could cut a channel one member needs; the max is conservative).

One global threshold: pool the importances of all candidate groups (one value per group
channel, so ``percent`` is a share of channels, not of gammas), sort them, and set the
threshold at the value ``floor(percent/100 * N)`` positions up; channels strictly below it
go. Then, per group: keep at least ``max(min_keep, ceil(min_keep_frac * width))`` channels
(a layer is never emptied), round the kept count UP to a multiple of ``round_to``
(default 8: channel counts that are not multiples of 8 waste SIMD lanes and GPU tiles, a
pitfall users of YOLO pruners report; ``round_to=1`` disables) without exceeding the
original width, and keep the channels of largest importance. Floors and rounding keep
more than the threshold asked: :attr:`PrunePlan.removed_fraction` is what is really cut.

Masked, folded, pruned: what is exact
-------------------------------------
* :func:`masked_model` is network slimming's reference: same architecture, removed
  channels' gamma set to 0. A removed channel then outputs the constant ``act(beta)``.
* :func:`folded_model` moves those constants into the consumers and silences the channels:
  for every conv reading removed channels, with ``k`` the constant value each removed
  input channel has AT THAT CONV'S INPUT (read from the masked model with hooks, so it is
  right through concats, max-pools, nearest upsampling and residual adds: a trunk channel's
  constant is the sum of its writers' constants up to that point), add
  ``shift[o] = sum_c k_c * sum_{u,v} W[o, c, u, v]`` to the consumer: ``running_mean -=
  shift`` when it has a BatchNorm (the convs have no bias; in train mode the batch mean
  absorbs a constant anyway), ``bias += shift`` for the heads' biased ``pred`` convs. Then
  the removed channels get ``gamma = beta = 0``, so they output ``act(0) = 0`` (true for
  every activation a spec may use; checked at run time). This is what Lam1360's and
  coldlarry's YOLOv3 slimming code do (``running_mean.sub_(offset)``).
* :func:`apply_channel_prune` cuts the folded model: zero channels read through zero
  padding are zero everywhere, so **the pruned model equals the folded model exactly**
  (float rounding only, about 1e-6; tested at 1e-4 on yolov4-n, any input, borders
  included).
* **Folded vs masked.** The fold is exact for every consumer that does not zero-pad its
  input (1x1 convs, ``pred``): there, pruned == masked exactly (tested). A k x k consumer
  with zero padding sees a removed channel's constant only on the taps that fall inside
  the image, so at its output's border ring (1 pixel for 3x3) the masked model differs
  from the fold by ``sum_c k_c * sum_{taps outside} W[o, c, tap]``; the interior is exact.
  :func:`fold_border_bound` gives, per such consumer, a bound on that difference in its
  normalised (BN) output units: ``|gamma_o| / sqrt(var_o+eps) * sum_c |k_c| *
  sum_{taps off-centre} |W[o, c, tap]|``. Downstream layers spread it, so end-to-end the
  two differ by an amount that grows with ``|act(beta)|`` of the removed channels (zero when
  every removed channel that feeds a padded k x k conv has ``act(beta) = 0``, e.g. beta = 0).
  An exact fold would need a per-position bias map, which Conv+BN cannot express and which
  would tie the model to one input size; we accept the border effect as every slimming
  implementation does, and measure it: :func:`max_output_diff`.

``apply_channel_prune(fold=False)`` skips the fold: the pruned model then equals the
masked model with the removed channels' beta zeroed too (``masked_model(zero_beta=True)``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from trainer.model import build, load_weights

from .dependency import ConvInfo, DependencyGraph, dependency_graph

__all__ = [
    "KEEP_BY",
    "FoldError",
    "PrunePlan",
    "SearchResult",
    "apply_channel_prune",
    "channel_importance",
    "channel_macs",
    "fold_border_bound",
    "folded_model",
    "masked_model",
    "max_output_diff",
    "max_percent_within",
    "plan_channel_prune",
    "prune_by_percent",
]

KEEP_BY = ("gamma", "scaled", "flops")
# keep_by="flops": |gamma| / (a channel's conv cost) ** FLOPS_POWER. 1 would rank by gamma
# per FLOP (an early 96x96 channel costs 256x a 6x6 one, which would strip the stem
# first); 0.5 is the geometric middle between that and plain |gamma|.
FLOPS_POWER = 0.5


class FoldError(RuntimeError):
    """A removed channel's constant cannot be folded (no BN/bias downstream, not constant)."""


# --------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrunePlan:
    """Which channels of each prunable group survive (see the module docstring)."""

    graph: DependencyGraph = field(repr=False, compare=False)
    percent: float
    threshold: float
    keep_by: str
    round_to: int
    min_keep_frac: float
    min_keep: int
    keep: Mapping[str, tuple[int, ...]]  # group name -> kept channel indices, ascending

    def kept(self, group: str) -> tuple[int, ...]:
        """Kept channels of a group (all of them for groups not in the plan)."""
        if group in self.keep:
            return self.keep[group]
        return tuple(range(self.graph.group(group).width))

    def removed(self, group: str) -> tuple[int, ...]:
        if group not in self.keep:
            return ()
        kept = set(self.keep[group])
        return tuple(c for c in range(self.graph.group(group).width) if c not in kept)

    @property
    def widths(self) -> dict[str, int]:
        """Kept count per prunable group."""
        return {g: len(k) for g, k in self.keep.items()}

    @property
    def spec_widths(self) -> dict[str, int]:
        """``YoloSpec.with_widths`` argument: the groups that lose channels (by first member)."""
        return {
            g.name: len(self.keep[g.name])
            for g in self.graph.prunable
            if g.name in self.keep and len(self.keep[g.name]) < g.width
        }

    @property
    def channels_before(self) -> int:
        return sum(g.width for g in self.graph.prunable)

    @property
    def channels_after(self) -> int:
        return sum(len(self.kept(g.name)) for g in self.graph.prunable)

    @property
    def removed_fraction(self) -> float:
        return 1.0 - self.channels_after / max(1, self.channels_before)

    def kept_inputs(self, conv: ConvInfo) -> list[int]:
        """Indices of ``conv``'s input channels that survive."""
        out: list[int] = []
        for seg in conv.inputs:
            hi = seg.start + seg.length
            if seg.group not in self.keep:  # kept whole (the network input, a head group)
                out.extend(range(seg.offset, seg.offset + seg.length))
                continue
            out.extend(
                seg.offset + c - seg.start for c in self.keep[seg.group] if seg.start <= c < hi
            )
        return out

    def removed_inputs(self, conv: ConvInfo) -> list[int]:
        kept = set(self.kept_inputs(conv))
        return [c for c in range(conv.in_channels) if c not in kept]

    def summary(self) -> str:
        return (
            f"channel prune {self.percent:g}% by {self.keep_by} (threshold {self.threshold:.4g}, "
            f"round to {self.round_to}): {self.channels_before} -> {self.channels_after} "
            f"channels ({100 * self.removed_fraction:.1f}% removed) in "
            f"{len(self.spec_widths)}/{len(self.graph.prunable)} groups"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a JSON report (kept indices included: the plan is reproducible)."""
        return {
            "percent": self.percent,
            "threshold": self.threshold if math.isfinite(self.threshold) else None,
            "keep_by": self.keep_by,
            "round_to": self.round_to,
            "min_keep_frac": self.min_keep_frac,
            "min_keep": self.min_keep,
            "channels_before": self.channels_before,
            "channels_after": self.channels_after,
            "removed_fraction": self.removed_fraction,
            "groups": {
                g.name: {
                    "members": list(g.members),
                    "width": g.width,
                    "kept": len(self.kept(g.name)),
                    "keep": list(self.kept(g.name)),
                }
                for g in self.graph.prunable
            },
        }


def channel_importance(
    model: nn.Module, graph: DependencyGraph, keep_by: str = "gamma"
) -> dict[str, Tensor]:
    """Per prunable group, one importance per channel (max over tied members), float64 CPU."""
    if keep_by not in KEEP_BY:
        raise ValueError(f"keep_by must be one of {KEEP_BY}, got {keep_by!r}")
    modules = dict(model.named_modules())
    cost = channel_macs(model, graph) if keep_by == "flops" else {}
    out: dict[str, Tensor] = {}
    for g in graph.prunable:
        per_member = []
        for m in g.members:
            bn = modules[graph.convs[m].bn]
            v = bn.weight.detach().double().abs().cpu()
            if keep_by == "scaled":
                v = v / torch.sqrt(bn.running_var.detach().double().cpu() + bn.eps)
            per_member.append(v)
        out[g.name] = torch.stack(per_member).amax(0)
        if keep_by == "flops":
            out[g.name] = out[g.name] / max(cost[g.name], 1.0) ** FLOPS_POWER
    return out


def channel_macs(model: nn.Module, graph: DependencyGraph) -> dict[str, float]:
    """Per prunable group, the multiply-adds one of its channels costs per image at the
    model's input size: its share of every member conv (writing it) and of every consumer
    conv (reading it), from the output sizes of one forward pass."""
    spec = model.spec
    modules = dict(model.named_modules())
    area: dict[str, int] = {}
    hooks = [
        modules[info.conv].register_forward_hook(
            lambda _m, _i, out, name=name: area.__setitem__(name, out.shape[-2] * out.shape[-1])
        )
        for name, info in graph.convs.items()
    ]
    try:
        param = next(model.parameters())
        x = torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size,
                        dtype=param.dtype, device=param.device)  # fmt: skip
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(x)
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    costs: dict[str, float] = {}
    for g in graph.prunable:
        macs = 0.0
        for m in g.members:  # writing one output channel: k*k*in per output pixel
            info = graph.convs[m]
            macs += info.kernel[0] * info.kernel[1] * info.in_channels * area[m]
        for c in g.consumers:  # reading one input channel: k*k*out per output pixel
            info = graph.convs[c.conv]
            macs += info.kernel[0] * info.kernel[1] * info.out_channels * area[c.conv]
        costs[g.name] = macs
    return costs


def plan_channel_prune(
    model: nn.Module,
    graph: DependencyGraph | None = None,
    percent: float = 50.0,
    *,
    min_keep_frac: float = 0.1,
    min_keep: int = 1,
    round_to: int = 8,
    keep_by: str = "gamma",
    groups: Iterable[str] | None = None,
) -> PrunePlan:
    """Plan a global-threshold channel prune (see the module docstring).

    Args:
        graph: the model's dependency graph; traced when None.
        percent: share (0-100) of the candidate channels the threshold removes, before
            the per-layer floor and the rounding.
        min_keep_frac, min_keep: per-group floor, ``max(min_keep, ceil(frac * width))``.
        round_to: kept counts are rounded up to a multiple of it (capped at the width).
        keep_by: ``"gamma"`` or ``"scaled"``.
        groups: restrict pruning to these groups (names or member conv names); the
            threshold is then taken over them only. None: every prunable group.
    """
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"percent must be in [0, 100], got {percent}")
    if not 0.0 <= min_keep_frac <= 1.0:
        raise ValueError(f"min_keep_frac must be in [0, 1], got {min_keep_frac}")
    if min_keep < 1 or round_to < 1:
        raise ValueError("min_keep and round_to must be >= 1 (a layer is never emptied)")
    graph = graph if graph is not None else dependency_graph(model)
    importance = channel_importance(model, graph, keep_by)
    if groups is not None:
        chosen = {graph.group(g).name for g in groups}
        bad = [g for g in chosen if g not in importance]
        if bad:
            raise ValueError(f"not prunable: {bad}")
        importance = {g: v for g, v in importance.items() if g in chosen}
    pool = torch.sort(torch.cat(list(importance.values()))).values if importance else None
    n = 0 if pool is None else len(pool)
    n_remove = math.floor(percent / 100.0 * n + 1e-9)
    if n == 0 or n_remove == 0:
        threshold = -math.inf
    elif n_remove >= n:
        threshold = math.inf
    else:
        threshold = float(pool[n_remove])

    keep: dict[str, tuple[int, ...]] = {}
    for name, imp in importance.items():
        width = len(imp)
        k = int((imp >= threshold).sum())
        k = max(k, min_keep, math.ceil(min_keep_frac * width - 1e-9))
        k = min(width, math.ceil(k / round_to) * round_to)
        order = torch.argsort(-imp, stable=True)[:k]
        keep[name] = tuple(sorted(int(i) for i in order))
    return PrunePlan(
        graph=graph,
        percent=float(percent),
        threshold=threshold,
        keep_by=keep_by,
        round_to=round_to,
        min_keep_frac=min_keep_frac,
        min_keep=min_keep,
        keep=keep,
    )


# --------------------------------------------------------------------------------------
# Masked and folded models
# --------------------------------------------------------------------------------------


def masked_model(model: nn.Module, plan: PrunePlan, *, zero_beta: bool = False) -> nn.Module:
    """A copy of ``model`` with the removed channels' gamma set to 0 (and beta, if asked)."""
    m = copy.deepcopy(model)
    modules = dict(m.named_modules())
    with torch.no_grad():
        for g in plan.graph.prunable:
            removed = list(plan.removed(g.name))
            if not removed:
                continue
            for member in g.members:
                bn = modules[plan.graph.convs[member].bn]
                bn.weight[removed] = 0
                if zero_beta:
                    bn.bias[removed] = 0
    return m


def _probe_input(model: nn.Module) -> Tensor:
    spec = model.spec
    p = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, spec.in_channels, 32, 32, generator=gen, dtype=torch.float64)
    return x.to(device=p.device, dtype=p.dtype)


def _removed_inputs_seen(model: nn.Module, plan: PrunePlan) -> dict[str, tuple[list[int], Tensor]]:
    """Run ``model`` once; per consumer conv, its removed input channels and their values.

    Returns ``{conv: (indices, values (B, r, H, W))}`` for convs that read removed channels.
    """
    modules = dict(model.named_modules())
    want = {}
    for name, info in plan.graph.convs.items():
        idx = plan.removed_inputs(info)
        if idx:
            want[name] = idx
    seen: dict[str, tuple[list[int], Tensor]] = {}
    hooks = []
    for name, idx in want.items():

        def hook(_mod, inputs, name=name, idx=idx):
            seen[name] = (idx, inputs[0][:, idx].detach())

        hooks.append(modules[plan.graph.convs[name].conv].register_forward_pre_hook(hook))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(_probe_input(model))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def removed_constants(masked: nn.Module, plan: PrunePlan) -> dict[str, tuple[list[int], Tensor]]:
    """Per consumer conv: its removed input channels and their constant values (masked model).

    Raises FoldError if a removed channel is not spatially constant at a consumer (an op
    between producer and consumer that does not carry constants, e.g. zero padding).
    """
    out = {}
    for name, (idx, x) in _removed_inputs_seen(masked, plan).items():
        k = x[0, :, 0, 0]
        dev = (x - k[None, :, None, None]).abs().amax().item()
        if dev > 1e-5 * (1.0 + k.abs().max().item()):
            raise FoldError(f"removed channels are not constant at the input of {name} ({dev:g})")
        out[name] = (idx, k.double())
    return out


def _fold_shifts(model: nn.Module, plan: PrunePlan, constants) -> dict[str, Tensor]:
    modules = dict(model.named_modules())
    shifts = {}
    for name, (idx, k) in constants.items():
        if not bool(k.abs().max() > 0):
            continue
        w = modules[plan.graph.convs[name].conv].weight.detach()[:, idx].double()
        shifts[name] = w.sum((2, 3)) @ k.to(w.device)
    return shifts


def _apply_shifts(model: nn.Module, graph: DependencyGraph, shifts: Mapping[str, Tensor]) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, shift in shifts.items():
            info = graph.convs[name]
            if info.bn is not None:
                bn = modules[info.bn]
                bn.running_mean.copy_((bn.running_mean.double() - shift).to(bn.running_mean.dtype))
            elif info.bias:
                conv = modules[info.conv]
                conv.bias.copy_((conv.bias.double() + shift).to(conv.bias.dtype))
            else:
                raise FoldError(f"{name} has neither a BatchNorm nor a bias to fold into")


def _check_silent(model: nn.Module, plan: PrunePlan) -> None:
    for name, (_, x) in _removed_inputs_seen(model, plan).items():
        if x.numel() and x.abs().max().item() != 0.0:
            raise FoldError(
                f"removed channels read by {name} are not zero after gamma = beta = 0: "
                "an activation with act(0) != 0 cannot be pruned without a fold"
            )


def folded_model(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """The masked model with removed channels' constants folded into their consumers.

    Same architecture as ``model``; the removed channels output exactly 0. The pruned model
    equals it exactly; it equals the masked model except at zero-padded borders of k x k
    consumers (module docstring).
    """
    m = masked_model(model, plan)
    if not any(plan.removed(g.name) for g in plan.graph.prunable):
        return m
    shifts = _fold_shifts(m, plan, removed_constants(m, plan))
    modules = dict(m.named_modules())
    with torch.no_grad():
        for g in plan.graph.prunable:
            removed = list(plan.removed(g.name))
            for member in g.members if removed else ():
                modules[plan.graph.convs[member].bn].bias[removed] = 0
    _apply_shifts(m, plan.graph, shifts)
    _check_silent(m, plan)
    return m


def fold_border_bound(model: nn.Module, plan: PrunePlan) -> dict[str, float]:
    """Per zero-padding consumer conv: bound on |masked - folded| at its border pixels.

    In the consumer's normalised output units (after BN, before the activation; raw output
    for a conv without BN), assuming its other inputs agree. Interior pixels: 0.
    """
    masked = masked_model(model, plan)
    modules = dict(masked.named_modules())
    out = {}
    for name, (idx, k) in removed_constants(masked, plan).items():
        info = plan.graph.convs[name]
        if not info.pads:
            continue
        w = modules[info.conv].weight.detach()[:, idx].double().abs().cpu()
        # only the tap at (padding_h, padding_w) is inside the input at every output pixel
        ph, pw = info.padding
        off_centre = w.sum((2, 3))
        if ph < w.shape[2] and pw < w.shape[3]:
            off_centre = off_centre - w[:, :, ph, pw]
        bound = off_centre @ k.abs().cpu()
        if info.bn is not None:
            bn = modules[info.bn]
            scale = bn.weight.detach().double().abs().cpu() / torch.sqrt(
                bn.running_var.detach().double().cpu() + bn.eps
            )
            bound = bound * scale
        out[name] = float(bound.max())
    return out


# --------------------------------------------------------------------------------------
# Cutting
# --------------------------------------------------------------------------------------


def _build_like(model: nn.Module, spec) -> nn.Module:
    """An uninitialised model of ``spec`` on ``model``'s device, dtype and mode."""
    p = next(model.parameters())
    with torch.device("meta"):
        new = build(spec)
    new = new.to_empty(device=p.device).to(dtype=p.dtype)
    return new.train(model.training)


def _sliced_state(model: nn.Module, plan: PrunePlan) -> dict[str, Tensor]:
    state = model.state_dict()
    new = dict(state)
    for info in plan.graph.convs.values():
        out_idx = torch.tensor(plan.kept(info.group), dtype=torch.long)
        in_idx = torch.tensor(plan.kept_inputs(info), dtype=torch.long)
        w = state[f"{info.conv}.weight"]
        new[f"{info.conv}.weight"] = w.index_select(0, out_idx.to(w.device)).index_select(
            1, in_idx.to(w.device)
        )
        if info.bias:
            b = state[f"{info.conv}.bias"]
            new[f"{info.conv}.bias"] = b.index_select(0, out_idx.to(b.device))
        if info.bn is not None:
            for key in ("weight", "bias", "running_mean", "running_var"):
                t = state[f"{info.bn}.{key}"]
                new[f"{info.bn}.{key}"] = t.index_select(0, out_idx.to(t.device))
    return new


def apply_channel_prune(
    model: nn.Module, plan: PrunePlan, *, fold: bool = True
) -> tuple[Any, nn.Module]:
    """Cut ``model`` as ``plan`` says -> ``(new_spec, new_model)``; ``model`` is untouched.

    ``fold=True`` (default): the result equals :func:`folded_model` exactly. ``fold=False``:
    it equals ``masked_model(model, plan, zero_beta=True)`` exactly.
    """
    source = folded_model(model, plan) if fold else masked_model(model, plan, zero_beta=True)
    new_spec = model.spec.with_widths(plan.spec_widths)
    new_model = _build_like(model, new_spec)
    load_weights(new_model, _sliced_state(source, plan))
    return new_spec, new_model


def prune_by_percent(
    model: nn.Module,
    percent: float,
    *,
    graph: DependencyGraph | None = None,
    fold: bool = True,
    **plan_kwargs: Any,
) -> tuple[Any, nn.Module]:
    """:func:`plan_channel_prune` then :func:`apply_channel_prune` -> ``(new_spec, new_model)``."""
    plan = plan_channel_prune(model, graph, percent, **plan_kwargs)
    return apply_channel_prune(model, plan, fold=fold)


def max_output_diff(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """Max |a(x) - b(x)| over the raw maps, both in eval mode (modes restored)."""
    modes = a.training, b.training
    try:
        with torch.no_grad():
            ya, yb = a.eval()(x), b.eval()(x)
    finally:
        a.train(modes[0])
        b.train(modes[1])
    return max(float((p - q).abs().max()) for p, q in zip(ya, yb, strict=True))


# --------------------------------------------------------------------------------------
# Searching the largest percent within an mAP budget
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResult:
    """What :func:`max_percent_within` found."""

    percent: float  # largest feasible percent found (0.0 when nothing else is)
    map50: float  # evaluate_fn of the model pruned at ``percent``
    base_map50: float  # evaluate_fn of the unpruned model
    max_map_drop: float
    trials: tuple[tuple[float, float, bool], ...]  # (percent, map50, within budget), in order

    @property
    def drop(self) -> float:
        return self.base_map50 - self.map50


def max_percent_within(
    model: nn.Module,
    evaluate_fn: Callable[[nn.Module], float],
    max_map_drop: float,
    lo: float = 0.0,
    hi: float = 90.0,
    steps: int = 7,
    **prune_kwargs: Any,
) -> SearchResult:
    """Bisection for the largest ``percent`` in ``[lo, hi]`` whose mAP50 drop <= budget.

    ``evaluate_fn(model) -> map50`` (same data each call). The unpruned model is evaluated
    once; ``hi`` is tried first (taken if within budget), then ``steps`` bisections.
    Percents that give the same kept widths (rounding makes that common) are evaluated
    once. Assumes the drop grows with ``percent`` (near enough after sparse training);
    otherwise the result is a feasible percent, not necessarily the largest one.
    ``prune_kwargs`` go to :func:`prune_by_percent` (round_to, keep_by, fold, ...).
    """
    if not 0.0 <= lo <= hi <= 100.0:
        raise ValueError(f"need 0 <= lo <= hi <= 100, got {lo}, {hi}")
    graph = prune_kwargs.pop("graph", None) or dependency_graph(model)
    fold = prune_kwargs.pop("fold", True)
    base = float(evaluate_fn(model))
    cache: dict[tuple, float] = {}
    trials: list[tuple[float, float, bool]] = []

    def score(percent: float) -> float:
        plan = plan_channel_prune(model, graph, percent, **prune_kwargs)
        key = tuple(sorted(plan.widths.items()))
        if key not in cache:
            if not plan.spec_widths:
                cache[key] = base
            else:
                _, pruned = apply_channel_prune(model, plan, fold=fold)
                cache[key] = float(evaluate_fn(pruned))
        m = cache[key]
        trials.append((percent, m, base - m <= max_map_drop))
        return m

    m_lo = score(lo)
    if base - m_lo > max_map_drop:
        return SearchResult(lo, m_lo, base, max_map_drop, tuple(trials))  # nothing feasible
    m_hi = score(hi)
    if base - m_hi <= max_map_drop:
        return SearchResult(hi, m_hi, base, max_map_drop, tuple(trials))
    best, best_map = lo, m_lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        m = score(mid)
        if base - m <= max_map_drop:
            lo, best, best_map = mid, mid, m
        else:
            hi = mid
    return SearchResult(best, best_map, base, max_map_drop, tuple(trials))
