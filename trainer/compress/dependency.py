"""Which output channels are coupled, found from the model graph (torch.fx).

Channel pruning removes output channels of a conv and, with them, the input channels of
every conv that reads them. In YOLOv4 that reading goes through concats (CSP fuse, SPP,
PAN), max-pools, nearest upsampling, activations and residual adds; the adds tie the
convs that feed them into ONE group whose channels must be removed together (a CSP
stage's ``main`` and every block's ``conv2``). :func:`trace_dependencies` derives all of
it from the graph the model really computes:

1. ``torch.fx.symbolic_trace`` the model (torch.nn modules are leaves). ``YOLOv4.forward``
   validates its input in plain Python (``if x.ndim != 4 ...``), which fx cannot trace;
   the check is shadowed for the duration of the trace, nothing else is bypassed.
2. Walk the graph once, carrying for every tensor its channel layout: an ordered list of
   segments ``(producer conv, start, length)``. A conv starts a new segment; BatchNorm,
   activations, pools, interpolation and other per-channel ops keep it; ``cat`` on the
   channel dim concatenates the lists; ``chunk``/``split`` on it slice them; an
   element-wise op on two tensors (``x + f(x)``) unions the producers of aligned segments
   (union-find) into one channel group. Any op this walk does not know raises
   :class:`DependencyError` naming it: a silent guess would corrupt a pruned model.
3. Every conv's input layout gives its consumers entry: the group it reads and at which
   input-channel offset (``neck.spp.post.0`` reads ``neck.spp.pre.2`` four times, at
   offsets 0, w, 2w, 3w).

A group is prunable when every member conv is followed by its own BatchNorm (the gamma
that sparse training shrinks), no member is tied to the network input, and its channels
do not reach the network output (the heads' 1x1 ``pred`` convs: they carry a bias, no BN,
and their A*(5+C) channels are the output contract).

Conv names are the spec's (:mod:`trainer.model.spec`): a ``nn.Conv2d`` at ``<p>.conv``
whose output goes straight into the BatchNorm at ``<p>.bn`` is called ``<p>`` (the
ConvBNAct); any other conv by its own path (``head.p3.pred``). A group is named after
its first member in forward order (``backbone.stage3.main`` for the stage-3 trunk that
the spec calls ``backbone.stage3.trunk``); ``YoloSpec.with_widths`` accepts either.

Why our own tracer and not Torch-Pruning (``torch_pruning.DependencyGraph``)? It is not a
dependency of this project and adding one was not allowed here; YOLOv4 needs only the
handful of rules above; and the walk is small enough to audit. A second, independent
derivation, :func:`from_spec` (from ``spec.conv_nodes()``), must agree with the trace for
every variant (tests/unit/compress/test_dependency.py); :func:`dependency_graph` falls
back to it, with a warning, only if tracing fails for a spec-built model.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "INPUT",
    "ChannelGroup",
    "Consumer",
    "ConvInfo",
    "DependencyError",
    "DependencyGraph",
    "Segment",
    "dependency_graph",
    "from_spec",
    "trace_dependencies",
]

INPUT = "input"
"""Producer name of the network input's channels (never prunable)."""


class DependencyError(RuntimeError):
    """The graph holds an op whose channel mapping is unknown, or an inconsistent one."""


@dataclass(frozen=True)
class Segment:
    """Channels ``[start, start + length)`` of ``group``, at input channels from ``offset``."""

    group: str
    start: int
    length: int
    offset: int


@dataclass(frozen=True)
class Consumer:
    """A conv reading channels ``[start, start+length)`` of a group at input ``offset``."""

    conv: str
    offset: int
    start: int
    length: int


@dataclass(frozen=True)
class ConvInfo:
    """One conv of the graph, as the pruner needs it."""

    name: str  # spec name: "backbone.stem", "head.p3.pred"
    conv: str  # module path of the nn.Conv2d: "backbone.stem.conv", "head.p3.pred"
    bn: str | None  # module path of its BatchNorm2d, None when it has none
    group: str  # the channel group its output channels belong to
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    bias: bool
    inputs: tuple[Segment, ...]  # its input channels, in order

    @property
    def pads(self) -> bool:
        """True when the conv zero-pads its input (a constant input is not constant out)."""
        return any(p > 0 for p in self.padding)


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels written together: one conv's, or the convs a residual add ties."""

    name: str  # its first member, in forward order
    members: tuple[str, ...]  # conv names whose output channels are these channels
    width: int
    consumers: tuple[Consumer, ...]  # forward order of the consuming convs
    prunable: bool
    reason: str | None = field(default=None, compare=False)  # why not prunable

    @property
    def tied(self) -> bool:
        return len(self.members) > 1


@dataclass(frozen=True)
class DependencyGraph:
    """Groups of coupled channels and every conv's input layout; see the module docstring."""

    groups: tuple[ChannelGroup, ...]  # forward order of their first member
    convs: dict[str, ConvInfo]  # by conv name, forward order
    source: str = field(default="fx", compare=False)  # "fx" | "spec"

    def group(self, name: str) -> ChannelGroup:
        """A group by its name or by any member conv's name."""
        for g in self.groups:
            if g.name == name or name in g.members:
                return g
        raise KeyError(f"no channel group {name!r}")

    def group_of(self, conv: str) -> ChannelGroup:
        return self.group(self.convs[conv].group)

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def folds_exactly(self, group: str) -> bool:
        """True when no consumer of the group zero-pads its input: a removed channel's
        constant folds into them exactly (see :mod:`.channel_prune`)."""
        return not any(self.convs[c.conv].pads for c in self.group(group).consumers)

    def describe(self) -> str:
        lines = []
        for g in self.groups:
            flag = "prunable" if g.prunable else f"kept ({g.reason})"
            cons = ", ".join(f"{c.conv}@{c.offset}" for c in g.consumers) or "-"
            lines.append(f"{g.name} [{g.width}] {'+'.join(g.members)}: {flag} -> {cons}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------

_PASS_MODULES = (
    nn.BatchNorm2d,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.Mish,
    nn.LeakyReLU,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.ELU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Upsample,
)
"""Modules that keep the channel layout (per-channel or spatial-only ops)."""

_PASS_FUNCTIONS = {
    F.max_pool2d,
    F.avg_pool2d,
    F.interpolate,
    F.relu,
    F.leaky_relu,
    F.mish,
    F.silu,
    F.hardswish,
    F.gelu,
    torch.sigmoid,
    torch.tanh,
    torch.relu,
    F.dropout,
}
_PASS_METHODS = {"contiguous", "clone", "float", "double", "half", "to", "sigmoid", "relu"}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_ELEMENTWISE = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.mul,
    torch.add,
    torch.sub,
    torch.mul,
}
_ELEMENTWISE_METHODS = {"add", "add_", "sub", "mul"}


class _Layout(tuple):
    """A tensor's channels: a tuple of (producer, start, length)."""

    @property
    def width(self) -> int:
        return sum(n for _, _, n in self)

    def slice(self, lo: int, hi: int) -> _Layout:
        out, pos = [], 0
        for src, start, n in self:
            a, b = max(lo, pos), min(hi, pos + n)
            if a < b:
                out.append((src, start + a - pos, b - a))
            pos += n
        return _Layout(out)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def add(self, x: str) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@contextlib.contextmanager
def _input_check_shadowed(model: nn.Module) -> Iterator[None]:
    """Hide ``model._check_input`` (Python-level shape checks fx cannot trace)."""
    shadowed = callable(getattr(model, "_check_input", None)) and "_check_input" not in vars(model)
    if shadowed:
        model._check_input = lambda *a, **k: None
    try:
        yield
    finally:
        if shadowed:
            del model._check_input


def _channel_dim(args, kwargs, pos: int, default: int = 0) -> int:
    dim = kwargs.get("dim", args[pos] if len(args) > pos else default)
    return int(dim)


def trace_dependencies(model: nn.Module) -> DependencyGraph:
    """Derive the channel groups of ``model`` from its fx graph (see the module docstring).

    Works on a model built on the meta device too: nothing is computed, only traced.
    """
    sig = inspect.signature(model.forward)
    concrete = {
        name: p.default
        for i, (name, p) in enumerate(sig.parameters.items())
        if i > 0 and p.default is not inspect.Parameter.empty
    }
    with _input_check_shadowed(model):
        try:
            gm = fx.symbolic_trace(model, concrete_args=concrete or None)
        except Exception as e:
            raise DependencyError(f"torch.fx could not trace the model: {e}") from e
    modules = dict(gm.named_modules())

    uf = _UnionFind()
    env: dict[fx.Node, Any] = {}
    conv_order: list[str] = []  # conv module paths, forward order
    conv_inputs: dict[str, _Layout] = {}
    conv_node: dict[str, fx.Node] = {}
    bn_of: dict[str, str] = {}  # conv module path -> bn module path
    at_output: set[str] = set()

    def layouts_in(value: Any) -> Iterator[_Layout]:
        if isinstance(value, _Layout):
            yield value
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from layouts_in(v)
        elif isinstance(value, dict):
            for v in value.values():
                yield from layouts_in(v)

    def load(arg: Any) -> Any:
        return fx.node.map_arg(arg, lambda n: env[n])

    def unknown(node: fx.Node, args, kwargs) -> None:
        """Ops without tensors (shape asserts) are harmless; any other is an error."""
        if any(True for _ in layouts_in((args, kwargs))):
            raise DependencyError(
                f"unknown channel mapping of {node.op} {node.target!r} (node {node.name}); "
                "teach trainer/compress/dependency.py how it maps channels"
            )

    def tie(node: fx.Node, a: _Layout, b: _Layout) -> _Layout:
        if len(a) != len(b) or any(x[1:] != y[1:] for x, y in zip(a, b, strict=True)):
            raise DependencyError(
                f"{node.name}: element-wise op on channel layouts that do not align "
                f"({list(a)} vs {list(b)})"
            )
        for (sa, _, _), (sb, _, _) in zip(a, b, strict=True):
            uf.union(sa, sb)
        return a

    def split(node, x: _Layout, sizes: list[int]) -> tuple[_Layout, ...]:
        out, pos = [], 0
        for n in sizes:
            out.append(x.slice(pos, pos + n))
            pos += n
        if pos != x.width:
            raise DependencyError(f"{node.name}: split sizes {sizes} != width {x.width}")
        return tuple(out)

    def chunk_sizes(width: int, step: int) -> list[int]:
        return [min(step, width - i) for i in range(0, width, step)]

    def split_op(node, kind: str, args, kwargs) -> tuple[_Layout, ...]:
        x, arg = (
            args[0],
            args[1]
            if len(args) > 1
            else kwargs.get("chunks" if kind == "chunk" else "split_size_or_sections"),
        )
        if _channel_dim(args, kwargs, 2) not in (1, -3):
            raise DependencyError(f"{node.name}: {kind} on a non-channel dim is not supported")
        if kind == "chunk":
            return split(node, x, chunk_sizes(x.width, -(-x.width // int(arg))))
        if isinstance(arg, (list, tuple)):
            return split(node, x, [int(a) for a in arg])
        return split(node, x, chunk_sizes(x.width, int(arg)))

    for node in gm.graph.nodes:
        op = node.op
        if op == "placeholder":
            if node.name == next(iter(gm.graph.nodes)).name:
                uf.add(INPUT)
                env[node] = _Layout([(INPUT, 0, -1)])  # width fixed by the first reader
            else:
                env[node] = None
            continue
        if op == "get_attr":
            env[node] = None
            continue
        args, kwargs = load(node.args), load(node.kwargs)
        if op == "output":
            for lay in layouts_in(args):
                at_output.update(src for src, _, _ in lay)
            continue
        if op == "call_module":
            mod = modules[node.target]
            x = args[0] if args else None
            if isinstance(mod, nn.Conv2d):
                if not isinstance(x, _Layout):
                    raise DependencyError(f"conv {node.target} reads no traced tensor")
                if mod.groups != 1:
                    raise DependencyError(f"grouped conv {node.target} is not supported")
                if len(x) == 1 and x[0][0] == INPUT and x[0][2] < 0:
                    x = _Layout([(INPUT, 0, mod.in_channels)])
                if x.width != mod.in_channels:
                    raise DependencyError(
                        f"conv {node.target}: traced input width {x.width} != "
                        f"in_channels {mod.in_channels}"
                    )
                uf.add(node.target)
                conv_order.append(node.target)
                conv_inputs[node.target] = x
                conv_node[node.target] = node
                env[node] = _Layout([(node.target, 0, mod.out_channels)])
            elif isinstance(mod, _PASS_MODULES):
                if isinstance(mod, nn.BatchNorm2d) and isinstance(x, _Layout):
                    src = node.args[0]
                    if (
                        isinstance(src, fx.Node)
                        and src.op == "call_module"
                        and src.target in conv_node
                        and len(src.users) == 1
                        and len(x) == 1
                    ):
                        bn_of[src.target] = node.target
                env[node] = x
            else:
                unknown(node, args, kwargs)  # raises if channels flow in
                env[node] = None
            continue
        target = node.target
        if op == "call_function":
            if target in _CAT:
                tensors = args[0]
                dim = _channel_dim(args, kwargs, 1)
                if dim in (1, -3):
                    env[node] = _Layout([s for t in tensors for s in t])
                elif all(t == tensors[0] for t in tensors):
                    env[node] = tensors[0]
                else:
                    raise DependencyError(f"{node.name}: cat of different layouts on dim {dim}")
            elif target in _ELEMENTWISE:
                a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
                if isinstance(a, _Layout) and isinstance(b, _Layout):
                    env[node] = tie(node, a, b)
                else:
                    env[node] = a if isinstance(a, _Layout) else b
            elif target in _PASS_FUNCTIONS:
                env[node] = args[0]
            elif target is operator.getitem and isinstance(args[0], (list, tuple)):
                env[node] = args[0][args[1]]
            elif target in (torch.chunk, torch.split) and isinstance(args[0], _Layout):
                env[node] = split_op(
                    node, "chunk" if target is torch.chunk else "split", args, kwargs
                )
            else:
                unknown(node, args, kwargs)  # raises if channels flow in
                env[node] = None
            continue
        if op == "call_method":
            x = args[0]
            if target in _PASS_METHODS:
                env[node] = x
            elif target in _ELEMENTWISE_METHODS:
                b = args[1] if len(args) > 1 else kwargs.get("other")
                env[node] = tie(node, x, b) if isinstance(b, _Layout) else x
            elif target in ("chunk", "split") and isinstance(x, _Layout):
                env[node] = split_op(node, target, args, kwargs)
            else:
                unknown(node, args, kwargs)  # raises if channels flow in
                env[node] = None
            continue
        raise DependencyError(f"unexpected fx node {op} {target!r}")

    # ---- names -------------------------------------------------------------------------
    def conv_name(path: str) -> str:
        bn = bn_of.get(path)
        if bn is not None and path.endswith(".conv"):
            parent = path.removesuffix(".conv")
            if bn == parent + ".bn":
                return parent
        return path

    name_of = {p: conv_name(p) for p in conv_order}
    name_of[INPUT] = INPUT

    # ---- groups ------------------------------------------------------------------------
    members: dict[str, list[str]] = {}
    for p in conv_order:
        members.setdefault(uf.find(p), []).append(p)
    input_root = uf.find(INPUT)
    group_name = {root: name_of[ps[0]] for root, ps in members.items()}
    group_name.setdefault(input_root, INPUT)

    def gname(src: str) -> str:
        return group_name[uf.find(src)]

    convs: dict[str, ConvInfo] = {}
    consumers: dict[str, list[Consumer]] = {}
    for p in conv_order:
        mod = modules[p]
        segs, off = [], 0
        for src, start, n in conv_inputs[p]:
            segs.append(Segment(gname(src), start, n, off))
            consumers.setdefault(gname(src), []).append(Consumer(name_of[p], off, start, n))
            off += n
        convs[name_of[p]] = ConvInfo(
            name=name_of[p],
            conv=p,
            bn=bn_of.get(p),
            group=gname(p),
            in_channels=mod.in_channels,
            out_channels=mod.out_channels,
            kernel=tuple(mod.kernel_size),
            stride=tuple(mod.stride),
            padding=tuple(mod.padding) if not isinstance(mod.padding, str) else (-1, -1),
            bias=mod.bias is not None,
            inputs=tuple(segs),
        )

    groups = []
    for root, ps in members.items():
        widths = {modules[p].out_channels for p in ps}
        if len(widths) != 1:
            raise DependencyError(f"tied convs {ps} have different widths {widths}")
        reason = None
        if root == input_root:
            reason = "tied to the network input"
        elif any(p in at_output for p in ps):
            reason = "network output"
        elif any(p not in bn_of for p in ps):
            reason = "no BatchNorm"
        groups.append(
            ChannelGroup(
                name=group_name[root],
                members=tuple(name_of[p] for p in ps),
                width=widths.pop(),
                consumers=tuple(consumers.get(group_name[root], ())),
                prunable=reason is None,
                reason=reason,
            )
        )
    return DependencyGraph(groups=tuple(groups), convs=convs, source="fx")


# --------------------------------------------------------------------------------------
# The independent derivation from the spec
# --------------------------------------------------------------------------------------


def from_spec(spec) -> DependencyGraph:
    """The same graph derived from ``spec.conv_nodes()`` (a hand-written declaration).

    Used to cross-check :func:`trace_dependencies` and as its fallback.
    """
    nodes = spec.conv_nodes()
    first: dict[str, str] = {}  # spec group -> first member
    width: dict[str, int] = {INPUT: spec.in_channels}
    for n in nodes:
        first.setdefault(n.group, n.name)
        width[n.group] = n.out_channels
    first[INPUT] = INPUT
    convs: dict[str, ConvInfo] = {}
    consumers: dict[str, list[Consumer]] = {}
    members: dict[str, list[str]] = {}
    for n in nodes:
        segs, off = [], 0
        for g in n.inputs:
            segs.append(Segment(first[g], 0, width[g], off))
            consumers.setdefault(first[g], []).append(Consumer(n.name, off, 0, width[g]))
            off += width[g]
        members.setdefault(n.group, []).append(n.name)
        convs[n.name] = ConvInfo(
            name=n.name,
            conv=f"{n.name}.conv" if n.prunable else n.name,
            bn=f"{n.name}.bn" if n.prunable else None,
            group=first[n.group],
            in_channels=n.in_channels,
            out_channels=n.out_channels,
            kernel=(n.kernel, n.kernel),
            stride=(n.stride, n.stride),
            padding=(n.kernel // 2, n.kernel // 2),
            bias=not n.prunable,
            inputs=tuple(segs),
        )
    groups = tuple(
        ChannelGroup(
            name=first[g],
            members=tuple(ms),
            width=width[g],
            consumers=tuple(consumers.get(first[g], ())),
            prunable=all(convs[m].bn is not None for m in ms),
            reason=None if all(convs[m].bn is not None for m in ms) else "network output",
        )
        for g, ms in members.items()
    )
    return DependencyGraph(groups=groups, convs=convs, source="spec")


def dependency_graph(model: nn.Module) -> DependencyGraph:
    """Trace ``model``; if fx fails on a spec-built model, derive from its spec and warn."""
    try:
        return trace_dependencies(model)
    except DependencyError as e:
        spec = getattr(model, "spec", None)
        if spec is None or not hasattr(spec, "conv_nodes"):
            raise
        warnings.warn(
            f"fx tracing failed ({e}); using the groups spec.conv_nodes() declares",
            RuntimeWarning,
            stacklevel=2,
        )
        return from_spec(spec)
