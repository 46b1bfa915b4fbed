"""Checkpoints: spec + weights + metadata in one file, strict and explicit on mismatch."""

from __future__ import annotations

import pytest
import torch

from trainer.model import (
    WeightsMismatchError,
    build,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)


def test_save_then_load_gives_identical_outputs(tmp_path, small_spec):
    spec = small_spec.without_blocks(["backbone.stage3.blocks.0"])
    model = build(spec, seed=0)
    model.train()
    model(torch.randn(2, 1, 64, 64))  # move the BN running stats off their init
    model.eval()
    meta = {"stage": "sparse", "epoch": 3, "map50": 0.5, "tags": ["a", "b"], "parent": None}
    path = save_checkpoint(tmp_path / "w" / "last.pt", model, meta)

    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "slimspect-ckpt" and payload["version"] == 1
    assert payload["spec"] == spec.to_dict()

    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert loaded.spec == spec
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    loaded.eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x), strict=True):
            assert torch.equal(a, b)


def test_mismatched_spec_names_the_first_differing_layer(small_spec):
    weights = build(small_spec, seed=0).state_dict()
    narrower = build(small_spec.with_widths({"backbone.stage3.blocks.1.conv1": 24}), seed=0)
    with pytest.raises(WeightsMismatchError) as err:
        load_weights(narrower, weights)
    assert str(err.value) == (
        "weights do not fit spec: backbone.stage3.blocks.1.conv1.conv.weight has shape "
        "(32, 32, 1, 1) in the checkpoint, (24, 32, 1, 1) in the spec"
    )
    shallower = build(small_spec.without_blocks(["backbone.stage4.blocks.2"]), seed=0)
    with pytest.raises(
        WeightsMismatchError,
        match=r"backbone\.stage4\.blocks\.2\.conv1\.conv\.weight \(64, 64, 1, 1\) "
        "is in the checkpoint but not in the spec",
    ):
        load_weights(shallower, weights)
    deeper = build(small_spec, seed=0)
    partial = {k: v for k, v in weights.items() if not k.startswith("neck.bu5")}
    with pytest.raises(
        WeightsMismatchError, match=r"neck\.bu5\.down\.conv\.weight .* is in the spec but not"
    ):
        load_weights(deeper, partial)


def test_bad_metadata_and_foreign_files_are_refused(tmp_path, small_spec):
    model = build(small_spec, seed=0)
    with pytest.raises(TypeError, match=r"metadata\.when is a object"):
        save_checkpoint(tmp_path / "x.pt", model, {"when": object()})
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a slimspect-ckpt file"):
        load_checkpoint(tmp_path / "foreign.pt")
