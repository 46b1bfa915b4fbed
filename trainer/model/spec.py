"""The YOLOv4 architecture as data: every conv's width, every stage's residual blocks.

Shape of the spec
-----------------
Nested frozen dataclasses that mirror the module tree (timm's ``CspStagesCfg`` style), read
through one flat view. The nesting keeps the ties of the architecture in one place (a CSP
stage's residual trunk is ONE field, because the adds force every block to output the
width it receives); the flat view gives every conv a dotted name that is at once

* its path in the built ``nn.Module`` (``model.get_submodule(name)`` is its ConvBNAct,
  ``name + ".bn"`` its BatchNorm, state-dict keys start with ``name + "."``), and
* its address in the spec (:meth:`YoloSpec.with_widths`, :meth:`YoloSpec.conv_widths`).

Conv names, in forward order (stages are numbered 1..5 by stride 2**s, so stage3/4/5
feed the P3/P4/P5 levels of the neck)::

    backbone.stem                                   3x3, Mish
    backbone.stage{s}.down                          3x3 stride 2
    backbone.stage{s}.skip                          1x1, the CSP bypass half
    backbone.stage{s}.main                          1x1, opens the residual trunk
    backbone.stage{s}.blocks.{k}.conv1              1x1, block k's hidden width (free)
    backbone.stage{s}.blocks.{k}.conv2              3x3, back to the trunk width (tied)
    backbone.stage{s}.transition                    1x1 on the trunk
    backbone.stage{s}.fuse                          1x1 on concat[transition, skip]
    neck.spp.pre.{i}      neck.spp.post.{i}         SPP: convs before / after the max-pools
    neck.td4.reduce  neck.td4.lateral  neck.td4.convs.{i}     PAN top-down to stride 16
    neck.td3.reduce  neck.td3.lateral  neck.td3.convs.{i}     ... to stride 8 (P3 out)
    neck.bu4.down  neck.bu4.convs.{i}                         PAN bottom-up (P4 out)
    neck.bu5.down  neck.bu5.convs.{i}                         ... (P5 out)
    head.p{3,4,5}.conv                              3x3 before the prediction
    head.p{3,4,5}.pred                              1x1 with bias, no BN: A*(5+C) outputs

Conv sequences (``spp.pre``, ``td4.convs``, ...) alternate 1x1 and 3x3, starting with 1x1,
as in darknet's yolov4.cfg. Residual blocks keep their index when others are removed, so
names never shift under layer pruning.

How a pruner uses it
--------------------
* Channel pruning: :meth:`YoloSpec.conv_nodes` gives each conv's output *channel group*
  and the groups its input concatenates, in order (``neck.spp.post.0`` reads the group of
  ``neck.spp.pre.2`` four times: the three max-pools and the identity). A conv's group is
  its own name, except the convs tied by residual adds, which share
  ``backbone.stage{s}.trunk`` (``main`` and every present block's ``conv2``). Keep a mask
  per group; slice each conv's output by its group mask and its input by the
  concatenated masks of its inputs; then ``spec.with_widths({name: kept, ...})``.
* Layer pruning: ``spec.without_blocks(["backbone.stage4.blocks.3"])`` marks the block
  absent (``present: false``): its shortcut stays, so the trunk passes through unchanged.

A pruned spec is a complete spec: save it (YAML/JSON) next to its weights, or let
:mod:`trainer.model.checkpoint` embed it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

ACTIVATIONS = ("mish", "leaky", "silu", "relu", "hardswish")
"""Activation names a spec may use; ``leaky`` is LeakyReLU(0.1) as in darknet."""

YOLOV4_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((12.0, 16.0), (19.0, 36.0), (40.0, 28.0)),
    ((36.0, 75.0), (76.0, 55.0), (72.0, 146.0)),
    ((142.0, 110.0), (192.0, 243.0), (459.0, 401.0)),
)
"""yolov4.cfg's anchors, (w, h) input pixels, per scale: stride 8, 16, 32."""

NUM_STAGES = 5
STRIDES = (8, 16, 32)
INPUT_GROUP = "input"
"""The channel group of the image fed to ``backbone.stem``."""


class SpecError(ValueError):
    """A spec that cannot describe a model; the message names the offending field."""


# --------------------------------------------------------------------------------------
# Field checks (used by every dataclass's __post_init__)
# --------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise SpecError(f"{name} must be >= {minimum}, got {value}")


def _check_widths(name: str, values: tuple[int, ...]) -> None:
    if not values:
        raise SpecError(f"{name} must list at least one conv width")
    for i, v in enumerate(values):
        _check_int(f"{name}[{i}]", v)


def _check_act(name: str, value: Any) -> None:
    if value not in ACTIVATIONS:
        raise SpecError(f"{name} must be one of {', '.join(ACTIVATIONS)}; got {value!r}")


def _freeze(obj: Any, name: str, convert=tuple) -> None:
    """Frozen dataclasses keep sequences as tuples, whatever the caller passed."""
    object.__setattr__(obj, name, convert(getattr(obj, name)))


# --------------------------------------------------------------------------------------
# The dataclasses
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BlockSpec:
    """One CSP residual block: ``x + conv2(conv1(x))``.

    ``hidden`` is conv1's output width (prunable freely); conv2 outputs the stage's trunk
    width. ``present=False`` is a block removed by layer pruning: only its shortcut is
    left, i.e. the identity, and no module is built for it.
    """

    hidden: int
    present: bool = True

    def __post_init__(self) -> None:
        _check_int("hidden", self.hidden)
        if not isinstance(self.present, bool):
            raise SpecError(f"present must be a bool, got {self.present!r}")


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One CSP stage: ``fuse(cat[transition(blocks(main(d))), skip(d)])``, ``d = down(x)``.

    Every field is a conv's output width, except ``trunk``: the width shared by ``main``
    and every block's ``conv2`` (the residual adds tie them), and ``blocks``.
    """

    down: int
    skip: int
    trunk: int
    blocks: tuple[BlockSpec, ...]
    transition: int
    fuse: int

    def __post_init__(self) -> None:
        _freeze(self, "blocks")
        for name in ("down", "skip", "trunk", "transition", "fuse"):
            _check_int(name, getattr(self, name))
        for k, b in enumerate(self.blocks):
            if not isinstance(b, BlockSpec):
                raise SpecError(f"blocks[{k}] must be a BlockSpec, got {type(b).__name__}")

    @property
    def depth(self) -> int:
        """Number of residual blocks present."""
        return sum(b.present for b in self.blocks)


@dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """CSPDarknet: a stem conv and five CSP stages (strides 2, 4, 8, 16, 32)."""

    stem: int
    stages: tuple[StageSpec, ...]
    act: str = "mish"

    def __post_init__(self) -> None:
        _freeze(self, "stages")
        _check_int("stem", self.stem)
        if len(self.stages) != NUM_STAGES:
            raise SpecError(f"stages must list {NUM_STAGES} stages, got {len(self.stages)}")
        for i, s in enumerate(self.stages):
            if not isinstance(s, StageSpec):
                raise SpecError(f"stages[{i}] must be a StageSpec, got {type(s).__name__}")
        _check_act("act", self.act)


@dataclass(frozen=True, kw_only=True)
class SppSpec:
    """SPP: convs ``pre``, then concat[maxpools (largest first), identity], convs ``post``."""

    pre: tuple[int, ...]
    pools: tuple[int, ...] = (5, 9, 13)
    post: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("pre", "pools", "post"):
            _freeze(self, name)
        _check_widths("pre", self.pre)
        _check_widths("post", self.post)
        if not self.pools:
            raise SpecError("pools must list at least one max-pool size")
        for i, p in enumerate(self.pools):
            _check_int(f"pools[{i}]", p)
            if p % 2 == 0:
                raise SpecError(f"pools[{i}] must be odd (same-size padding), got {p}")


@dataclass(frozen=True, kw_only=True)
class TopDownSpec:
    """PAN top-down step: ``convs(cat[lateral(skip), up2(reduce(top))])``."""

    reduce: int
    lateral: int
    convs: tuple[int, ...]

    def __post_init__(self) -> None:
        _freeze(self, "convs")
        _check_int("reduce", self.reduce)
        _check_int("lateral", self.lateral)
        _check_widths("convs", self.convs)


@dataclass(frozen=True, kw_only=True)
class BottomUpSpec:
    """PAN bottom-up step: ``convs(cat[down(low), high])``, down a 3x3 stride-2 conv."""

    down: int
    convs: tuple[int, ...]

    def __post_init__(self) -> None:
        _freeze(self, "convs")
        _check_int("down", self.down)
        _check_widths("convs", self.convs)


@dataclass(frozen=True, kw_only=True)
class NeckSpec:
    """SPP on C5, then PAN: top-down to P4 and P3, bottom-up back to P4 and P5."""

    spp: SppSpec
    td4: TopDownSpec
    td3: TopDownSpec
    bu4: BottomUpSpec
    bu5: BottomUpSpec
    act: str = "leaky"

    def __post_init__(self) -> None:
        for name, cls in (
            ("spp", SppSpec),
            ("td4", TopDownSpec),
            ("td3", TopDownSpec),
            ("bu4", BottomUpSpec),
            ("bu5", BottomUpSpec),
        ):
            if not isinstance(getattr(self, name), cls):
                raise SpecError(f"{name} must be a {cls.__name__}")
        _check_act("act", self.act)


@dataclass(frozen=True, kw_only=True)
class HeadSpec:
    """Per level, the 3x3 conv width before the 1x1 prediction conv."""

    p3: int
    p4: int
    p5: int
    act: str = "leaky"

    def __post_init__(self) -> None:
        for name in ("p3", "p4", "p5"):
            _check_int(name, getattr(self, name))
        _check_act("act", self.act)


@dataclass(frozen=True)
class ConvNode:
    """One conv of the network as the pruner sees it (see the module docstring)."""

    name: str  # module path, e.g. "backbone.stage3.blocks.2.conv1"
    kernel: int
    stride: int
    out_channels: int
    group: str  # output channel group: the conv's own name, or "backbone.stage{s}.trunk"
    inputs: tuple[str, ...]  # channel groups concatenated (in order) to form the input
    in_channels: int
    prunable: bool  # False for head.p*.pred: its width is A*(5+C)
    slot: tuple[str | int, ...] | None = field(default=None, repr=False)  # path in to_dict()


@dataclass(frozen=True, kw_only=True)
class YoloSpec:
    """A YOLOv4-family detector, complete: build it with :func:`trainer.model.build`.

    Args:
        name: variant name, e.g. ``yolov4-n`` (a pruned spec keeps or extends it).
        in_channels: 1 (gray) or 3 (RGB).
        input_size: square network input side in pixels, a multiple of 32.
        num_classes: C; the heads output A*(5+C) channels.
        class_names: optional, C names.
        anchors: per scale (stride 8, 16, 32), A (w, h) pairs in input pixels; small to
            large: no anchor of a scale is larger (by area) than one of the next scale.
        strides: (8, 16, 32), fixed by the five stride-2 stages; recorded for consumers.
        backbone, neck, head: the widths.
    """

    name: str = "yolov4"
    in_channels: int = 3
    input_size: int = 416
    num_classes: int
    class_names: tuple[str, ...] | None = None
    anchors: tuple[tuple[tuple[float, float], ...], ...] = YOLOV4_ANCHORS
    strides: tuple[int, ...] = STRIDES
    backbone: BackboneSpec
    neck: NeckSpec
    head: HeadSpec

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"name must be a non-empty string, got {self.name!r}")
        _check_int("in_channels", self.in_channels)
        if self.in_channels not in (1, 3):
            raise SpecError(f"in_channels must be 1 (gray) or 3 (RGB), got {self.in_channels}")
        _check_int("num_classes", self.num_classes)
        _check_int("input_size", self.input_size)
        if self.input_size % max(STRIDES):
            raise SpecError(
                f"input_size must be a multiple of {max(STRIDES)}, got {self.input_size}"
            )
        _freeze(self, "strides")
        if self.strides != STRIDES:
            raise SpecError(f"strides must be {STRIDES} (five stride-2 stages), got {self.strides}")
        if self.class_names is not None:
            _freeze(self, "class_names")
            if len(self.class_names) != self.num_classes:
                raise SpecError(
                    f"class_names lists {len(self.class_names)} names for "
                    f"num_classes={self.num_classes}"
                )
            if not all(isinstance(n, str) and n for n in self.class_names):
                raise SpecError(f"class_names must be non-empty strings: {self.class_names}")
            if len(set(self.class_names)) != len(self.class_names):
                raise SpecError(f"class_names must be unique: {self.class_names}")
        self._check_anchors()
        for name, cls in (("backbone", BackboneSpec), ("neck", NeckSpec), ("head", HeadSpec)):
            if not isinstance(getattr(self, name), cls):
                raise SpecError(f"{name} must be a {cls.__name__}")

    def _check_anchors(self) -> None:
        try:
            anchors = tuple(tuple((float(w), float(h)) for w, h in scale) for scale in self.anchors)
        except (TypeError, ValueError) as e:
            raise SpecError(f"anchors must be per-scale lists of (w, h) pairs: {e}") from None
        object.__setattr__(self, "anchors", anchors)
        if len(anchors) != len(STRIDES):
            raise SpecError(f"anchors must list {len(STRIDES)} scales, got {len(anchors)}")
        counts = {len(scale) for scale in anchors}
        if len(counts) != 1 or 0 in counts:
            raise SpecError(f"anchors: every scale needs the same number (>= 1), got {counts}")
        for i, scale in enumerate(anchors):
            for w, h in scale:
                if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
                    raise SpecError(f"anchors[{i}]: ({w}, {h}) is not a positive finite size")
        for i in range(len(anchors) - 1):
            largest = max(w * h for w, h in anchors[i])
            smallest = min(w * h for w, h in anchors[i + 1])
            if largest > smallest:
                raise SpecError(
                    f"anchors must go small to large: scale {i} (stride {STRIDES[i]}) holds "
                    f"an anchor of area {largest:g} > {smallest:g} in scale {i + 1}"
                )

    # ---- derived sizes -----------------------------------------------------------------

    @property
    def num_anchors(self) -> int:
        """A: anchors per scale."""
        return len(self.anchors[0])

    @property
    def num_outputs(self) -> int:
        """Channels per anchor: 5 + C (tx, ty, tw, th, obj, classes)."""
        return 5 + self.num_classes

    @property
    def head_channels(self) -> int:
        """Channels of each raw output map: A*(5+C)."""
        return self.num_anchors * self.num_outputs

    @property
    def flat_anchors(self) -> tuple[tuple[float, float], ...]:
        """The S*A anchors as (w, h), small to large (the form ``detection.decode`` takes)."""
        return tuple(a for scale in self.anchors for a in scale)

    @property
    def depths(self) -> tuple[int, ...]:
        """Residual blocks present per stage."""
        return tuple(s.depth for s in self.backbone.stages)

    @property
    def feature_channels(self) -> tuple[int, int, int]:
        """Widths of the neck outputs at strides 8, 16, 32 (the heads' inputs)."""
        n = self.neck
        return (n.td3.convs[-1], n.bu4.convs[-1], n.bu5.convs[-1])

    # ---- the flat view -----------------------------------------------------------------

    def conv_nodes(self) -> tuple[ConvNode, ...]:
        """Every conv in forward order, with its channel group and input groups."""
        nodes: list[ConvNode] = []
        widths: dict[str, int] = {INPUT_GROUP: self.in_channels}

        def add(name, kernel, stride, out, inputs, slot, group=None, prunable=True) -> str:
            group = group or name
            widths[group] = out
            nodes.append(
                ConvNode(
                    name=name,
                    kernel=kernel,
                    stride=stride,
                    out_channels=out,
                    group=group,
                    inputs=tuple(inputs),
                    in_channels=sum(widths[g] for g in inputs),
                    prunable=prunable,
                    slot=slot,
                )
            )
            return group

        def seq(prefix, values, inputs, slot) -> str:
            for j, w in enumerate(values):
                g = add(f"{prefix}.{j}", 1 if j % 2 == 0 else 3, 1, w, inputs, slot + (j,))
                inputs = (g,)
            return inputs[0]

        prev = add("backbone.stem", 3, 1, self.backbone.stem, (INPUT_GROUP,), ("backbone", "stem"))
        stage_out = []
        for i, st in enumerate(self.backbone.stages):
            p, sl = f"backbone.stage{i + 1}", ("backbone", "stages", i)
            down = add(f"{p}.down", 3, 2, st.down, (prev,), sl + ("down",))
            skip = add(f"{p}.skip", 1, 1, st.skip, (down,), sl + ("skip",))
            trunk = add(f"{p}.main", 1, 1, st.trunk, (down,), sl + ("trunk",), group=f"{p}.trunk")
            for k, b in enumerate(st.blocks):
                if b.present:
                    h = add(
                        f"{p}.blocks.{k}.conv1",
                        1,
                        1,
                        b.hidden,
                        (trunk,),
                        sl + ("blocks", k, "hidden"),
                    )
                    add(f"{p}.blocks.{k}.conv2", 3, 1, st.trunk, (h,), sl + ("trunk",), group=trunk)
            tr = add(f"{p}.transition", 1, 1, st.transition, (trunk,), sl + ("transition",))
            prev = add(f"{p}.fuse", 1, 1, st.fuse, (tr, skip), sl + ("fuse",))
            stage_out.append(prev)
        c3, c4, c5 = stage_out[2:]

        n, sl = self.neck, ("neck",)
        pre = seq("neck.spp.pre", n.spp.pre, (c5,), sl + ("spp", "pre"))
        p5 = seq("neck.spp.post", n.spp.post, (pre,) * (len(n.spp.pools) + 1), sl + ("spp", "post"))

        def top_down(lvl: str, top: str, lateral: str) -> str:
            s = getattr(n, lvl)
            red = add(f"neck.{lvl}.reduce", 1, 1, s.reduce, (top,), sl + (lvl, "reduce"))
            lat = add(f"neck.{lvl}.lateral", 1, 1, s.lateral, (lateral,), sl + (lvl, "lateral"))
            return seq(f"neck.{lvl}.convs", s.convs, (lat, red), sl + (lvl, "convs"))

        def bottom_up(lvl: str, low: str, high: str) -> str:
            s = getattr(n, lvl)
            d = add(f"neck.{lvl}.down", 3, 2, s.down, (low,), sl + (lvl, "down"))
            return seq(f"neck.{lvl}.convs", s.convs, (d, high), sl + (lvl, "convs"))

        n4 = top_down("td4", p5, c4)  # as PAN.forward
        out3 = top_down("td3", n4, c3)
        out4 = bottom_up("bu4", out3, n4)
        out5 = bottom_up("bu5", out4, p5)
        for lvl, feat in zip(("p3", "p4", "p5"), (out3, out4, out5), strict=True):
            c = add(f"head.{lvl}.conv", 3, 1, getattr(self.head, lvl), (feat,), ("head", lvl))
            add(f"head.{lvl}.pred", 1, 1, self.head_channels, (c,), None, prunable=False)
        return tuple(nodes)

    def conv_widths(self) -> dict[str, int]:
        """Every Conv+BN's output width by name, in forward order (the heads' pred excluded)."""
        return {n.name: n.out_channels for n in self.conv_nodes() if n.prunable}

    def channel_groups(self) -> dict[str, tuple[str, ...]]:
        """Output channel group -> the convs that write it (more than one only for trunks)."""
        groups: dict[str, list[str]] = {}
        for n in self.conv_nodes():
            if n.prunable:
                groups.setdefault(n.group, []).append(n.name)
        return {g: tuple(names) for g, names in groups.items()}

    def block_names(self) -> tuple[str, ...]:
        """Names of the residual blocks present, e.g. ``backbone.stage3.blocks.2``."""
        return tuple(
            f"backbone.stage{i + 1}.blocks.{k}"
            for i, st in enumerate(self.backbone.stages)
            for k, b in enumerate(st.blocks)
            if b.present
        )

    def num_params(self) -> int:
        """Parameter count of the built model, from the spec alone (no model needed)."""
        total = 0
        for n in self.conv_nodes():
            total += n.in_channels * n.out_channels * n.kernel * n.kernel
            total += n.out_channels * (2 if n.prunable else 1)  # BN weight+bias | conv bias
        return total

    # ---- rewriting (what pruning does) ------------------------------------------------

    def with_widths(self, widths: Mapping[str, int]) -> YoloSpec:
        """A new spec with some convs' output widths changed, by conv name.

        Convs of one trunk group share a width: naming any of them sets the trunk, and
        naming several with different widths is an error. A group name
        (``backbone.stage3.trunk``) is accepted too.
        """
        slots: dict[str, tuple[str, tuple]] = {}
        for n in self.conv_nodes():
            if n.prunable:
                slots[n.name] = (n.group, n.slot)
                slots.setdefault(n.group, (n.group, n.slot))
        chosen: dict[str, tuple[int, str]] = {}
        for name, value in widths.items():
            if name not in slots:
                raise SpecError(_unknown("conv", name, list(slots)))
            _check_int(name, value)
            group = slots[name][0]
            if group in chosen and chosen[group][0] != value:
                raise SpecError(
                    f"{name} and {chosen[group][1]} share the channel group {group} "
                    f"but were given {value} and {chosen[group][0]}"
                )
            chosen[group] = (value, name)
        data = self.to_dict()
        for value, name in chosen.values():
            _set(data, slots[name][1], value)
        return YoloSpec.from_dict(data)

    def without_blocks(self, names: Iterable[str]) -> YoloSpec:
        """A new spec with residual blocks removed (``present: false``), by block name."""
        known = set(self.block_names())
        data = self.to_dict()
        for name in names:
            if name not in known:
                raise SpecError(_unknown("residual block", name, sorted(known)))
            parts = name.split(".")  # backbone.stage{s}.blocks.{k}
            stage, k = int(parts[1].removeprefix("stage")) - 1, int(parts[3])
            data["backbone"]["stages"][stage]["blocks"][k]["present"] = False
        return YoloSpec.from_dict(data)

    # ---- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, ints, floats, strs, bools, None): JSON/YAML/torch-safe."""
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> YoloSpec:
        """Parse and validate; errors name the field, e.g. ``backbone.stages[2].trunk``."""
        return _from_plain(cls, data, "spec")

    def save(self, path: str | Path) -> Path:
        """Write ``.yaml``/``.yml`` or ``.json`` (by suffix)."""
        path = Path(path)
        data = self.to_dict()
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
        elif suffix == ".json":
            text = json.dumps(data, indent=2) + "\n"
        else:
            raise SpecError(f"spec file must end in .yaml, .yml or .json: {path}")
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> YoloSpec:
        """Read a spec written by :meth:`save` (or by hand)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(path.read_text())
        elif suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise SpecError(f"spec file must end in .yaml, .yml or .json: {path}")
        if not isinstance(data, Mapping):
            raise SpecError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data)


# --------------------------------------------------------------------------------------
# Plain <-> dataclass conversion (the only parser of spec files)
# --------------------------------------------------------------------------------------


def _unknown(what: str, name: str, known: list[str]) -> str:
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return f"unknown {what} {name!r}; known: {shown}"


def _set(data: Any, slot: tuple, value: Any) -> None:
    for key in slot[:-1]:
        data = data[key]
    data[slot[-1]] = value


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # anchors read 12, 16 rather than 12.0, 16.0
    return obj


def _from_plain(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise SpecError(f"{path}: expected a mapping, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = [k for k in value if k not in names]
        if unknown:
            raise SpecError(f"{path}: unknown key(s) {unknown}; known: {names}")
        missing = [
            f.name
            for f in dataclasses.fields(tp)
            if f.name not in value
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise SpecError(f"{path}: missing key(s) {missing}")
        kwargs = {k: _from_plain(hints[k], v, f"{path}.{k}") for k, v in value.items()}
        try:
            return tp(**kwargs)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _from_plain(inner, value, path)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{path}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise SpecError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(
            _from_plain(a, v, f"{path}[{i}]")
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise SpecError(f"{path}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"{path}: unsupported field type {tp!r}")  # a bug in this module
