"""INT8 quantization (trainer.compress.quantize): a valid QDQ model that runs in ORT, keeps
the metadata, leaves the prediction convs in fp32, stays close to fp32 and is smaller;
the sensitivity pass; fp32/int8 comparison; and the rule that picks the shipped format.

One yolov4-n at 64 px (random weights, BatchNorm statistics calibrated on random batches
so activations have a realistic spread), exported once, quantized once per module on 8
synthetic images.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from trainer.compress.quantize import (
    FORMAT_FP32,
    FORMAT_INT8,
    LayerSensitivity,
    QuantReport,
    calibration_tensors,
    choose_default,
    compare,
    cpu_int8_features,
    evaluate_onnx,
    head_conv_nodes,
    pick_sensitive,
    quantize_int8,
)
from trainer.data.synth import render, synthesize
from trainer.export import export_onnx, read_onnx_metadata
from trainer.model import build, get_spec

SIZE = 64
# How close int8 stays to fp32 on this random-weight model. A random network amplifies
# small perturbations layer by layer (benchmarks/bench_int8.py: moving the fp32 input by
# half an 8-bit step already leaves only 10-13 dB on the 256 px maps), so the raw maps
# come out at 18.5 / 14.6 / 12.3 dB (p3 / p4 / p5; the head biases are much of that
# signal) where a trained model does better. The raw-map floor alone is weak: calibrating
# on one flat grey image still gave 14.5 / 12.2 / 11.0 dB. The early convs, before the
# amplification, are the sharp test: their outputs sit at 30-37 dB against fp32 when the
# quantization is right and at 0-2 dB with that broken calibration.
MIN_RAW_SQNR_DB = 10.0
MIN_EARLY_SQNR_DB = 25.0  # cumulative SQNR of the first 4 quantized convs


def calibrated_model(seed: int = 0):
    """yolov4-n at 64 px whose BatchNorms hold statistics of a few random batches."""
    spec = get_spec("yolov4-n", input_size=SIZE)
    model = build(spec, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, spec.in_channels, SIZE, SIZE, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quant")


@pytest.fixture(scope="module")
def fp32_path(work: Path) -> Path:
    path = work / "model.onnx"
    export_onnx(calibrated_model(), path, metadata={"source_checkpoint": "random.pt"})
    return path


@pytest.fixture(scope="module")
def dataset(work: Path) -> Path:
    synthesize(work / "ds", 8, size=96, seed=3, val_fraction=0.25)
    return work / "ds"


def local_cpu_saturates() -> bool:
    """An x86 CPU without VNNI: U8S8 convs can saturate (see the quantize module), so the
    model compared on THIS machine is quantized as the module advises for such a station
    (7-bit weights). Measured on an AVX2-only AMD EPYC: raw SQNR 9.96 dB without it."""
    features = cpu_int8_features()
    vnni = features.get("avx512_vnni") or features.get("avx_vnni") or features.get("amx_int8")
    return bool(features.get("avx2")) and not vnni


@pytest.fixture(scope="module")
def report(fp32_path: Path, dataset: Path, work: Path) -> QuantReport:
    return quantize_int8(
        fp32_path, work / "model.int8.onnx", dataset, split=None, count=8, sensitivity_k=2,
        reduce_range=local_cpu_saturates(),
    )  # fmt: skip


def test_int8_model_runs_and_is_qdq(report: QuantReport, fp32_path: Path):
    assert report.int8_path.is_file()
    assert report.quant_format == "QDQ" and report.activation_type == "uint8"
    assert report.calibration_images == 8 and report.preprocessed, report.preprocess_error
    model = onnx.load(str(report.int8_path))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == report.quantize_linear > 0
    assert ops.count("DequantizeLinear") == report.dequantize_linear > 0
    int8_weights = [
        t
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    ]
    assert len(int8_weights) == report.quantized_convs >= 70  # (O, I, k, k) conv weights
    # per-channel: one scale per output channel on a weight's DequantizeLinear
    scales = {t.name: t for t in model.graph.initializer}
    w_dq = [
        n
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in {t.name for t in int8_weights}
    ]
    assert all(len(scales[n.input[1]].dims) == 1 and scales[n.input[1]].dims[0] > 1 for n in w_dq)

    x = np.random.default_rng(0).random((2, 1, SIZE, SIZE), dtype=np.float32)  # batch stays dynamic
    s_q = ort.InferenceSession(str(report.int8_path), providers=["CPUExecutionProvider"])
    s_f = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    for a, b in zip(s_f.run(None, {"images": x}), s_q.run(None, {"images": x}), strict=True):
        assert a.shape == b.shape and np.isfinite(b).all()


def test_smaller_than_fp32(report: QuantReport, fp32_path: Path):
    assert report.fp32_bytes == fp32_path.stat().st_size
    assert report.int8_bytes == report.int8_path.stat().st_size
    assert report.size_ratio > 3.0  # int8 weights, fp32 heads and scales


def test_metadata_kept_and_marked(report: QuantReport, fp32_path: Path):
    fp32_meta = read_onnx_metadata(fp32_path)
    int8_meta = read_onnx_metadata(report.int8_path)
    for key, value in fp32_meta.items():
        assert int8_meta[key] == value, key
    assert int8_meta["slimspect.source_checkpoint"] == "random.pt"
    assert int8_meta["slimspect.format"] == FORMAT_INT8
    q = int8_meta["slimspect.quantization"]
    assert q["quant_format"] == "QDQ" and q["per_channel"] is True
    assert q["excluded"] == list(report.excluded)
    # what a station sees through onnxruntime
    session = ort.InferenceSession(str(report.int8_path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["slimspect.format"] == '"onnx-int8"'


def test_head_convs_stay_fp32(report: QuantReport):
    model = onnx.load(str(report.int8_path))
    heads = head_conv_nodes(model)
    assert len(heads) == 3 and set(heads) == set(report.head_excluded)
    assert all(name.endswith("pred/Conv") for name in heads)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for name in heads:
        weight = inits[nodes[name].input[1]]  # a float initializer, no DequantizeLinear between
        assert weight.data_type == onnx.TensorProto.FLOAT
    assert report.float_convs == len(report.excluded)


def test_sensitivity_pass(report: QuantReport):
    rows = report.sensitivity
    assert len(rows) >= 70 and not any(r.node in report.head_excluded for r in rows)
    assert all(r.local_sqnr_db is not None and math.isfinite(r.local_sqnr_db) for r in rows)
    for r in rows:  # the local figure adds the parts' noise: never above any part
        parts = [p for p in (r.weight_sqnr_db, r.input_sqnr_db, r.output_sqnr_db) if p]
        assert r.local_sqnr_db <= min(parts) + 1e-9
    worst = sorted(rows, key=lambda r: r.local_sqnr_db)
    expected = [r.node for r in worst if r.local_sqnr_db < report.sensitivity_threshold_db][:2]
    assert list(report.sensitive_excluded) == expected
    assert set(report.excluded) == set(report.head_excluded) | set(report.sensitive_excluded)


def test_pick_sensitive():
    rows = [
        LayerSensitivity("a", 40, 40, 40, 35.0, 20),
        LayerSensitivity("b", 40, 40, 20, 19.9, 10),
        LayerSensitivity("c", 40, 40, 25, 24.0, 12),
        LayerSensitivity("d", None, None, None, None, None),
        LayerSensitivity("e", 40, 10, 40, 9.9, 8),
    ]
    assert pick_sensitive(rows, 2, 30.0) == ["e", "b"]
    assert pick_sensitive(rows, 5, 30.0, skip=["e"]) == ["b", "c"]
    assert pick_sensitive(rows, 3, 5.0) == []
    assert pick_sensitive(rows, 0, 30.0) == []


def test_outputs_close_to_fp32(report: QuantReport, fp32_path: Path):
    images = [render(11, i, 96).image for i in range(4)]
    result = compare(fp32_path, report.int8_path, images, threads=(1,), warmup=1, repeats=3)
    assert result["images"] == 4
    for name, r in result["raw"].items():
        assert r["sqnr_db"] > MIN_RAW_SQNR_DB, (name, r)
        assert r["mean_abs"] < 0.2 * r["max_abs_fp32"], (name, r)
    early = report.sensitivity[:4]
    assert all(r.cumulative_sqnr_db > MIN_EARLY_SQNR_DB for r in early), early
    det = result["detections"]
    assert det["matched"] <= min(det["fp32"], det["int8"])
    assert det["agreement"] is None or 0.0 <= det["agreement"] <= 1.0
    lat = result["latency"][1]
    assert lat["fp32"]["repeats"] == lat["int8"]["repeats"] == 3
    assert lat["speedup"] == pytest.approx(lat["fp32"]["median_ms"] / lat["int8"]["median_ms"])
    assert result["size_ratio"] == pytest.approx(report.size_ratio)


def test_exclude_list_and_no_exclusion(fp32_path: Path, work: Path):
    images = [render(5, i, 80).image for i in range(4)]  # in-memory source images
    with pytest.raises(ValueError, match="not in the graph"):
        quantize_int8(fp32_path, work / "bad.onnx", images, exclude=["no/such/Conv"])
    rep = quantize_int8(fp32_path, work / "all.int8.onnx", images, exclude=None)
    assert rep.excluded == () and rep.float_convs == 0 and rep.calibration_images == 4
    head = head_conv_nodes(fp32_path)[:1]
    rep1 = quantize_int8(fp32_path, work / "one.int8.onnx", images, exclude=head)
    assert rep1.excluded == tuple(head) and rep1.head_excluded == tuple(head)
    assert rep1.float_convs == 1 and rep1.sensitivity == ()


def test_calibration_tensors(dataset: Path):
    xs = calibration_tensors(dataset, SIZE, 1, split="train", count=3)
    assert len(xs) == 3 and all(x.shape == (1, 1, SIZE, SIZE) for x in xs)
    assert all(x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1 for x in xs)
    assert len(calibration_tensors(dataset, SIZE, 1, split=None, count=None)) == 8
    with pytest.raises(ValueError, match="no split"):
        calibration_tensors(dataset, SIZE, 1, split="test")
    ready = np.zeros((3, 1, SIZE, SIZE), np.float32)
    assert len(calibration_tensors([ready], SIZE, 1, count=2)) == 2
    with pytest.raises(ValueError, match="expected"):
        calibration_tensors([np.zeros((1, 3, SIZE, SIZE), np.float32)], SIZE, 1)


def test_evaluate_and_choose(report: QuantReport, fp32_path: Path, dataset: Path):
    m_f = evaluate_onnx(fp32_path, dataset, "val")
    m_q = evaluate_onnx(report.int8_path, dataset, "val")
    assert m_f.images == m_q.images == 2
    choice = choose_default(report, 10.0, 8.0, 0.0, 0.0)
    assert choice.format == FORMAT_INT8 and "faster" in choice.reason


def test_choose_default_rule(report: QuantReport):
    fmt, reason = choose_default(report, 20.0, 15.0, 0.800, 0.795)
    assert fmt == FORMAT_INT8, reason
    assert choose_default(report, 20.0, 15.0, 0.80, 0.79).format == FORMAT_INT8  # exactly 1 pt
    slower = choose_default(report, 20.0, 21.0, 0.80, 0.80)
    assert slower.format == FORMAT_FP32 and "not faster" in slower.reason
    lossy = choose_default(report, 20.0, 10.0, 0.80, 0.785)
    assert lossy.format == FORMAT_FP32 and "loses 1.50 mAP50 points" in lossy.reason
    assert choose_default(report, 20.0, 10.0, 0.80, None).format == FORMAT_FP32
    assert choose_default(report, 20.0, 10.0, float("nan"), 0.8).format == FORMAT_FP32
    assert choose_default(None, 20.0, 10.0, 0.8, 0.8).format == FORMAT_FP32
    assert choose_default(report, 20.0, 19.0, 0.8, 0.8, min_speedup=1.1).format == FORMAT_FP32
    # ort_latency dicts, per thread count: int8 must win at every one
    f = {1: {"median_ms": 30.0, "threads": 1}, 2: {"median_ms": 18.0, "threads": 2}}
    q_ok = {1: {"median_ms": 20.0, "threads": 1}, 2: {"median_ms": 12.0, "threads": 2}}
    q_mixed = {1: {"median_ms": 20.0, "threads": 1}, 2: {"median_ms": 19.0, "threads": 2}}
    assert choose_default(report, f, q_ok, 0.8, 0.8).format == FORMAT_INT8
    assert choose_default(report, f, q_mixed, 0.8, 0.8).format == FORMAT_FP32
    assert choose_default(report, {"median_ms": 9.0}, {"median_ms": 8.0}, 0.8, 0.8).format == (
        FORMAT_INT8
    )


def test_percentile_calibration_and_bad_arguments(fp32_path: Path, work: Path):
    images = [render(7, i, 96).image for i in range(4)]
    rep = quantize_int8(fp32_path, work / "pct.int8.onnx", images, method="percentile")
    assert rep.method == "percentile" and rep.quantized_convs >= 70
    result = compare(fp32_path, rep.int8_path, images, threads=())
    assert result["min_sqnr_db"] > MIN_RAW_SQNR_DB
    with pytest.raises(ValueError, match="method"):
        quantize_int8(fp32_path, work / "x.onnx", images, method="kl")
    with pytest.raises(ValueError, match="activation_type"):
        quantize_int8(fp32_path, work / "x.onnx", images, activation_type="fp8")
    with pytest.raises(ValueError, match="differ"):
        quantize_int8(fp32_path, fp32_path, images)
