"""Named specs of the YOLOv4 family: the full model and width/depth-scaled ones.

The base widths and depths are darknet's yolov4.cfg, layer for layer (64,363,101
parameters with 80 classes). A variant scales every conv width by ``width`` (rounded up
to a multiple of 8, at least 8) and every stage's residual-block count by ``depth``
(rounded, at least 1); the neck's conv sequences keep their length.

========  =====  =====  ===========  =====  ================  ==========  ======  ======
name      width  depth  in_channels  input  blocks per stage  params      MiB     GFLOPs
========  =====  =====  ===========  =====  ================  ==========  ======  ======
yolov4    1.00   1.00   3 (RGB)      416    1, 2, 8, 8, 4     63,964,611  244.26  59.57
yolov4-m  0.75   0.67   1 (gray)     256    1, 1, 5, 5, 3     33,118,203  126.51  11.15
yolov4-s  0.50   0.33   1 (gray)     256    1, 1, 3, 3, 1     13,015,155   49.75   4.46
yolov4-n  0.25   0.33   1 (gray)     256    1, 1, 3, 3, 1      3,267,819   12.52   1.12
========  =====  =====  ===========  =====  ================  ==========  ======  ======

Params, fp32 MiB (weights + BN statistics) and GFLOPs (2 x conv MACs) at 6 classes and the
default input; ``yolov4`` is the paper's full model.
All default to 6 classes (NEU-DET's six steel surface defects) and yolov4.cfg's anchors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .spec import (
    YOLOV4_ANCHORS,
    BackboneSpec,
    BlockSpec,
    BottomUpSpec,
    HeadSpec,
    NeckSpec,
    SppSpec,
    StageSpec,
    TopDownSpec,
    YoloSpec,
)

# yolov4.cfg: per stage (down, skip, trunk, block hidden, transition, fuse) and depth.
_BASE_STAGES = (
    (64, 64, 64, 32, 64, 64),  # stage 1: the trunk keeps the full width, blocks halve it
    (128, 64, 64, 64, 64, 128),
    (256, 128, 128, 128, 128, 256),
    (512, 256, 256, 256, 256, 512),
    (1024, 512, 512, 512, 512, 1024),
)
_BASE_DEPTHS = (1, 2, 8, 8, 4)


@dataclass(frozen=True)
class _Variant:
    width: float
    depth: float
    in_channels: int
    input_size: int


_VARIANTS: dict[str, _Variant] = {
    "yolov4": _Variant(width=1.00, depth=1.00, in_channels=3, input_size=416),
    "yolov4-m": _Variant(width=0.75, depth=0.67, in_channels=1, input_size=256),
    "yolov4-s": _Variant(width=0.50, depth=0.33, in_channels=1, input_size=256),
    "yolov4-n": _Variant(width=0.25, depth=0.33, in_channels=1, input_size=256),
}

DEFAULT_NUM_CLASSES = 6


def list_variants() -> list[str]:
    """Names :func:`get_spec` knows."""
    return list(_VARIANTS)


def scaled_spec(
    *,
    name: str,
    width: float,
    depth: float,
    num_classes: int,
    in_channels: int,
    input_size: int,
    class_names: Sequence[str] | None = None,
    anchors=YOLOV4_ANCHORS,
) -> YoloSpec:
    """yolov4.cfg with every width scaled by ``width`` and every depth by ``depth``."""
    if width <= 0 or depth <= 0:
        raise ValueError(f"width and depth multipliers must be > 0, got {width}, {depth}")

    def ch(c: int) -> int:
        return max(8, math.ceil(c * width / 8) * 8)

    def seq(*cs: int) -> tuple[int, ...]:
        return tuple(ch(c) for c in cs)

    stages = tuple(
        StageSpec(
            down=ch(down),
            skip=ch(skip),
            trunk=ch(trunk),
            blocks=(BlockSpec(hidden=ch(hidden)),) * max(1, round(n * depth)),
            transition=ch(transition),
            fuse=ch(fuse),
        )
        for (down, skip, trunk, hidden, transition, fuse), n in zip(
            _BASE_STAGES, _BASE_DEPTHS, strict=True
        )
    )
    neck = NeckSpec(
        spp=SppSpec(pre=seq(512, 1024, 512), pools=(5, 9, 13), post=seq(512, 1024, 512)),
        td4=TopDownSpec(reduce=ch(256), lateral=ch(256), convs=seq(256, 512, 256, 512, 256)),
        td3=TopDownSpec(reduce=ch(128), lateral=ch(128), convs=seq(128, 256, 128, 256, 128)),
        bu4=BottomUpSpec(down=ch(256), convs=seq(256, 512, 256, 512, 256)),
        bu5=BottomUpSpec(down=ch(512), convs=seq(512, 1024, 512, 1024, 512)),
        act="leaky",
    )
    return YoloSpec(
        name=name,
        in_channels=in_channels,
        input_size=input_size,
        num_classes=num_classes,
        class_names=tuple(class_names) if class_names is not None else None,
        anchors=anchors,
        backbone=BackboneSpec(stem=ch(32), stages=stages, act="mish"),
        neck=neck,
        head=HeadSpec(p3=ch(256), p4=ch(512), p5=ch(1024), act="leaky"),
    )


def get_spec(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    class_names: Sequence[str] | None = None,
    anchors=None,
) -> YoloSpec:
    """The named variant's spec, with optional overrides.

    ``class_names`` implies ``num_classes`` when that is not given.
    Raises ValueError for an unknown name, listing the known ones.
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; known: {', '.join(_VARIANTS)}")
    v = _VARIANTS[name]
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else DEFAULT_NUM_CLASSES
    return scaled_spec(
        name=name,
        width=v.width,
        depth=v.depth,
        num_classes=num_classes,
        in_channels=v.in_channels if in_channels is None else in_channels,
        input_size=v.input_size if input_size is None else input_size,
        class_names=class_names,
        anchors=YOLOV4_ANCHORS if anchors is None else anchors,
    )
