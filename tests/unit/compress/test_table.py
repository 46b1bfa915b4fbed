"""The compression table (trainer.compress.table): one row per stage from a checkpoint or an
ONNX file, the JSON and Markdown it writes, and the ratio arithmetic.

A random yolov4-n at 64 px (BatchNorm statistics from a few random batches) saved as a
checkpoint and exported once; a dozen synthetic images; repeats=3 to stay quick."""

from __future__ import annotations

import json
import math

import pytest
import torch
from rich.console import Console

from trainer.compress.table import (
    ROW_KEYS,
    print_table,
    ratios,
    stage_row,
    stage_rows,
    table_markdown,
    write_table,
)
from trainer.data.dataset import NEU_DET_CLASSES
from trainer.data.synth import synthesize
from trainer.export import export_onnx
from trainer.model import build, get_spec, save_checkpoint

SIZE = 64


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    work = tmp_path_factory.mktemp("table")
    synthesize(work / "data", images=12, size=SIZE, seed=1, val_fraction=0.25)
    spec = get_spec("yolov4-n", input_size=SIZE, class_names=list(NEU_DET_CLASSES))
    model = build(spec, seed=0)
    g = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, spec.in_channels, SIZE, SIZE, generator=g))
    model.eval()
    ckpt = save_checkpoint(work / "tiny.pt", model, {"class_names": list(NEU_DET_CLASSES)})
    onnx_path = export_onnx(model, work / "tiny.onnx").path
    return {"data": work / "data", "ckpt": ckpt, "onnx": onnx_path, "model": model}


def test_row_from_checkpoint_and_from_onnx(tiny):
    by_ckpt = stage_row("baseline", checkpoint=tiny["ckpt"], data=tiny["data"], repeats=3, warmup=1)
    by_onnx = stage_row("onnx", onnx=tiny["onnx"], data=tiny["data"], repeats=3, warmup=1)
    for row in (by_ckpt, by_onnx):
        assert tuple(row) == ROW_KEYS
        assert row["params"] == tiny["model"].spec.num_params()
        assert row["latency_ms_1t"] > 0 and row["latency_ms_2t"] > 0
        assert row["fps_2t"] == pytest.approx(1000 / row["latency_ms_2t"])
        assert row["gflops"] > 0
        assert 0 <= row["map50"] <= 1 and 0 <= row["map50_95"] <= row["map50"] + 1e-9
    assert by_onnx["stage"] == "onnx"
    # the ONNX row's size is its file's; a checkpoint is exported the same way to be sized
    assert by_onnx["size_mb"] == tiny["onnx"].stat().st_size / 2**20
    assert by_ckpt["size_mb"] == pytest.approx(by_onnx["size_mb"], rel=0.01)
    assert by_ckpt["gflops"] == pytest.approx(by_onnx["gflops"])
    # torch and ONNX Runtime share the post-processing: mAP agrees
    assert by_ckpt["map50"] == pytest.approx(by_onnx["map50"], abs=0.02)


def test_row_without_data_has_no_map(tiny):
    row = stage_row("x", onnx=tiny["onnx"], data=None, repeats=3, warmup=0)
    assert row["map50"] is None and row["map50_95"] is None


def test_rows_are_timed_side_by_side_and_known_rows_keep_their_measures(tiny, monkeypatch):
    from trainer.compress import quantize

    calls = []
    real = quantize.interleaved_latency

    def spy(models, threads, *args, **kwargs):
        calls.append((sorted(models), threads))
        return real(models, threads, *args, **kwargs)

    monkeypatch.setattr(quantize, "interleaved_latency", spy)
    known = {"onnx": {"stage": "onnx", "params": 7, "size_mb": 1.5, "gflops": 0.1,
                      "latency_ms_1t": 999.0, "map50": 0.5, "map50_95": 0.25}}  # fmt: skip
    seen = []
    rows = stage_rows(
        [("ckpt", {"checkpoint": tiny["ckpt"]}), ("onnx", {"onnx": tiny["onnx"]})],
        data=tiny["data"], repeats=3, warmup=1, known=known,
        on_row=lambda row: seen.append((row["stage"], "latency_ms_1t" in row)),
    )  # fmt: skip
    # one pass per thread count over both models, after both rows' size and mAP
    assert calls == [(["ckpt", "onnx"], 1), (["ckpt", "onnx"], 2)]
    assert seen == [("ckpt", False), ("onnx", False)]
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert 0 < row["latency_ms_1t"] < 999 and row["latency_ms_2t"] > 0
    # the known row: measured before (size, mAP kept), timed again with the other
    assert (rows[1]["params"], rows[1]["map50"], rows[1]["size_mb"]) == (7, 0.5, 1.5)
    assert rows[0]["params"] == tiny["model"].spec.num_params()


def test_row_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="checkpoint or an ONNX"):
        stage_row("x", data=None)
    with pytest.raises(FileNotFoundError):
        stage_row("x", onnx=tmp_path / "missing.onnx", data=None)


def _row(stage, size, lat2, map50, params=1_000_000):
    return {
        "stage": stage,
        "params": params,
        "size_mb": size,
        "gflops": 1.0,
        "latency_ms_1t": 2 * lat2,
        "latency_ms_2t": lat2,
        "fps_2t": 1000 / lat2,
        "map50": map50,
        "map50_95": None if map50 is None else map50 / 2,
    }


def test_ratio_math():
    base = _row("baseline", 244.0, 30.0, 0.9741)
    small = _row("int8", 4.0, 15.0, 0.9641)
    r = ratios(small, base)
    assert r["size_x"] == pytest.approx(61.0)
    assert r["speedup_x"] == pytest.approx(2.0)
    assert r["map50_delta_pts"] == pytest.approx(-1.0)
    assert ratios(base, base) == {"size_x": 1.0, "speedup_x": 1.0, "map50_delta_pts": 0.0}
    missing = ratios(_row("x", 0.0, 10.0, None), base)
    assert missing["size_x"] is None and missing["map50_delta_pts"] is None
    assert ratios(_row("x", 1.0, 10.0, math.nan), base)["map50_delta_pts"] is None


def test_write_table(tmp_path):
    rows = [_row("baseline", 244.0, 30.0, 0.9741), _row("pruned", 4.0, 15.0, 0.9641, 80_000)]
    json_path, md_path = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.md"
    write_table(rows, json_path, md_path, {"default_format": "onnx-fp32", "inf": math.inf})
    data = json.loads(json_path.read_text())
    assert set(data) == {"rows", "default_format", "inf"}
    assert data["rows"] == rows and data["inf"] == "inf"
    lines = md_path.read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, rule, one line per row
    assert "size x smaller" in table[0] and "speed-up x" in table[0]
    base_cells = [c.strip() for c in table[2].strip("|").split("|")]
    cells = [c.strip() for c in table[3].strip("|").split("|")]
    assert base_cells[0] == "baseline" and base_cells[-3:] == ["1.00", "1.00", "+0.00"]
    assert cells[0] == "pruned" and cells[1] == "0.080"
    assert cells[-3:] == ["61.00", "2.00", "-1.00"]
    assert table_markdown(rows) == md_path.read_text()
    with pytest.raises(ValueError):
        write_table(rows, json_path, md_path, {"rows": []})


def test_print_table():
    console = Console(record=True, width=200)
    print_table([_row("baseline", 244.0, 30.0, 0.97), _row("int8", 4.0, 15.0, None)], console)
    text = console.export_text()
    assert "baseline" in text and "int8" in text and "61.00" in text
