"""Channel pruning: plan rules, pruned == folded (exact), pruned == masked where the fold is
exact, the border effect bounded, reload and ONNX export of a pruned model, the search."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainer.compress.channel_prune import (
    apply_channel_prune,
    channel_importance,
    fold_border_bound,
    folded_model,
    masked_model,
    max_output_diff,
    max_percent_within,
    plan_channel_prune,
    prune_by_percent,
)
from trainer.compress.dependency import trace_dependencies
from trainer.model import build, get_spec, load_checkpoint, save_checkpoint

TOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convs: one thread is as fast, and does not spin against a busy 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sparse_like(seed: int = 0) -> nn.Module:
    """yolov4-n at 64 px with calibrated BN statistics and sparse-training-like BN params:
    half the gammas near zero, betas random (so removed channels carry act(beta) != 0)."""
    torch.manual_seed(seed)
    model = build(get_spec("yolov4-n", input_size=64), seed=seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.rand(4, 1, 64, 64, generator=gen))
        for _, bn in model.named_bns():
            g = torch.rand(bn.weight.shape, generator=gen) * 1.5
            g[torch.rand(g.shape, generator=gen) < 0.5] *= 1e-3
            bn.weight.copy_(g)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return sparse_like()


@pytest.fixture(scope="module")
def graph(model):
    return trace_dependencies(model)


@pytest.fixture(scope="module")
def x():
    # full-range random input: every border pixel of every map carries signal
    return torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def plan(model, graph):
    return plan_channel_prune(model, graph, 50)


@pytest.fixture(scope="module")
def pruned(model, plan):
    return apply_channel_prune(model, plan)


@pytest.mark.parametrize("percent", [30, 70, 100])
def test_plan_floor_rounding_and_choice(model, graph, percent):
    plan = plan_channel_prune(model, graph, percent, min_keep_frac=0.1, round_to=8)
    imp = channel_importance(model, graph)
    for g in graph.prunable:
        kept = plan.kept(g.name)
        assert 1 <= len(kept) <= g.width
        assert len(kept) % 8 == 0 or len(kept) == g.width
        assert len(kept) >= math.ceil(0.1 * g.width)
        removed = plan.removed(g.name)
        assert sorted(kept + removed) == list(range(g.width))
        if removed:  # the strongest channels are the ones kept
            assert imp[g.name][list(kept)].min() >= imp[g.name][list(removed)].max()
    if percent == 100:  # the floor alone, rounded up to 8
        assert all(
            len(plan.kept(g.name)) == min(g.width, max(8, math.ceil(0.1 * g.width / 8) * 8))
            for g in graph.prunable
        )


def test_plan_without_rounding_follows_the_threshold(model, graph):
    plan = plan_channel_prune(model, graph, 40, round_to=1, min_keep_frac=0.0)
    imp = channel_importance(model, graph)
    pool = torch.cat(list(imp.values()))
    below = int((pool < plan.threshold).sum())
    assert below == math.floor(0.4 * len(pool))  # random gammas: no ties at the threshold
    assert plan.channels_before - plan.channels_after == below
    assert plan.to_dict()["groups"]["backbone.stem"]["width"] == 8


def test_tied_trunk_uses_the_max_over_members(model, graph):
    imp = channel_importance(model, graph)
    trunk = graph.group("backbone.stage4.main")
    gammas = torch.stack(
        [model.get_submodule(f"{m}.bn").weight.detach().abs().double() for m in trunk.members]
    )
    assert torch.equal(imp[trunk.name], gammas.amax(0))


def test_percent_zero_changes_nothing(model, graph, x):
    plan = plan_channel_prune(model, graph, 0)
    assert plan.spec_widths == {} and plan.removed_fraction == 0
    spec, same = apply_channel_prune(model, plan)
    assert spec == model.spec
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), same(x), strict=True))


def test_pruned_equals_folded_everywhere(model, plan, pruned, x):
    spec, small = pruned
    assert plan.removed_fraction > 0.3
    assert spec.num_params() < 0.5 * model.spec.num_params()
    assert small.spec == spec and small.training == model.training
    diff = max_output_diff(small, folded_model(model, plan), x)
    assert diff < TOL, diff


def test_pruned_equals_masked_where_the_fold_is_exact(model, graph, x):
    """Groups none of whose consumers zero-pads: concats (CSP fuse, PAN), SPP max-pools,
    nearest upsampling, residual trunks, the heads' biased pred convs."""
    exact = [g.name for g in graph.prunable if graph.folds_exactly(g.name)]
    for name in (
        "backbone.stage3.main",  # trunk: constants summed over the residual adds
        "backbone.stage2.skip",  # second half of a concat
        "neck.spp.pre.2",  # through three max-pools and the identity
        "neck.td4.reduce",  # through nearest upsampling
        "head.p4.conv",  # folded into pred's bias
    ):
        assert name in exact
    plan = plan_channel_prune(model, graph, 60, groups=exact)
    assert plan.removed_fraction > 0.25
    _, small = apply_channel_prune(model, plan)
    masked = masked_model(model, plan)
    assert max_output_diff(masked, model, x) > 1e-3  # the mask itself changes the output
    diff = max_output_diff(small, masked, x)
    assert diff < TOL, diff


def test_padded_consumer_differs_from_masked_only_at_its_border(model, graph, x):
    """conv1 -> 3x3 conv2: the fold is exact inside, bounded on the 1-pixel border ring."""
    group, consumer = "backbone.stage3.blocks.0.conv1", "backbone.stage3.blocks.0.conv2"
    plan = plan_channel_prune(model, graph, 70, groups=[group])
    assert plan.removed(group)
    seen = {}

    def grab(key):
        return lambda _m, _i, out: seen.__setitem__(key, out)

    outs = []
    for key, m in (("masked", masked_model(model, plan)), ("folded", folded_model(model, plan))):
        h = m.get_submodule(f"{consumer}.bn").register_forward_hook(grab(key))
        with torch.no_grad():
            outs.append(m(x))
        h.remove()
    d = (seen["masked"] - seen["folded"]).abs()
    interior = d[:, :, 1:-1, 1:-1]
    border = d.clone()
    border[:, :, 1:-1, 1:-1] = 0
    assert interior.max() < 1e-5
    bound = fold_border_bound(model, plan)
    assert set(bound) == {consumer}
    assert 1e-3 < border.max() <= bound[consumer] + 1e-5


def test_fold_false_equals_zero_beta_mask(model, plan, x):
    _, small = apply_channel_prune(model, plan, fold=False)
    diff = max_output_diff(small, masked_model(model, plan, zero_beta=True), x)
    assert diff < TOL, diff


def test_pruned_model_saves_loads_and_exports(model, pruned, x, tmp_path):
    from trainer.export import export_onnx, ort_session

    spec, small = pruned
    ckpt = save_checkpoint(tmp_path / "pruned.pt", small, {"stage": "prune"})
    again, meta = load_checkpoint(ckpt)
    assert again.spec == spec and meta == {"stage": "prune"}
    again.eval()
    with torch.no_grad():
        ref = [t.numpy() for t in small(x)]
        assert all(np.array_equal(a, b.numpy()) for a, b in zip(ref, again(x), strict=True))
    report = export_onnx(again, tmp_path / "pruned.onnx", simplify=False)
    session = ort_session(report.path)
    got = session.run(None, {"images": x.numpy()})
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True)) < TOL


def test_widths_are_multiples_of_8(pruned):
    spec, _ = pruned
    assert all(w % 8 == 0 for w in spec.conv_widths().values())


def test_max_percent_within_finds_the_budget_edge(model, graph):
    """A synthetic, monotone evaluate_fn: mAP50 falls with the share of parameters cut."""
    full = model.spec.num_params()

    def evaluate(m):
        return 0.9 * m.spec.num_params() / full

    result = max_percent_within(model, evaluate, 0.3, lo=0, hi=90, steps=5, graph=graph)
    assert result.base_map50 == pytest.approx(0.9)
    assert result.drop <= 0.3 < 0.9 - evaluate(prune_by_percent(model, 90, graph=graph)[1])
    infeasible = [p for p, _, ok in result.trials if not ok]
    step = 90 / 2**5
    assert min(infeasible) - result.percent <= step + 1e-9
    assert all(ok == (p <= result.percent) for p, _, ok in result.trials)

    easy = max_percent_within(model, evaluate, 1.0, lo=0, hi=50, steps=3, graph=graph)
    assert easy.percent == 50 and len(easy.trials) == 2


def test_plots_write_pngs(model, plan, pruned, tmp_path):
    from trainer.compress.plots import plot_channels_kept, plot_gamma_histogram

    spec, _ = pruned
    a = plot_channels_kept(
        model.spec, spec.without_blocks(["backbone.stage3.blocks.1"]), tmp_path / "k.png"
    )
    b = plot_gamma_histogram(model, tmp_path / "g.png", threshold=plan.threshold)
    for p in (a, b):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_channel_macs_is_what_removing_one_channel_saves(model, graph):
    """A group's cost is exactly the multiply-adds the pruned model loses per channel."""
    import dataclasses

    from trainer.compress.channel_prune import channel_macs
    from trainer.model.profile import conv_macs

    costs = channel_macs(model, graph)
    full = plan_channel_prune(model, graph, 0, round_to=1)
    before = conv_macs(model, 64, 1)
    for g in [graph.prunable[0], graph.prunable[len(graph.prunable) // 2], graph.prunable[-1]]:
        plan = dataclasses.replace(full, keep={**full.keep, g.name: full.keep[g.name][1:]})
        after = conv_macs(apply_channel_prune(model, plan)[1], 64, 1)
        assert before - after == pytest.approx(costs[g.name]), g.name
    # early, high-resolution channels cost more than deep ones
    assert costs[graph.prunable[0].name] > costs[graph.prunable[-1].name]


def test_flops_criterion_removes_more_multiply_adds_at_the_same_share(model, graph):
    from trainer.model.profile import conv_macs

    macs = {}
    for keep_by in ("gamma", "flops"):
        plan = plan_channel_prune(model, graph, 50, round_to=1, keep_by=keep_by)
        macs[keep_by] = conv_macs(apply_channel_prune(model, plan)[1], 64, 1)
        assert plan.keep_by == keep_by
    assert macs["flops"] < macs["gamma"]
