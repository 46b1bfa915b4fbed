"""Prediction on images, folders and videos from a checkpoint; drawing; thresholds; errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from trainer.cli import predict as predict_cmd
from trainer.data.synth import render
from trainer.model import build, get_spec, save_checkpoint
from trainer.predict import Predictor, draw_detections, predict

NAMES = ("scratch", "patch")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    spec = get_spec("yolov4-n", input_size=64, class_names=NAMES)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    return save_checkpoint(path, build(spec, seed=0), {"thresholds": {"score": 0.5, "iou": 0.3}})


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A folder with two gray PNGs (one non-square) and a 3-frame AVI."""
    folder = tmp_path_factory.mktemp("sources")
    cv2.imwrite(str(folder / "a.png"), render(0, 0, 96).image)
    cv2.imwrite(str(folder / "b.png"), render(0, 1, 96).image[:, :80])
    writer = cv2.VideoWriter(str(folder / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 96))
    for i in range(3):
        writer.write(cv2.cvtColor(render(1, i, 96).image, cv2.COLOR_GRAY2BGR))
    writer.release()
    return folder


def test_predictor_reads_checkpoint(checkpoint):
    p = Predictor(checkpoint)
    assert p.class_names == list(NAMES)
    assert (p.input_size, p.channels, len(p.anchors), p.strides) == (64, 1, 9, (8, 16, 32))
    assert (p.conf, p.iou) == (0.5, 0.3)  # the checkpoint's deployment thresholds


def test_predict_folder_images_and_video(checkpoint, sources, tmp_path):
    out = tmp_path / "out"
    results = predict(checkpoint, sources, conf=0.001, save_dir=out)
    assert [(r.source.rsplit("/", 1)[-1], r.frame) for r in results] == [
        ("a.png", None),
        ("b.png", None),
        ("clip.avi", 0),
        ("clip.avi", 1),
        ("clip.avi", 2),
    ]
    for r in results:
        det = r.detections
        assert det.ndim == 2 and det.shape[1] == 6 and len(det) > 0  # a fresh model, conf 0.001
        width = 80 if r.source.endswith("b.png") else 96
        assert det[:, [0, 2]].min() >= 0 and det[:, [0, 2]].max() <= width  # source pixels
        assert det[:, [1, 3]].max() <= 96
        assert set(det[:, 5].astype(int)) <= {0, 1}
        assert np.all(np.diff(det[:, 4]) <= 0)  # best first
    assert cv2.imread(str(out / "a.png")).shape == (96, 96, 3)
    assert cv2.imread(str(out / "b.png")).shape == (96, 80, 3)
    cap = cv2.VideoCapture(str(out / "clip.avi"))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 3
    saved = json.loads((out / "predictions.json").read_text())
    assert len(saved) == 5 and saved[2]["frame"] == 0
    first = saved[0]["detections"][0]
    assert set(first) == {"x1", "y1", "x2", "y2", "score", "class_id", "class_name"}
    assert first["class_name"] in NAMES


def test_video_stride_and_thresholds(checkpoint, sources):
    results = predict(checkpoint, sources / "clip.avi", conf=0.001, vid_stride=2)
    assert [r.frame for r in results] == [0, 2]
    strict = predict(checkpoint, sources / "a.png")  # the checkpoint's score 0.5
    loose = predict(checkpoint, sources / "a.png", conf=0.001, max_det=7)
    assert len(strict[0].detections) < len(loose[0].detections) == 7


def test_draw_detections():
    gray = np.full((50, 60), 100, np.uint8)
    det = np.array([[10, 10, 40, 30, 0.9, 1]], np.float32)
    drawn = draw_detections(gray, det, NAMES)
    assert drawn.shape == (50, 60, 3) and drawn.dtype == np.uint8
    assert (drawn[20, 10] != 100).any()  # the box's left edge
    assert (drawn[45, 55] == 100).all()  # far from the box: untouched
    assert (gray == 100).all()  # the input is not drawn on


def test_errors(checkpoint, sources, tmp_path):
    with pytest.raises(FileNotFoundError, match="model not found"):
        Predictor(tmp_path / "missing.pt")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=".pt checkpoint or an .onnx"):
        Predictor(tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match="source not found"):
        predict(checkpoint, tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not an image"):
        predict(checkpoint, tmp_path / "notes.txt")

    runner = CliRunner()
    result = runner.invoke(predict_cmd, ["--model", str(tmp_path / "x.pt"), "--source", "."])
    assert (
        result.exit_code == 1 and result.output == f"Error: model not found: {tmp_path / 'x.pt'}\n"
    )
    result = runner.invoke(
        predict_cmd, ["--model", str(tmp_path / "model.bin"), "--source", str(sources)]
    )
    assert result.exit_code == 1 and result.output.startswith("Error: cannot load")
