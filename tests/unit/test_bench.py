"""ORT latency and model profile on a tiny model (no timing assertions beyond sanity)."""

from __future__ import annotations

import pytest

from trainer.bench import model_profile, ort_latency
from trainer.export import export_onnx
from trainer.model import build, count_params, get_spec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = build(get_spec("yolov4-n", input_size=64, num_classes=2), seed=0)
    path = export_onnx(model, tmp_path_factory.mktemp("bench") / "tiny.onnx").path
    return model, path


@pytest.mark.parametrize("threads", [1, 2])
def test_ort_latency_sane(tiny, threads):
    _, path = tiny
    r = ort_latency(path, threads=threads, input_size=64, channels=1, warmup=1, repeats=5)
    assert r["median_ms"] > 0 and r["p90_ms"] > 0 and r["fps"] > 0
    assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"] + 1e-9
    assert r["fps"] == pytest.approx(1000.0 / r["median_ms"])
    assert r["threads"] == threads and r["repeats"] == 5


def test_ort_latency_rejects_bad_arguments(tiny):
    with pytest.raises(ValueError):
        ort_latency(tiny[1], threads=0, input_size=64, channels=1)


def test_model_profile(tiny):
    model, path = tiny
    p = model_profile(model, path)
    assert p["params"] == count_params(model) == model.spec.num_params()
    assert p["size_mb"] > 0 and p["gflops"] > 0
    # BN folded into the convs: the file is about the parameter size, below the state size
    assert 0 < p["onnx_mb"] <= p["size_mb"] * 1.05
    assert p["input_size"] == 64
    assert model_profile(model)["onnx_mb"] is None
