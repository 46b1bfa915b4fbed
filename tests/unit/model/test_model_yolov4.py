"""The built model: exact sizes, output contract, gradients, determinism, pruned specs."""

from __future__ import annotations

import pytest
import torch

from trainer.model import (
    YoloSpec,
    build,
    count_params,
    fp32_mib,
    get_spec,
    list_variants,
)


@pytest.mark.parametrize(("num_classes", "params"), [(80, 64_363_101), (6, 63_964_611)])
def test_yolov4_matches_darknet_yolov4_cfg(meta_build, num_classes, params):
    spec = get_spec("yolov4", num_classes=num_classes)
    model = meta_build(spec)
    assert count_params(model) == spec.num_params() == params


def test_yolov4_six_classes_fp32_size(meta_build):
    model = meta_build(get_spec("yolov4"))
    assert count_params(model) * 4 / 2**20 == pytest.approx(244.006, abs=1e-3)  # weights only
    assert fp32_mib(model) == pytest.approx(244.259, abs=1e-3)  # + BN running stats


def test_yolov4_output_shapes_on_meta(meta_build):
    spec = get_spec("yolov4")
    x = torch.zeros(2, 3, 416, 416, device="meta")
    maps, feats = meta_build(spec)(x, return_features=True)
    assert [tuple(m.shape) for m in maps] == [(2, 33, 52, 52), (2, 33, 26, 26), (2, 33, 13, 13)]
    assert [f.shape[1] for f in feats] == [128, 256, 512] == list(spec.feature_channels)


@pytest.mark.parametrize("name", [n for n in list_variants() if n != "yolov4"])
def test_variant_forward_and_backward(name):
    spec = get_spec(name, input_size=64, num_classes=3)
    model = build(spec, seed=0).train()
    x = torch.randn(2, spec.in_channels, 64, 64)
    maps, feats = model(x, return_features=True)
    assert [tuple(m.shape) for m in maps] == [(2, 3 * 8, 64 // s, 64 // s) for s in (8, 16, 32)]
    assert [f.shape[1] for f in feats] == list(spec.feature_channels)
    assert all(torch.isfinite(m).all() for m in maps)
    sum(m.float().square().mean() for m in maps).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


def test_variants_scale_widths_by_eight_and_keep_a_block_per_stage():
    for name in list_variants():
        spec = get_spec(name)
        assert all(w % 8 == 0 for w in spec.conv_widths().values()), name
        assert min(spec.depths) >= 1
    assert get_spec("yolov4").depths == (1, 2, 8, 8, 4)
    assert get_spec("yolov4-n").depths == (1, 1, 3, 3, 1)
    assert get_spec("yolov4-n", class_names=["a", "b"]).num_classes == 2
    with pytest.raises(ValueError, match="known: yolov4, yolov4-m, yolov4-s, yolov4-n"):
        get_spec("yolov5")


def test_build_is_deterministic(small_spec):
    a = build(small_spec, seed=0).state_dict()
    state = torch.random.get_rng_state()
    b = build(small_spec, seed=0).state_dict()
    assert torch.equal(state, torch.random.get_rng_state())  # seeding leaves the global RNG
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build(small_spec, seed=1).state_dict()
    assert not torch.equal(a["backbone.stem.conv.weight"], c["backbone.stem.conv.weight"])
    torch.manual_seed(7)
    d = build(small_spec).state_dict()
    torch.manual_seed(7)
    e = build(small_spec).state_dict()
    assert all(torch.equal(d[k], e[k]) for k in d)


def test_head_bias_carries_the_objectness_and_class_priors(small_spec):
    bias = build(small_spec, seed=0).head.p3.pred.bias.view(small_spec.num_anchors, -1)
    assert (bias[:, 4] < -2).all()  # few objects per cell at start
    assert (bias[:, 5:] < 0).all()


def test_bad_input_is_rejected(small_spec):
    model = build(small_spec, seed=0)
    with pytest.raises(ValueError, match=r"expected input \(B, 1, H, W\)"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 1, 64, 48))


def test_hand_pruned_spec_rebuilds_and_runs(small_spec):
    """Pruning's round trip: rewrite widths and drop a block in the spec's data, rebuild."""
    data = small_spec.to_dict()
    data["backbone"]["stages"][2]["blocks"][1]["hidden"] = 13  # any width, not only x8
    data["backbone"]["stages"][2]["blocks"][2]["present"] = False
    data["backbone"]["stages"][3]["trunk"] = 40
    data["neck"]["spp"]["pre"][1] = 100
    data["head"]["p4"] = 24
    spec = YoloSpec.from_dict(data)
    model = build(spec, seed=0).eval()
    assert model.backbone.stage3.blocks[1].conv1.conv.out_channels == 13
    assert [n for n, _ in model.backbone.stage3.blocks.named_children()] == ["0", "1"]
    assert model.backbone.stage4.blocks[2].conv2.conv.out_channels == 40
    assert count_params(model) == spec.num_params() < small_spec.num_params()
    with torch.no_grad():
        maps = model(torch.randn(1, 1, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 33, 8, 8), (1, 33, 4, 4), (1, 33, 2, 2)]
    assert all(torch.isfinite(m).all() for m in maps)
