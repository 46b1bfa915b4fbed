"""The compression chain through the commands, as a user runs it: train a baseline ->
sparse -> prune (channels + layers) -> distill -> export, then the student reloads alone
and its ONNX agrees with torch. yolov4-n at 64 px on a few synthetic images, 1 epoch each."""

from __future__ import annotations

import csv

import pytest
import torch
from click.testing import CliRunner

from trainer.cli import train as train_cmd
from trainer.compress.cli import distill as distill_cmd
from trainer.compress.cli import prune as prune_cmd
from trainer.compress.cli import sparse as sparse_cmd
from trainer.data.synth import synthesize
from trainer.export import export_command
from trainer.model import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ok(result):
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def test_train_sparse_prune_distill_export(tmp_path):
    runner = CliRunner()
    data = tmp_path / "data"
    synthesize(data, images=16, size=64, seed=2, val_fraction=0.25)
    runs = tmp_path / "runs"
    common = ["--data", str(data / "data.yaml"), "--imgsz", "64", "--epochs", "1",
              "--batch", "8", "--device", "cpu", "--project", str(runs),
              "--set", "warmup_min_iters=0"]  # fmt: skip

    _ok(runner.invoke(train_cmd, [*common, "--model", "yolov4-n", "--name", "base"]))
    base = runs / "base" / "weights" / "best.pt"

    _ok(runner.invoke(sparse_cmd, [*common, "--weights", str(base), "--s", "1e-2",
                                   "--proximal", "--name", "sparse"]))  # fmt: skip
    sparse_run = runs / "sparse"
    rows = list(csv.DictReader((sparse_run / "sparsity.csv").open()))
    assert rows and float(rows[-1]["median"]) < float(rows[0]["median"])
    assert any((sparse_run / "gamma").glob("epoch_*.png"))
    sparse_ckpt = sparse_run / "weights" / "last.pt"

    _ok(runner.invoke(prune_cmd, ["--model", str(sparse_ckpt), "--percent", "50",
                                  "--layers", "2", "--project", str(runs), "--name", "pruned"]))  # fmt: skip
    pruned = runs / "pruned" / "weights" / "pruned.pt"
    teacher_model, _ = load_checkpoint(sparse_ckpt)
    student_model, _ = load_checkpoint(pruned)
    assert student_model.spec.num_params() < 0.7 * teacher_model.spec.num_params()

    _ok(runner.invoke(distill_cmd, [*common, "--teacher", str(sparse_ckpt),
                                    "--student", str(pruned), "--name", "distill"]))  # fmt: skip
    header = (runs / "distill" / "results.csv").read_text().splitlines()[0]
    assert "distill" in header
    student = runs / "distill" / "weights" / "best.pt"
    model, _ = load_checkpoint(student)
    assert model.spec.num_params() == student_model.spec.num_params()

    onnx_path = tmp_path / "student.onnx"
    _ok(runner.invoke(export_command, ["--model", str(student), "--out", str(onnx_path)]))
    teacher_fp32_bytes = 4 * teacher_model.spec.num_params()
    assert onnx_path.stat().st_size < 0.7 * teacher_fp32_bytes
