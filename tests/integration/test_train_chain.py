"""The whole chain through the commands, as a user runs it (Ultralytics' test_engine style):
train -> val -> predict (images + a video) -> export -> ONNX parity -> predict from ONNX.
yolov4-n at 64 px, 24 synthetic images, 2 epochs."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from trainer.cli import predict as predict_cmd
from trainer.cli import train as train_cmd
from trainer.cli import val as val_cmd
from trainer.data.synth import render, synthesize
from trainer.export import check_parity, export_command, read_onnx_metadata
from trainer.model import load_checkpoint

pytestmark = pytest.mark.slow


def _ok(result):
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def test_train_val_predict_export_chain(tmp_path):
    runner = CliRunner()
    data = tmp_path / "data"
    synthesize(data, images=24, size=96, seed=0, val_fraction=0.25)
    runs = tmp_path / "runs"

    # ---- train ---------------------------------------------------------------------------
    _ok(runner.invoke(train_cmd, [
        "--data", str(data / "data.yaml"), "--model", "yolov4-n", "--imgsz", "64",
        "--epochs", "2", "--batch", "8", "--workers", "0", "--device", "cpu",
        "--project", str(runs), "--name", "chain", "--set", "warmup_min_iters=0",
    ]))  # fmt: skip
    run = runs / "chain"
    best = run / "weights" / "best.pt"
    for name in ("args.yaml", "results.csv", "results.png", "weights/last.pt"):
        assert (run / name).is_file(), name
    model, meta = load_checkpoint(best)
    names = meta["class_names"]

    # ---- val (the data set comes from the checkpoint) ------------------------------------
    result = _ok(runner.invoke(val_cmd, ["--model", str(best), "--project", str(runs)]))
    assert "mAP50-95" in result.output and "all" in result.output
    metrics = json.loads((runs / "val" / "metrics.json").read_text())
    assert metrics["images"] == 6 and 0.0 <= metrics["map50"] <= 1.0
    assert (runs / "val" / "PR_curve.png").is_file()
    assert (runs / "val" / "confusion_matrix.png").is_file()

    # ---- predict: an image folder and two small videos -----------------------------------
    source = tmp_path / "source"
    source.mkdir()
    for image in sorted((data / "images" / "val").glob("*.png"))[:3]:
        shutil.copy(image, source / image.name)
    for name, fourcc in (("line.mp4", "mp4v"), ("line.avi", "MJPG")):
        writer = cv2.VideoWriter(str(source / name), cv2.VideoWriter_fourcc(*fourcc), 5, (96, 96))
        for i in range(3):
            writer.write(cv2.cvtColor(render(7, i, 96).image, cv2.COLOR_GRAY2BGR))
        writer.release()
    args = ["--source", str(source), "--conf", "0.001", "--project", str(runs)]
    result = _ok(runner.invoke(predict_cmd, ["--model", str(best), *args, "--name", "pt"]))
    assert "(3 frames)" in result.output
    saved = sorted(p.name for p in (runs / "pt").iterdir())
    images = sorted(p.name for p in source.glob("*.png"))
    assert saved == sorted([*images, "line.avi", "line.mp4", "predictions.json"])
    torch_preds = json.loads((runs / "pt" / "predictions.json").read_text())
    assert len(torch_preds) == 3 + 3 + 3

    # ---- export, with the parity check on the real images --------------------------------
    onnx_path = tmp_path / "model.onnx"
    _ok(runner.invoke(export_command, [
        "--model", str(best), "--out", str(onnx_path), "--check-parity", str(source),
    ]))  # fmt: skip
    onnx_meta = read_onnx_metadata(onnx_path)
    assert onnx_meta["slimspect.class_names"] == names
    assert onnx_meta["slimspect.thresholds"] == {"score": 0.25, "iou": 0.45}
    frames = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(source.glob("*.png"))]
    parity = check_parity(model, onnx_path, frames, names, score_threshold=0.05)
    assert parity.ok, parity.summary()

    # ---- predict from ONNX: the same detections as from torch ----------------------------
    _ok(runner.invoke(predict_cmd, ["--model", str(onnx_path), *args, "--name", "onnx"]))
    onnx_preds = json.loads((runs / "onnx" / "predictions.json").read_text())
    assert [(p["source"], p["frame"]) for p in onnx_preds] == [
        (p["source"], p["frame"]) for p in torch_preds
    ]
    for t, o in zip(torch_preds, onnx_preds, strict=True):
        # the top detections agree (far down the list, near-equal scores may swap order)
        top_t = [d for d in t["detections"] if d["score"] > 0.05]
        top_o = [d for d in o["detections"] if d["score"] > 0.05]
        assert [d["class_id"] for d in top_t] == [d["class_id"] for d in top_o]
        for dt, do in zip(top_t, top_o, strict=True):
            box_t = np.array([dt[k] for k in ("x1", "y1", "x2", "y2")])
            box_o = np.array([do[k] for k in ("x1", "y1", "x2", "y2")])
            assert np.abs(box_t - box_o).max() < 1e-2
