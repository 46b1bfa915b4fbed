"""YOLOv4 (CSPDarknet53 + SPP + PAN + 3 heads) built from a :class:`YoloSpec`.

Output contract
---------------
``model(x)`` with ``x`` of shape (B, in_channels, H, W), H and W multiples of 32, returns a
list of 3 raw maps, one per stride 8, 16, 32 (small to large objects), each of shape
(B, A*(5+C), H/stride, W/stride). Channels of anchor ``a`` (of that scale's A anchors in
``spec.anchors[i]``) are ``[a*(5+C), (a+1)*(5+C))``, laid out as
``[tx, ty, tw, th, obj, cls_1..cls_C]``, all raw logits. Decoding is NOT in the model
(it is ``slimspect.detection.decode``, shared with the edge runtime)::

    xy = (sigmoid(txy) * 2 - 0.5 + grid_xy) * stride
    wh = (sigmoid(twh) * 2) ** 2 * anchor_wh
    score_c = sigmoid(obj) * sigmoid(cls_c)

``model(x, return_features=True)`` returns ``(maps, features)``: ``features`` are the neck
outputs at strides 8, 16, 32 (the heads' inputs; widths ``spec.feature_channels``), for
feature-imitation distillation.

Module names equal the spec's conv names (see :mod:`.spec`): ``named_convs`` and
``named_bns`` yield them, so a pruner moves between model and spec by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .blocks import ConvBNAct, CspStage, PanBottomUp, PanTopDown, SppBlock, YoloHead
from .spec import STRIDES, BackboneSpec, HeadSpec, NeckSpec, YoloSpec


class CSPDarknet(nn.Module):
    """Stem + five CSP stages; returns the outputs of stages 3, 4, 5 (strides 8, 16, 32)."""

    def __init__(self, spec: BackboneSpec, *, in_channels: int) -> None:
        super().__init__()
        act = spec.act
        self.stem = ConvBNAct(
            in_channels=in_channels, out_channels=spec.stem, kernel_size=3, act=act
        )
        c = spec.stem
        self.out_channels: list[int] = []
        for i, st in enumerate(spec.stages):
            stage = CspStage(
                in_channels=c,
                down=st.down,
                skip=st.skip,
                trunk=st.trunk,
                hidden=[b.hidden if b.present else None for b in st.blocks],
                transition=st.transition,
                fuse=st.fuse,
                act=act,
            )
            self.add_module(f"stage{i + 1}", stage)
            c = stage.out_channels
            self.out_channels.append(c)
        self.out_channels = self.out_channels[2:]  # C3, C4, C5

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        x = self.stage1(x)
        x = self.stage2(x)
        c3 = self.stage3(x)
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return [c3, c4, c5]


class PAN(nn.Module):
    """SPP on C5, top-down to strides 16 and 8, bottom-up back to 16 and 32."""

    def __init__(self, spec: NeckSpec, *, in_channels: list[int]) -> None:
        super().__init__()
        c3, c4, c5 = in_channels
        act = spec.act
        self.spp = SppBlock(
            in_channels=c5, pre=spec.spp.pre, pool_sizes=spec.spp.pools, post=spec.spp.post, act=act
        )
        p5 = self.spp.out_channels
        self.td4 = PanTopDown(
            top_channels=p5,
            skip_channels=c4,
            reduce=spec.td4.reduce,
            lateral=spec.td4.lateral,
            widths=spec.td4.convs,
            act=act,
        )
        self.td3 = PanTopDown(
            top_channels=self.td4.out_channels,
            skip_channels=c3,
            reduce=spec.td3.reduce,
            lateral=spec.td3.lateral,
            widths=spec.td3.convs,
            act=act,
        )
        self.bu4 = PanBottomUp(
            low_channels=self.td3.out_channels,
            high_channels=self.td4.out_channels,
            down=spec.bu4.down,
            widths=spec.bu4.convs,
            act=act,
        )
        self.bu5 = PanBottomUp(
            low_channels=self.bu4.out_channels,
            high_channels=p5,
            down=spec.bu5.down,
            widths=spec.bu5.convs,
            act=act,
        )
        self.out_channels = [self.td3.out_channels, self.bu4.out_channels, self.bu5.out_channels]

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        c3, c4, c5 = feats
        p5 = self.spp(c5)  # stride 32
        n4 = self.td4(p5, c4)  # stride 16
        out3 = self.td3(n4, c3)  # stride 8
        out4 = self.bu4(out3, n4)  # stride 16
        out5 = self.bu5(out4, p5)  # stride 32
        return [out3, out4, out5]


class Heads(nn.Module):
    """The three YOLO heads, ``p3``, ``p4``, ``p5`` (strides 8, 16, 32)."""

    def __init__(self, spec: HeadSpec, *, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        for lvl, c in zip(("p3", "p4", "p5"), in_channels, strict=True):
            self.add_module(
                lvl,
                YoloHead(
                    in_channels=c,
                    hidden=getattr(spec, lvl),
                    out_channels=out_channels,
                    act=spec.act,
                ),
            )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return [self.p3(feats[0]), self.p4(feats[1]), self.p5(feats[2])]


class YOLOv4(nn.Module):
    """The detector; see the module docstring for the output contract."""

    def __init__(self, spec: YoloSpec) -> None:
        super().__init__()
        if not isinstance(spec, YoloSpec):
            raise TypeError(f"YOLOv4 needs a YoloSpec, got {type(spec).__name__}")
        self.spec = spec
        self.backbone = CSPDarknet(spec.backbone, in_channels=spec.in_channels)
        self.neck = PAN(spec.neck, in_channels=self.backbone.out_channels)
        self.head = Heads(
            spec.head, in_channels=self.neck.out_channels, out_channels=spec.head_channels
        )
        self._init_head_bias()

    @torch.no_grad()
    def _init_head_bias(self) -> None:
        """YOLOv5's priors: ~8 objects per image, class probability ~0.6/C at start."""
        cls_bias = math.log(0.6 / (self.spec.num_classes - 0.99))
        for lvl, stride in zip(("p3", "p4", "p5"), STRIDES, strict=True):
            b = getattr(self.head, lvl).pred.bias.view(self.spec.num_anchors, -1)  # (A, 5+C)
            b[:, 4] += math.log(8 / (self.spec.input_size / stride) ** 2)
            b[:, 5:] += cls_bias

    def forward(
        self, x: Tensor, return_features: bool = False
    ) -> list[Tensor] | tuple[list[Tensor], list[Tensor]]:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self._check_input(x)
        feats = self.neck(self.backbone(x))  # 3 x (B, C_i, H/s, W/s)
        maps = self.head(feats)  # 3 x (B, A*(5+C), H/s, W/s)
        return (maps, feats) if return_features else maps

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.spec.in_channels:
            raise ValueError(
                f"expected input (B, {self.spec.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[2] % STRIDES[-1] or x.shape[3] % STRIDES[-1]:
            raise ValueError(f"input H and W must be multiples of 32, got {tuple(x.shape[2:])}")

    def named_convs(self) -> Iterator[tuple[str, ConvBNAct]]:
        """(spec conv name, ConvBNAct) in forward order; the heads' pred convs excluded."""
        for name, m in self.named_modules():
            if isinstance(m, ConvBNAct):
                yield name, m

    def named_bns(self) -> Iterator[tuple[str, nn.BatchNorm2d]]:
        """(spec conv name, its BatchNorm2d): the gammas of sparse training.

        The BatchNorm's module path is ``name + ".bn"``.
        """
        for name, m in self.named_convs():
            yield name, m.bn


def build(spec: YoloSpec, seed: int | None = None) -> YOLOv4:
    """Build the model a spec describes.

    Deterministic: initialisation draws from torch's global RNG in a fixed order, so the
    same RNG state gives the same weights. With ``seed`` the init uses a private RNG
    state seeded with it (the global state is left untouched).
    Build under ``with torch.device("meta"):`` to size a model without allocating it.
    """
    if seed is None:
        return YOLOv4(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return YOLOv4(spec)
