"""Building blocks of the YOLOv4 family, each built from explicit widths.

Every constructor takes keyword arguments only (its input and output widths), never a
spec, so a pruned layer is built exactly like an original one; :mod:`.yolov4` maps the
spec onto them. Each module exposes ``out_channels`` so its consumer never guesses.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.03  # Ultralytics' values: steadier running stats for detection batches


def make_act(name: str) -> nn.Module:
    """Activation by spec name; ``leaky`` is LeakyReLU(0.1) as in darknet."""
    if name == "mish":
        return nn.Mish()
    if name == "leaky":
        return nn.LeakyReLU(0.1)
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    if name == "hardswish":
        return nn.Hardswish()
    raise ValueError(f"unknown activation {name!r}")


class ConvBNAct(nn.Module):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> activation.

    The BatchNorm's ``weight`` is the gamma that sparse training drives to zero.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        act: str = "leaky",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = make_act(act)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvSeq(nn.Sequential):
    """ConvBNActs alternating 1x1 and 3x3 (starting with 1x1), widths given per conv."""

    def __init__(self, *, in_channels: int, widths: Sequence[int], act: str) -> None:
        layers = []
        for j, w in enumerate(widths):
            k = 1 if j % 2 == 0 else 3
            layers.append(
                ConvBNAct(in_channels=in_channels, out_channels=w, kernel_size=k, act=act)
            )
            in_channels = w
        super().__init__(*layers)
        self.out_channels = in_channels


class CspBlock(nn.Module):
    """Residual block ``x + conv2(conv1(x))``: 1x1 to ``hidden``, 3x3 back to ``channels``.

    The add ties the output width to the input width: ``channels`` is the stage's trunk.
    """

    def __init__(self, *, channels: int, hidden: int, act: str) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels=channels, out_channels=hidden, kernel_size=1, act=act)
        self.conv2 = ConvBNAct(in_channels=hidden, out_channels=channels, kernel_size=3, act=act)
        self.out_channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class CspStage(nn.Module):
    """CSPDarknet stage (darknet yolov4.cfg layout)::

        d = down(x)                      3x3 stride 2
        t = blocks(main(d))              residual trunk of width ``trunk``
        y = fuse(cat[transition(t), skip(d)])

    Args:
        in_channels: input width.
        down, skip, trunk, transition, fuse: output widths of those convs (``trunk`` is
            ``main``'s and every block's ``conv2``).
        hidden: per residual block, its ``conv1`` width, or None for a removed block
            (identity). Blocks keep their index as module name (``blocks.3``) either way.
        act: activation name.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        down: int,
        skip: int,
        trunk: int,
        hidden: Sequence[int | None],
        transition: int,
        fuse: int,
        act: str,
    ) -> None:
        super().__init__()
        self.down = ConvBNAct(
            in_channels=in_channels, out_channels=down, kernel_size=3, stride=2, act=act
        )
        self.skip = ConvBNAct(in_channels=down, out_channels=skip, act=act)
        self.main = ConvBNAct(in_channels=down, out_channels=trunk, act=act)
        self.blocks = nn.Sequential(
            OrderedDict(
                (str(k), CspBlock(channels=trunk, hidden=h, act=act))
                for k, h in enumerate(hidden)
                if h is not None
            )
        )
        self.transition = ConvBNAct(in_channels=trunk, out_channels=transition, act=act)
        self.fuse = ConvBNAct(in_channels=transition + skip, out_channels=fuse, act=act)
        self.out_channels = fuse

    def forward(self, x: Tensor) -> Tensor:
        d = self.down(x)
        t = self.blocks(self.main(d))
        return self.fuse(torch.cat([self.transition(t), self.skip(d)], dim=1))


class SpatialPyramidPool(nn.Module):
    """Stride-1 max-pools concatenated with their input: ``cat[pool_k(x) for k desc, x]``.

    Largest kernel first, identity last: darknet's ``route -1,-3,-5,-6`` order.
    """

    def __init__(self, *, pool_sizes: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        self.pool_sizes = tuple(sorted(pool_sizes, reverse=True))

    def forward(self, x: Tensor) -> Tensor:
        pools = [F.max_pool2d(x, k, stride=1, padding=k // 2) for k in self.pool_sizes]
        return torch.cat([*pools, x], dim=1)


class SppBlock(nn.Module):
    """YOLOv4's SPP neck entry: ``post(spp(pre(c5)))``."""

    def __init__(
        self,
        *,
        in_channels: int,
        pre: Sequence[int],
        pool_sizes: Sequence[int],
        post: Sequence[int],
        act: str,
    ) -> None:
        super().__init__()
        self.pre = ConvSeq(in_channels=in_channels, widths=pre, act=act)
        self.pool = SpatialPyramidPool(pool_sizes=pool_sizes)
        self.post = ConvSeq(
            in_channels=self.pre.out_channels * (len(pool_sizes) + 1), widths=post, act=act
        )
        self.out_channels = self.post.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.pool(self.pre(x)))


class PanTopDown(nn.Module):
    """PAN top-down step: ``convs(cat[lateral(skip), upsample2(reduce(top))])``."""

    def __init__(
        self,
        *,
        top_channels: int,
        skip_channels: int,
        reduce: int,
        lateral: int,
        widths: Sequence[int],
        act: str,
    ) -> None:
        super().__init__()
        self.reduce = ConvBNAct(in_channels=top_channels, out_channels=reduce, act=act)
        self.lateral = ConvBNAct(in_channels=skip_channels, out_channels=lateral, act=act)
        self.convs = ConvSeq(in_channels=lateral + reduce, widths=widths, act=act)
        self.out_channels = self.convs.out_channels

    def forward(self, top: Tensor, skip: Tensor) -> Tensor:
        up = F.interpolate(self.reduce(top), scale_factor=2.0, mode="nearest")
        return self.convs(torch.cat([self.lateral(skip), up], dim=1))


class PanBottomUp(nn.Module):
    """PAN bottom-up step: ``convs(cat[down(low), high])``, down a 3x3 stride-2 conv."""

    def __init__(
        self,
        *,
        low_channels: int,
        high_channels: int,
        down: int,
        widths: Sequence[int],
        act: str,
    ) -> None:
        super().__init__()
        self.down = ConvBNAct(
            in_channels=low_channels, out_channels=down, kernel_size=3, stride=2, act=act
        )
        self.convs = ConvSeq(in_channels=down + high_channels, widths=widths, act=act)
        self.out_channels = self.convs.out_channels

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return self.convs(torch.cat([self.down(low), high], dim=1))


class YoloHead(nn.Module):
    """One level's head: 3x3 ConvBNAct, then a 1x1 conv with bias (no BN, no activation)."""

    def __init__(self, *, in_channels: int, hidden: int, out_channels: int, act: str) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels=in_channels, out_channels=hidden, kernel_size=3, act=act)
        self.pred = nn.Conv2d(hidden, out_channels, 1, bias=True)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.conv(x))
