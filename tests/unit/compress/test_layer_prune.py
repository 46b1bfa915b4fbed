"""Layer pruning drops the weakest residual blocks exactly; layers + channels in one call."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from trainer.compress.channel_prune import max_output_diff
from trainer.compress.layer_prune import (
    apply_layer_prune,
    block_scores,
    masked_blocks,
    plan_layer_prune,
    prune,
)
from trainer.model import build, get_spec

TOL = 1e-4
WEAK = ("backbone.stage3.blocks.1", "backbone.stage4.blocks.2")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convs: one thread is as fast, and does not spin against a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    """yolov4-n at 64 px, calibrated BN stats, random betas; two blocks made weak."""
    torch.manual_seed(0)
    m = build(get_spec("yolov4-n", input_size=64), seed=0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m.train()
        for _ in range(3):
            m(torch.rand(4, 1, 64, 64, generator=gen))
        for name, bn in m.named_bns():
            scale = 0.01 if name.startswith(WEAK) else 1.0
            bn.weight.copy_((0.2 + torch.rand(bn.weight.shape, generator=gen)) * scale)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))


def test_scores_and_plan_pick_the_weakest(model):
    scores = block_scores(model)
    assert set(scores) == set(model.spec.block_names())
    b = "backbone.stage3.blocks.0"
    gam = torch.cat(
        [model.get_submodule(f"{b}.{c}.bn").weight.detach() for c in ("conv1", "conv2")]
    )
    assert scores[b] == pytest.approx(float(gam.abs().mean()))
    assert plan_layer_prune(model, 2) == list(WEAK)


def test_plan_keeps_one_block_per_stage_by_default(model):
    # yolov4-n: blocks per stage 1, 1, 3, 3, 1 -> at most 4 can go while one stays per stage
    assert len(plan_layer_prune(model, 4)) == 4
    with pytest.raises(ValueError, match="only 4 of 9"):
        plan_layer_prune(model, 5)
    everything = plan_layer_prune(model, 9, min_blocks_per_stage=0)
    assert sorted(everything) == sorted(model.spec.block_names())


@pytest.mark.parametrize("fold", [True, False])
def test_dropping_blocks_equals_the_masked_reference(model, x, fold):
    """fold=True: == the model with the blocks' conv2 gamma zeroed (branch = act(beta),
    folded into the trunk's 1x1 readers). fold=False: == gamma and beta zeroed (branch = 0)."""
    spec, small = apply_layer_prune(model, WEAK, fold=fold)
    assert spec.depths == (1, 1, 2, 2, 1) and small.spec == spec
    assert not any(k.startswith(WEAK) for k in small.state_dict())
    ref = masked_blocks(model, WEAK, zero_beta=not fold)
    # the two references differ by the branch constants act(beta): a pruner folding when it
    # should not (or the reverse) fails this test
    assert max_output_diff(ref, masked_blocks(model, WEAK, zero_beta=fold), x) > 1e-2
    with torch.no_grad():
        out = small(x)
    assert [o.shape for o in out] == [o.shape for o in model(x)]
    diff = max_output_diff(small, ref, x)
    assert diff < TOL, diff


def test_a_stage_may_lose_all_its_blocks(model, x):
    blocks = [b for b in model.spec.block_names() if b.startswith("backbone.stage4.")]
    spec, small = apply_layer_prune(model, blocks)
    assert spec.depths[3] == 0
    assert max_output_diff(small, masked_blocks(model, blocks), x) < TOL


def test_prune_layers_then_channels(model, x):
    result = prune(model, percent=40, layers=2, round_to=8)
    assert result.blocks == WEAK
    assert result.spec.depths == (1, 1, 2, 2, 1)
    assert result.plan is not None and result.plan.removed_fraction > 0.2
    assert result.params_after < 0.8 * result.params_before
    assert all(w % 8 == 0 for w in result.spec.conv_widths().values())
    assert "backbone.stage3.blocks.1.conv1" not in result.plan.keep  # planned after the drop
    with torch.no_grad():
        out = result.model(x)
    assert [o.shape for o in out] == [o.shape for o in model(x)]
    assert all(torch.isfinite(o).all() for o in out)
    json.dumps(result.to_dict())
    assert "dropped 2 blocks" in result.summary()

    none = prune(model)
    assert none.spec == model.spec and none.model is not model and none.plan is None
