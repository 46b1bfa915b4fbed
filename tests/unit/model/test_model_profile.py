"""Size and cost figures: the numbers BENCHMARKS.md and the manifests quote."""

from __future__ import annotations

import pytest
from torch import nn

from trainer.model import build, count_params, fp32_mib, get_spec, gflops


def test_yolov4_gflops_at_416(meta_build):
    # darknet reports 59.570 BFLOPs for yolov4.cfg at 416 with 80 classes
    assert gflops(meta_build(get_spec("yolov4"))) == pytest.approx(59.567, abs=1e-3)


def test_nano_figures():
    model = build(get_spec("yolov4-n"), seed=0)
    assert count_params(model) == 3_267_819
    assert fp32_mib(model) == pytest.approx(12.516, abs=1e-3)
    assert gflops(model) == pytest.approx(1.124, abs=1e-3)  # at its default 256 px


def test_gflops_without_a_spec_runs_the_model_for_real(small_spec):
    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    model = build(small_spec, seed=0)
    assert gflops(Wrapped(model), 64) == pytest.approx(gflops(model, 64))
    with pytest.raises(ValueError, match="needs input_size"):
        gflops(Wrapped(model))
