"""`slimspect prune` on a checkpoint: a smaller spec that loads alone, with its report."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from trainer.compress.cli import prune
from trainer.data.synth import synthesize
from trainer.model import build, get_spec, load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sparse_checkpoint(tmp_path):
    spec = get_spec("yolov4-n", num_classes=6, input_size=64)
    model = build(spec, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a sparse-trained look: many gammas near zero
        for _, bn in model.named_bns():
            gamma = torch.rand(bn.weight.shape, generator=gen)
            gamma[gamma < 0.5] *= 1e-3
            bn.weight.copy_(gamma)
    path = tmp_path / "sparse.pt"
    save_checkpoint(path, model, {"stage": "sparse"})
    return path, model.spec.num_params()


def test_prune_channels_and_layers(tmp_path, sparse_checkpoint):
    path, params = sparse_checkpoint
    result = CliRunner().invoke(
        prune,
        [
            "--model",
            str(path),
            "--percent",
            "50",
            "--layers",
            "2",
            "--project",
            str(tmp_path / "runs"),
            "--name",
            "p",
        ],
    )
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "p"
    pruned, meta = load_checkpoint(run / "weights" / "pruned.pt")
    assert meta["stage"] == "prune"
    assert pruned.spec.num_params() < 0.8 * params
    report = json.loads((run / "prune.json").read_text())
    assert len(report["layers"]) == 2 and report["params_after"] == pruned.spec.num_params()
    assert (run / "gamma.png").stat().st_size > 1000 and (run / "channels.png").exists()
    out = pruned(torch.rand(1, 1, 64, 64))
    assert [o.shape[-1] for o in out] == [8, 4, 2]


def test_max_map_drop_search_runs_on_data(tmp_path, sparse_checkpoint):
    path, _ = sparse_checkpoint
    data = tmp_path / "ds"
    synthesize(data, 6, size=64, seed=1, fmt="yolo")
    result = CliRunner().invoke(
        prune,
        [
            "--model",
            str(path),
            "--max-map-drop",
            "0.05",
            "--data",
            str(data),
            "--project",
            str(tmp_path / "runs"),
            "--name",
            "s",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "s" / "prune.json").read_text())
    assert report["search"]["trials"], report
    assert report["map50_before"] is not None


def test_prune_needs_something_to_do(tmp_path, sparse_checkpoint):
    path, _ = sparse_checkpoint
    result = CliRunner().invoke(prune, ["--model", str(path)])
    assert result.exit_code == 1 and "nothing to prune" in result.output
    missing = CliRunner().invoke(prune, ["--model", str(tmp_path / "no.pt"), "--percent", "10"])
    assert missing.exit_code == 1 and "checkpoint not found" in missing.output


def test_keep_by_flops_cuts_more_multiply_adds(tmp_path, sparse_checkpoint):
    from trainer.compress.channel_prune import KEEP_BY
    from trainer.compress.cli import KEEP_BY_CHOICES
    from trainer.model.profile import gflops

    assert KEEP_BY_CHOICES == KEEP_BY
    path, _ = sparse_checkpoint
    cost = {}
    for keep_by in ("gamma", "flops"):
        result = CliRunner().invoke(prune, [
            "--model", str(path), "--percent", "40", "--keep-by", keep_by,
            "--project", str(tmp_path / "runs"), "--name", keep_by,
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        run = tmp_path / "runs" / keep_by
        assert json.loads((run / "prune.json").read_text())["keep_by"] == keep_by
        cost[keep_by] = gflops(load_checkpoint(run / "weights" / "pruned.pt")[0])
    assert cost["flops"] < cost["gamma"]
