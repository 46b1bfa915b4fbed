"""``slimspect compress`` end to end and ``slimspect bench``: a baseline trained 1 epoch
through the train command, then the chain (sparse -> prune -> distill -> export fp32 + INT8
-> bench) in one command; the rerun skips every stage; a changed rerun is refused; a
removed stage is redone with the stages after it. yolov4-n at 64 px, a dozen synthetic
images, 1 epoch per training stage, 3 timed runs per latency."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from trainer.cli import train as train_cmd
from trainer.compress.chain import STAGES
from trainer.compress.cli import bench as bench_cmd
from trainer.compress.cli import compress as compress_cmd
from trainer.compress.table import ROW_KEYS

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


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    from trainer.data.synth import synthesize

    work = tmp_path_factory.mktemp("compress")
    synthesize(work / "data", images=12, size=64, seed=2, val_fraction=0.25)
    torch.set_num_threads(1)
    _ok(
        CliRunner().invoke(
            train_cmd,
            ["--data", str(work / "data" / "data.yaml"), "--model", "yolov4-n", "--imgsz", "64",
             "--epochs", "1", "--batch", "8", "--device", "cpu", "--project", str(work / "runs"),
             "--name", "base", "--set", "warmup_min_iters=0"],
        )
    )  # fmt: skip
    return work, work / "runs" / "base" / "weights" / "best.pt"


@pytest.mark.timeout(1200)
def test_compress_runs_every_stage_then_resumes(baseline):
    work, base = baseline
    out = work / "compress"
    args = ["--from", str(base), "--out", str(out), "--sparse-epochs", "1", "--s", "1e-2",
            "--proximal", "--percent", "50", "--layers", "1", "--distill-epochs", "1",
            "--batch", "8", "--device", "cpu", "--set", "warmup_min_iters=0",
            "--calibration-images", "8", "--repeats", "3", "--warmup", "1"]  # fmt: skip
    runner = CliRunner()
    first = _ok(runner.invoke(compress_cmd, args))
    for stage in STAGES:
        assert (out / stage / "done.json").is_file(), stage
        assert json.loads((out / stage / "done.json").read_text())["stage"] == stage
    assert (out / "export" / "model.onnx").is_file()
    assert (out / "export" / "model-int8.onnx").is_file()
    assert (out / "channels.png").stat().st_size > 0
    assert "done in" in first.output

    bench = json.loads((out / "bench.json").read_text())
    rows = bench["rows"]
    assert [r["stage"] for r in rows] == [
        "baseline", "sparse", "pruned", "distilled", "distilled-int8"
    ]  # fmt: skip
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert row["latency_ms_1t"] > 0 and row["latency_ms_2t"] > 0
        assert row["map50"] is not None
    by = {r["stage"]: r for r in rows}
    assert by["sparse"]["params"] == by["baseline"]["params"]
    for pruned in ("pruned", "distilled", "distilled-int8"):
        assert by[pruned]["params"] < by["baseline"]["params"]
    assert by["distilled-int8"]["size_mb"] < by["distilled"]["size_mb"]
    assert by["distilled"]["size_mb"] == pytest.approx(
        (out / "export" / "model.onnx").stat().st_size / 2**20
    )
    assert bench["default_format"] in ("onnx-fp32", "onnx-int8") and bench["default_reason"]
    export = json.loads((out / "export" / "done.json").read_text())
    assert export["default_format"] == bench["default_format"]
    md = (out / "bench.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == len(rows) + 1  # + header

    # the same command again: every stage is skipped, nothing is rewritten
    before = _mtimes(out)
    second = _ok(runner.invoke(compress_cmd, args))
    assert second.output.count(": skipped") == len(STAGES), second.output
    assert "done in" not in second.output
    assert _mtimes(out) == before

    # a changed setting is refused, not silently skipped or overwritten
    changed = args[:]
    changed[changed.index("--distill-epochs") + 1] = "2"
    refused = runner.invoke(compress_cmd, changed)
    assert refused.exit_code != 0 and "other settings" in refused.output
    assert "epochs" in refused.output
    assert _mtimes(out) == before

    # a removed stage is redone, and the stages after it with it
    (out / "export" / "done.json").unlink()
    third = _ok(runner.invoke(compress_cmd, args))
    assert third.output.count(": skipped") == 3, third.output
    for stage in ("sparse", "prune", "distill"):
        assert (out / stage / "done.json").stat().st_mtime_ns == before[out / stage / "done.json"]
    assert (out / "bench.json").stat().st_mtime_ns != before[out / "bench.json"]

    # slimspect bench on two artifacts
    json_path, md_path = work / "b" / "t.json", work / "b" / "t.md"
    result = _ok(
        runner.invoke(
            bench_cmd,
            [f"baseline={base}", f"int8={out / 'export' / 'model-int8.onnx'}",
             "--json", str(json_path), "--md", str(md_path), "--repeats", "3", "--warmup", "1"],
        )
    )  # fmt: skip
    table = json.loads(json_path.read_text())
    assert [r["stage"] for r in table["rows"]] == ["baseline", "int8"]
    assert table["rows"][1]["size_mb"] == pytest.approx(
        (out / "export" / "model-int8.onnx").stat().st_size / 2**20
    )
    assert table["sources"]["int8"].endswith("model-int8.onnx")
    assert "int8" in md_path.read_text() and "baseline" in result.output


def test_compress_errors(tmp_path, baseline):
    _, base = baseline
    runner = CliRunner()
    out = ["--out", str(tmp_path / "c")]
    cases = [
        (["--from", str(tmp_path / "nope.pt"), "--percent", "50"], "checkpoint not found"),
        (["--from", str(base), "--percent", "50", "--max-map-drop", "0.1"], "exclude each other"),
        (["--from", str(base)], "nothing to prune"),
        (["--from", str(base), "--percent", "5", "--data", str(tmp_path / "d")], "data not found"),
        (["--from", str(base), "--percent", "5", "--imgsz", "70"], "multiple of 32"),
        (["--from", str(base), "--percent", "5", "-o", "nonsense_key=1"], "nonsense_key"),
    ]
    for args, message in cases:
        result = runner.invoke(compress_cmd, [*args, *out])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_bench_errors(tmp_path, baseline):
    _, base = baseline
    runner = CliRunner()
    missing = runner.invoke(bench_cmd, [f"a={tmp_path / 'x.pt'}"])
    assert missing.exit_code == 1 and "file not found" in missing.output
    twice = runner.invoke(bench_cmd, [f"a={base}", f"a={base}"])
    assert twice.exit_code == 1 and "twice" in twice.output
    (tmp_path / "m.txt").write_text("x")
    wrong = runner.invoke(bench_cmd, [f"a={tmp_path / 'm.txt'}"])
    assert wrong.exit_code == 1 and "neither" in wrong.output


class _Interrupt(Exception):
    pass


@pytest.mark.timeout(900)
def test_interrupted_training_stage_resumes_from_last(baseline, monkeypatch, tmp_path):
    """A distillation stopped after its first epoch of two: the rerun skips sparse and prune,
    continues distill from its last.pt (not from scratch), then runs the later stages."""
    import io

    from rich.console import Console

    from trainer.callbacks import Callback
    from trainer.compress import distill as distill_module
    from trainer.compress.chain import compress

    class StopAfterFirstEpoch(Callback):
        def on_epoch_end(self, epoch, metrics):
            if epoch == 1:
                raise _Interrupt

    real = distill_module.distill_train
    resumed = []

    def interrupted(*args, **kwargs):
        return real(*args, callbacks=[StopAfterFirstEpoch()], **kwargs)

    def recording(*args, **kwargs):
        resumed.append(kwargs.get("resume"))
        return real(*args, **kwargs)

    _, base = baseline
    out = tmp_path / "c"
    kwargs = {
        "out_dir": out, "sparse_epochs": 1, "s": 1e-2, "proximal": True, "percent": 30,
        "distill_epochs": 2, "batch": 8, "device": "cpu", "overrides": {"warmup_min_iters": 0},
        "int8": False, "repeats": 2, "warmup": 0,
    }  # fmt: skip
    monkeypatch.setattr(distill_module, "distill_train", interrupted)
    with pytest.raises(_Interrupt):
        compress(base, console=Console(file=io.StringIO()), **kwargs)
    assert (out / "prune" / "done.json").is_file()
    assert not (out / "distill" / "done.json").exists()
    assert (out / "distill" / "weights" / "last.pt").is_file()

    monkeypatch.setattr(distill_module, "distill_train", recording)
    log = io.StringIO()
    result = compress(base, console=Console(file=log, width=200), **kwargs)
    assert result.skipped == ["sparse", "prune"]
    assert result.ran == ["distill", "export", "bench"]
    assert resumed == [out / "distill" / "weights" / "last.pt"]
    assert "resuming from" in log.getvalue()
    epochs = (out / "distill" / "results.csv").read_text().strip().splitlines()[1:]
    assert len(epochs) == 2
    assert [r["stage"] for r in result.rows] == ["baseline", "sparse", "pruned", "distilled"]
    assert result.default_format == "onnx-fp32" and "not asked" in result.default_reason
