"""The architecture spec: serialisation, validation, the flat view a pruner uses."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from trainer.model import (
    SpecError,
    YoloSpec,
    build,
    count_params,
    get_spec,
    list_variants,
)
from trainer.model.blocks import ConvBNAct


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_load_round_trip_gives_the_same_spec_and_model(tmp_path, small_spec, suffix):
    spec = small_spec.without_blocks(["backbone.stage3.blocks.1"]).with_widths(
        {"backbone.stage4.blocks.0.conv1": 24}
    )
    path = spec.save(tmp_path / f"spec{suffix}")
    loaded = YoloSpec.load(path)
    assert loaded == spec
    a, b = build(spec, seed=0).state_dict(), build(loaded, seed=0).state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_spec_file_is_plain_and_readable(tmp_path, small_spec):
    data = yaml.safe_load(small_spec.save(tmp_path / "s.yaml").read_text())
    assert data["anchors"][0][0] == [12, 16]  # integral anchors stay ints
    assert data["backbone"]["stages"][2]["blocks"][0] == {"hidden": 32, "present": True}
    assert json.loads(json.dumps(small_spec.to_dict())) == small_spec.to_dict()


def _edit(spec: YoloSpec, path: list, value) -> dict:
    data = spec.to_dict()
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["backbone", "stages", 2, "trunk"], 0, r"stages\[2\]: trunk must be >= 1"),
        (["backbone", "stages", 2, "trunk"], "64", r"stages\[2\]\.trunk: expected int"),
        (["backbone", "stages", 1, "blocks", 0, "hiden"], 8, r"unknown key\(s\) \['hiden'\]"),
        (["neck", "td4", "convs"], [], r"spec\.neck\.td4: convs must list at least one"),
        (["neck", "spp", "pools"], [5, 8], r"pools\[1\] must be odd"),
        (["neck", "act"], "gelu", r"act must be one of"),
        (["input_size"], 100, r"input_size must be a multiple of 32"),
        (["in_channels"], 2, r"in_channels must be 1 \(gray\) or 3"),
        (["class_names"], ["a", "b"], r"class_names lists 2 names for num_classes=6"),
        (["anchors"], [[[459, 401]], [[36, 75]], [[12, 16]]], r"anchors must go small to large"),
        (["anchors"], [[[12, 16]], [[36, 75]]], r"anchors must list 3 scales"),
        (["strides"], [8, 16, 64], r"strides must be"),
    ],
)
def test_invalid_specs_fail_naming_the_field(small_spec, path, value, message):
    with pytest.raises(SpecError, match=message):
        YoloSpec.from_dict(_edit(small_spec, path, value))


def test_missing_key_and_bad_suffix(tmp_path, small_spec):
    data = small_spec.to_dict()
    del data["head"]
    with pytest.raises(SpecError, match=r"missing key\(s\) \['head'\]"):
        YoloSpec.from_dict(data)
    with pytest.raises(SpecError, match=r"\.yaml, \.yml or \.json"):
        small_spec.save(tmp_path / "spec.txt")


@pytest.mark.parametrize("name", list_variants())
def test_conv_nodes_describe_the_built_model(name, meta_build):
    spec = get_spec(name)
    model = meta_build(spec)
    convs = dict(model.named_convs())
    assert list(convs) == list(spec.conv_widths())  # same names, forward order
    assert [n for n, _ in model.named_bns()] == list(convs)
    modules = dict(model.named_modules())
    for node in spec.conv_nodes():
        m = modules[node.name]
        conv = m.conv if isinstance(m, ConvBNAct) else m
        assert (conv.in_channels, conv.out_channels) == (node.in_channels, node.out_channels)
        assert (conv.kernel_size[0], conv.stride[0]) == (node.kernel, node.stride)
        assert (conv.bias is None) == node.prunable
    assert spec.num_params() == count_params(model)


def test_trunk_group_ties_main_and_every_block_output(small_spec):
    groups = small_spec.channel_groups()
    assert groups["backbone.stage3.trunk"] == (
        "backbone.stage3.main",
        "backbone.stage3.blocks.0.conv2",
        "backbone.stage3.blocks.1.conv2",
        "backbone.stage3.blocks.2.conv2",
    )
    nodes = {n.name: n for n in small_spec.conv_nodes()}
    assert nodes["backbone.stage3.blocks.1.conv1"].inputs == ("backbone.stage3.trunk",)
    assert nodes["backbone.stage3.fuse"].inputs == (
        "backbone.stage3.transition",
        "backbone.stage3.skip",
    )
    assert nodes["neck.spp.post.0"].inputs == ("neck.spp.pre.2",) * 4
    assert nodes["neck.td4.convs.0"].inputs == ("neck.td4.lateral", "neck.td4.reduce")
    assert nodes["neck.bu5.convs.0"].inputs == ("neck.bu5.down", "neck.spp.post.2")
    assert nodes["backbone.stem"].inputs == ("input",)
    assert not nodes["head.p3.pred"].prunable


def test_with_widths_sets_convs_and_trunks(small_spec):
    spec = small_spec.with_widths(
        {
            "backbone.stage2.skip": 8,
            "backbone.stage3.blocks.1.conv2": 24,  # sets the whole trunk
            "neck.td3.convs.1": 40,
        }
    )
    w = spec.conv_widths()
    assert w["backbone.stage2.skip"] == 8
    assert w["backbone.stage3.main"] == w["backbone.stage3.blocks.2.conv2"] == 24
    assert w["neck.td3.convs.1"] == 40
    assert spec.with_widths({"backbone.stage3.trunk": 16}).backbone.stages[2].trunk == 16
    assert small_spec.backbone.stages[2].trunk == 32  # the original is untouched
    with pytest.raises(SpecError, match="share the channel group backbone.stage3.trunk"):
        small_spec.with_widths({"backbone.stage3.main": 16, "backbone.stage3.blocks.0.conv2": 8})
    with pytest.raises(SpecError, match="unknown conv 'backbone.stage9.down'"):
        small_spec.with_widths({"backbone.stage9.down": 8})
    with pytest.raises(SpecError, match="must be >= 1"):
        small_spec.with_widths({"backbone.stage2.skip": 0})


def test_without_blocks_keeps_the_other_names(small_spec):
    spec = small_spec.without_blocks(["backbone.stage4.blocks.1"])
    assert spec.depths == (1, 1, 3, 2, 1)
    assert "backbone.stage4.blocks.2" in spec.block_names()
    assert "backbone.stage4.blocks.1" not in spec.block_names()
    assert "backbone.stage4.blocks.2.conv1" in spec.conv_widths()
    with pytest.raises(SpecError, match="unknown residual block"):
        spec.without_blocks(["backbone.stage4.blocks.1"])  # already gone
