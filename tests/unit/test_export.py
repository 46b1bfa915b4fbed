"""ONNX export: valid graph, dynamic batch, torch/ORT parity on maps and detections, metadata,
pruned specs, and the ``export`` command."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from slimspect.detection import postprocess, preprocess
from trainer.export import (
    INPUT_NAME,
    OUTPUT_NAMES,
    MishSigmoidForm,
    build_metadata,
    check_parity,
    export_command,
    export_onnx,
    read_onnx_metadata,
)
from trainer.model import build, get_spec, save_checkpoint

SIZE = 64
CLASSES = ("scratch", "patch")
SCORE, IOU = 0.3, 0.45


def lively(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make a random-init model behave like a trained one numerically.

    Fresh init shrinks activations layer by layer (the maps come out nearly constant), so
    calibrate every BatchNorm on a random batch (activations ~ N(0, 1)), scale the
    prediction convs so the logits span a few units, and raise the objectness bias so
    some boxes pass the score threshold and NMS has work to do.
    """
    spec = model.spec
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        model(torch.rand(4, spec.in_channels, spec.input_size, spec.input_size, generator=g))
        model.eval()
        for lvl in ("p3", "p4", "p5"):
            pred = getattr(model.head, lvl).pred
            pred.weight.mul_(0.1)
            bias = pred.bias.view(spec.num_anchors, -1)  # (A, 5+C)
            bias[:, 4] = 1.0
            bias[:, 5:] = 0.0
    return model


def torch_maps(model, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [m.numpy() for m in model(torch.from_numpy(x))]


def source_images(count: int = 3) -> list[np.ndarray]:
    """Gray frames of different aspect ratios, so the letterbox is exercised."""
    rng = np.random.default_rng(7)
    shapes = [(48, 80), (100, 60), (64, 64), (30, 90)]
    return [rng.integers(0, 256, shapes[i % len(shapes)], dtype=np.uint8) for i in range(count)]


@pytest.fixture(scope="module")
def spec():
    return get_spec("yolov4-n", input_size=SIZE, class_names=CLASSES)


@pytest.fixture(scope="module")
def model(spec):
    return lively(build(spec, seed=0))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    report = export_onnx(model, out, metadata={"run_id": "run-42", "stage": "distill"})
    return report


def test_export_is_valid_onnx_with_named_io(exported, spec):
    proto = onnx.load(str(exported.path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    assert exported.opset == 17
    assert exported.simplified and exported.simplify_error is None
    assert exported.nodes_after <= exported.nodes_before
    assert exported.inputs[0].shape == ("batch", 1, SIZE, SIZE)
    assert exported.inputs[0].dtype == "float32"
    a = spec.head_channels
    assert [o.shape for o in exported.outputs] == [
        ("batch", a, SIZE // s, SIZE // s) for s in spec.strides
    ]
    assert exported.size_mib == pytest.approx(exported.path.stat().st_size / 2**20)
    # no decode or NMS inside the graph
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"NonMaxSuppression", "TopK", "Exp"}
    last = {n.output[0]: n.op_type for n in proto.graph.node}
    assert all(last[name] == "Conv" for name in OUTPUT_NAMES)  # raw logits straight out


@pytest.mark.parametrize("batch", [1, 2])
def test_ort_matches_torch_on_raw_maps(model, exported, batch):
    x = np.random.default_rng(batch).random((batch, 1, SIZE, SIZE), dtype=np.float32)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    want = torch_maps(model, x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.shape[0] == batch
        assert np.abs(w).max() > 0.5  # the maps carry signal, not just the bias
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)


def test_dynamic_batch_rows_match_single_runs(exported):
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).random((3, 1, SIZE, SIZE), dtype=np.float32)
    batched = session.run(None, {INPUT_NAME: x})
    for i in range(3):
        single = session.run(None, {INPUT_NAME: x[i : i + 1]})
        for b, s in zip(batched, single, strict=True):
            np.testing.assert_allclose(b[i : i + 1], s, rtol=0, atol=1e-4)


def test_detections_identical_after_shared_postprocess(model, exported):
    images = source_images(3)
    report = check_parity(model, exported.path, images, CLASSES, SCORE, IOU)
    assert report.ok, report.summary()
    assert report.num_images == 3
    assert all(n > 0 for n in report.torch_detections)  # NMS had boxes to work on
    assert report.torch_detections == report.onnx_detections
    assert report.max_box_diff <= 1e-3
    assert report.max_abs_diff <= 1e-4
    # the detections vary with the image: the check is not comparing constant outputs
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    dets = []
    for img in images[:2]:
        x, info = preprocess(img, SIZE, channels=1)
        maps = session.run(None, {INPUT_NAME: x})
        (det,) = postprocess(
            maps, model.spec.flat_anchors, model.spec.strides, CLASSES, info, SCORE, IOU
        )
        assert det.shape[1] == 6 and len(det) > 0
        dets.append(det)
    assert dets[0].shape != dets[1].shape or not np.allclose(dets[0], dets[1])


def test_parity_detects_a_wrong_model(model, exported, spec):
    other = lively(build(spec, seed=1), seed=1)
    report = check_parity(other, exported.path, source_images(2), CLASSES, SCORE, IOU)
    assert not report.ok
    assert report.max_abs_diff > 1e-2


def test_metadata_round_trip(exported, spec):
    meta = read_onnx_metadata(exported.path)
    assert meta["slimspect.class_names"] == list(CLASSES)
    assert meta["slimspect.input"]["width"] == SIZE
    assert meta["slimspect.input"]["height"] == SIZE
    assert meta["slimspect.input"]["channels"] == 1
    assert meta["slimspect.strides"] == [8, 16, 32]
    assert tuple(tuple(tuple(a) for a in s) for s in meta["slimspect.anchors"]) == spec.anchors
    assert type(spec).from_dict(meta["slimspect.spec"]) == spec
    assert meta["slimspect.run_id"] == "run-42"
    assert meta["slimspect.stage"] == "distill"
    assert meta == exported.metadata
    # onnxruntime sees the same map (what an edge station reads, without onnx or torch)
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    custom = session.get_modelmeta().custom_metadata_map
    assert custom["slimspect.class_names"] == '["scratch", "patch"]'


def test_metadata_rejects_reserved_keys_and_wrong_class_names(spec):
    with pytest.raises(ValueError, match="written by the exporter"):
        build_metadata(spec, {"anchors": [1, 2]})
    with pytest.raises(ValueError, match="differ"):
        build_metadata(spec, {"class_names": ["a", "b"]})
    unnamed = get_spec("yolov4-n", input_size=SIZE, num_classes=2)
    props = build_metadata(unnamed, {"class_names": ["x", "y"]})
    assert props["slimspect.class_names"] == '["x", "y"]'
    assert build_metadata(unnamed)["slimspect.class_names"] == '["class0", "class1"]'


def test_pruned_spec_exports_and_matches(spec, tmp_path):
    pruned = spec.with_widths(
        {
            "backbone.stem": 7,
            "backbone.stage3.blocks.1.conv1": 13,
            "backbone.stage4.trunk": 37,
            "backbone.stage4.fuse": 101,
            "neck.spp.pre.1": 51,
            "neck.td3.convs.4": 19,
            "head.p4.conv": 29,
        }
    ).without_blocks(["backbone.stage3.blocks.0", "backbone.stage4.blocks.2"])
    model = lively(build(pruned, seed=2), seed=2)
    report = export_onnx(model, tmp_path / "pruned.onnx")
    assert report.metadata["slimspect.spec"]["backbone"]["stages"][3]["trunk"] == 37
    assert type(spec).from_dict(read_onnx_metadata(report.path)["slimspect.spec"]) == pruned
    x = np.random.default_rng(5).random((2, 1, SIZE, SIZE), dtype=np.float32)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    for g, w in zip(session.run(None, {INPUT_NAME: x}), torch_maps(model, x), strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)
    parity = check_parity(model, report.path, source_images(2), CLASSES, SCORE, IOU)
    assert parity.ok, parity.summary()


def test_static_batch_and_no_simplify(model, tmp_path):
    report = export_onnx(model, tmp_path / "static.onnx", simplify=False, dynamic_batch=False)
    assert not report.simplified and report.simplify_error == "disabled"
    assert report.inputs[0].shape == (1, 1, SIZE, SIZE)
    assert report.nodes_after == report.nodes_before


def test_simplify_failure_falls_back_with_warning(model, tmp_path, monkeypatch):
    import onnxslim

    def boom(*_a, **_k):
        raise RuntimeError("simulated onnxslim failure")

    monkeypatch.setattr(onnxslim, "slim", boom)
    with pytest.warns(RuntimeWarning, match="onnxslim failed"):
        report = export_onnx(model, tmp_path / "fallback.onnx")
    assert not report.simplified and "simulated" in report.simplify_error
    onnx.checker.check_model(onnx.load(str(report.path)))


def test_mish_sigmoid_form_equals_mish():
    x = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([0.0, -1e-30, 1e-30])])
    got = MishSigmoidForm()(x)
    want = torch.nn.functional.mish(x.double())
    assert torch.isfinite(got).all()
    assert (got.double() - want).abs().max() < 2e-6


def test_fast_mish_replaces_softplus_and_exact_keeps_it(model, exported, tmp_path):
    ops = {n.op_type for n in onnx.load(str(exported.path)).graph.node}
    assert "Softplus" not in ops and "Sigmoid" in ops
    assert exported.fast_mish
    assert exported.metadata["slimspect.export"]["mish"] == "sigmoid-form"
    exact = export_onnx(model, tmp_path / "exact.onnx", fast_mish=False)
    assert "Softplus" in {n.op_type for n in onnx.load(str(exact.path)).graph.node}
    assert exact.metadata["slimspect.export"]["mish"] == "softplus-tanh"
    # the model keeps its own Mish modules after either export
    assert any(isinstance(m, torch.nn.Mish) for m in model.modules())
    assert not any(isinstance(m, MishSigmoidForm) for m in model.modules())
    x = np.random.default_rng(9).random((1, 1, SIZE, SIZE), dtype=np.float32)
    session = ort.InferenceSession(str(exact.path), providers=["CPUExecutionProvider"])
    for g, w in zip(session.run(None, {INPUT_NAME: x}), torch_maps(model, x), strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-4)


def test_export_leaves_model_mode_alone(spec, tmp_path):
    m = build(spec, seed=0)
    m.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        export_onnx(m, tmp_path / "t.onnx", simplify=False)
    assert m.training


# ---- the command ----------------------------------------------------------------------


def test_cli_exports_a_checkpoint(model, tmp_path):
    ckpt = save_checkpoint(
        tmp_path / "ckpt.pt", model, {"epoch": 3, "thresholds": {"score": SCORE}}
    )
    out = tmp_path / "out" / "model.onnx"
    result = CliRunner().invoke(
        export_command, ["--model", str(ckpt), "--out", str(out), "--parity-images", "2"]
    )
    assert result.exit_code == 0, result.output
    assert out.exists()
    assert "MiB" in result.output and "OK" in result.output
    meta = read_onnx_metadata(out)
    assert meta["slimspect.epoch"] == 3
    assert meta["slimspect.source_checkpoint"] == "ckpt.pt"
    assert meta["slimspect.class_names"] == list(CLASSES)


def test_cli_parity_on_a_folder_of_images(model, tmp_path):
    import cv2

    ckpt = save_checkpoint(tmp_path / "ckpt.pt", model)
    data = tmp_path / "data" / "images"
    data.mkdir(parents=True)
    for i, img in enumerate(source_images(2)):
        cv2.imwrite(str(data / f"img{i}.png"), img)
    result = CliRunner().invoke(
        export_command,
        ["--model", str(ckpt), "--no-simplify", "--check-parity", str(tmp_path / "data")],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ckpt.onnx").exists()
    assert "2 image(s)" in result.output


def test_cli_missing_file_fails_clearly(tmp_path):
    result = CliRunner().invoke(export_command, ["--model", str(tmp_path / "nope.pt")])
    assert result.exit_code == 1
    assert "checkpoint not found" in result.output
    assert "Traceback" not in result.output


def test_cli_not_a_checkpoint_fails_clearly(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"this is not a checkpoint")
    result = CliRunner().invoke(export_command, ["--model", str(bogus)])
    assert result.exit_code == 1
    assert "not a slimspect checkpoint" in result.output
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    result = CliRunner().invoke(export_command, ["--model", str(tmp_path / "other.pt")])
    assert result.exit_code == 1
    assert "not a slimspect checkpoint" in result.output
