"""Model size and cost: parameter count, fp32 size, GFLOPs.

GFLOPs follow the Ultralytics / darknet convention: 2 * (multiply-accumulates of every
Conv2d, bias adds included in neither) / 1e9, for one image. Pooling, activations,
BatchNorm (foldable into the conv), upsampling and concats are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


def fp32_mib(model: nn.Module) -> float:
    """Size of the model's fp32 weights in MiB: parameters plus floating-point buffers.

    That is what an fp32 state dict (or a darknet ``.weights`` file) stores: conv weights,
    BatchNorm gamma, beta, running mean and variance, head biases.
    """
    n = count_params(model)
    n += sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return n * 4 / 2**20


def conv_macs(model: nn.Module, input_size: int | Sequence[int], in_channels: int) -> int:
    """Multiply-accumulates of all Conv2d layers for one (1, in_channels, H, W) input.

    Runs the forward on the meta device (shapes only, no arithmetic, no weights copied):
    a model carrying a ``spec`` is rebuilt from it there; any other model runs for real.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    spec = getattr(model, "spec", None)
    if spec is not None:
        from .yolov4 import build  # late: keep this module usable without the model family

        with torch.device("meta"):
            probe = build(spec)
        device = torch.device("meta")
    else:
        probe = model
        device = next(model.parameters()).device
    total = 0

    def hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in probe.modules() if isinstance(m, nn.Conv2d)]
    try:
        was_training = probe.training
        probe.eval()
        with torch.no_grad():
            probe(torch.zeros(1, in_channels, h, w, device=device))
        probe.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return total


def gflops(model: nn.Module, input_size: int | Sequence[int] | None = None) -> float:
    """GFLOPs (2 * conv MACs / 1e9) for one image of ``input_size`` (default: the spec's)."""
    spec = getattr(model, "spec", None)
    if input_size is None:
        if spec is None:
            raise ValueError("gflops needs input_size for a model without a spec")
        input_size = spec.input_size
    in_channels = spec.in_channels if spec is not None else _first_conv(model).in_channels
    return 2 * conv_macs(model, input_size, in_channels) / 1e9


def _first_conv(model: nn.Module) -> nn.Conv2d:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError("model has no Conv2d")
