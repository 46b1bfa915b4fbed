"""Prediction on images, folders and videos, from a torch checkpoint or an ONNX file.

    results = predict("runs/train/weights/best.pt", "shots/", conf=0.25)
    results = predict("model.onnx", "line3.mp4")

Each frame goes through :func:`slimspect.detection.preprocess` and
:func:`slimspect.detection.postprocess` (the stations' pre- and post-processing), so a
``.pt`` and its exported ``.onnx`` give the same boxes. With ``save_dir`` the annotated
images (same name), annotated videos (``<stem>.mp4`` / ``.avi``) and ``predictions.json``
(every detection in source pixels, with class names) are written there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from slimspect.detection import postprocess, preprocess, to_records
from trainer.data.dataset import IMAGE_SUFFIXES
from trainer.data.preview import PALETTE

__all__ = ["VIDEO_SUFFIXES", "Prediction", "Predictor", "draw_detections", "predict"]

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv"})


@dataclass
class Prediction:
    """The detections of one image or video frame."""

    source: str  # file path
    frame: int | None  # frame index in a video, None for an image
    detections: np.ndarray  # (N, 6) float32 x1, y1, x2, y2, score, class_id; source pixels
    class_names: Sequence[str]

    def records(self) -> list[dict]:
        return [d.model_dump() for d in to_records(self.detections, self.class_names)]


class Predictor:
    """Runs one model (torch ``.pt`` checkpoint or ``.onnx``) on BGR / gray frames.

    Attributes: ``class_names``, ``input_size``, ``channels``, ``anchors`` (flat (w, h)),
    ``strides``, ``conf``, ``iou`` (defaults from the checkpoint / ONNX metadata).
    """

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model not found: {self.path}")
        suffix = self.path.suffix.lower()
        if suffix == ".onnx":
            self._load_onnx()
        elif suffix == ".pt":
            self._load_torch(device)
        else:
            raise ValueError(f"{self.path}: expected a .pt checkpoint or an .onnx file")

    def _load_torch(self, device: str) -> None:
        import torch

        from trainer.model import load_checkpoint

        model, meta = load_checkpoint(self.path, map_location=device)
        self._torch = torch
        self._model = model.eval()
        self._session = None
        spec = model.spec
        names = (
            spec.class_names
            or meta.get("class_names")
            or [f"class{i}" for i in range(spec.num_classes)]
        )
        self._setup(
            names,
            spec.input_size,
            spec.in_channels,
            spec.flat_anchors,
            spec.strides,
            meta.get("thresholds") or {},
        )

    def _load_onnx(self) -> None:
        from slimspect.onnx_meta import DetectorMetadata
        from trainer.export import ort_session

        self._session = ort_session(self.path)
        meta = DetectorMetadata.from_props(
            self._session.get_modelmeta().custom_metadata_map, source=str(self.path)
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = list(meta.outputs)
        self._model = None
        self._setup(
            meta.class_names,
            meta.input_width,
            meta.channels,
            meta.anchors,
            meta.strides,
            meta.thresholds,
        )

    def _setup(self, names, size, channels, anchors, strides, thresholds) -> None:
        self.class_names = list(names)
        self.input_size = int(size)
        self.channels = int(channels)
        self.anchors = tuple(anchors)
        self.strides = tuple(strides)
        self.conf = float(thresholds.get("score", 0.25))
        self.iou = float(thresholds.get("iou", 0.45))

    def raw_maps(self, x: np.ndarray) -> list[np.ndarray]:
        """Network input (1, C, S, S) float32 -> the three raw maps as numpy."""
        if self._session is not None:
            return self._session.run(self._outputs, {self._input: x})
        torch = self._torch
        with torch.no_grad():
            device = next(self._model.parameters()).device
            maps = self._model(torch.from_numpy(x).to(device))
        return [m.float().cpu().numpy() for m in maps]

    def __call__(
        self,
        image: np.ndarray,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int = 300,
    ) -> np.ndarray:
        """One BGR or gray frame -> (N, 6) detections in its pixels."""
        x, info = preprocess(image, self.input_size, channels=self.channels, source_order="bgr")
        (det,) = postprocess(
            self.raw_maps(x),
            self.anchors,
            self.strides,
            self.class_names,
            info,
            score_threshold=self.conf if conf is None else conf,
            iou_threshold=self.iou if iou is None else iou,
            max_detections=max_det,
        )
        return det


def draw_detections(image: np.ndarray, det: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """A BGR copy of ``image`` with each box, its class name and score drawn."""
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    h = canvas.shape[0]
    thick = max(1, round(h / 400))
    scale = max(0.35, h / 1200)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for x1, y1, x2, y2, score, k in det.tolist():
        k = int(k)
        colour = PALETTE[k % len(PALETTE)]
        p1 = (round(x1), round(y1))
        p2 = (max(p1[0], round(x2) - 1), max(p1[1], round(y2) - 1))
        cv2.rectangle(canvas, p1, p2, colour, thick, cv2.LINE_AA)
        label = f"{names[k] if 0 <= k < len(names) else k} {score:.2f}"
        (tw, th), base = cv2.getTextSize(label, font, scale, 1)
        ty = p1[1] - 2 if p1[1] - th - base - 2 >= 0 else min(p2[1] + th + 2, h - 1)
        cv2.rectangle(canvas, (p1[0], ty - th - 1), (p1[0] + tw + 1, ty + base - 1), colour, -1)
        cv2.putText(canvas, label, (p1[0] + 1, ty - 1), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def _sources(source: str | Path) -> list[Path]:
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source not found: {path}")
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
        )
        if not files:
            raise FileNotFoundError(f"no images or videos in {path}")
        return files
    if path.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        raise ValueError(
            f"{path}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}) or a "
            f"video ({', '.join(sorted(VIDEO_SUFFIXES))})"
        )
    return [path]


def _frames(path: Path, vid_stride: int) -> Iterator[tuple[int, np.ndarray, float]]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    index = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % vid_stride == 0:
                yield index, frame, fps
            index += 1
    finally:
        cap.release()


def predict(
    model: str | Path | Predictor,
    source: str | Path,
    *,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int = 300,
    save_dir: str | Path | None = None,
    vid_stride: int = 1,
    device: str = "cpu",
) -> list[Prediction]:
    """Detect on an image, a video, or every image and video in a folder.

    Args:
        model: a ``.pt`` checkpoint, an ``.onnx`` file, or a :class:`Predictor`.
        conf, iou: thresholds; default the model's (``thresholds`` of the checkpoint or the
            ONNX metadata), else 0.25 / 0.45.
        save_dir: where annotated images / videos and ``predictions.json`` go; None: none.
        vid_stride: run every n-th frame of a video.
    Returns:
        one :class:`Prediction` per image and per processed video frame.
    """
    predictor = model if isinstance(model, Predictor) else Predictor(model, device)
    files = _sources(source)
    out = Path(save_dir) if save_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results: list[Prediction] = []
    for path in files:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            writer = None
            try:
                for index, frame, fps in _frames(path, vid_stride):
                    det = predictor(frame, conf, iou, max_det)
                    results.append(Prediction(str(path), index, det, predictor.class_names))
                    if out is not None:
                        if writer is None:
                            writer = _video_writer(out, path, fps / vid_stride, frame.shape)
                        writer.write(draw_detections(frame, det, predictor.class_names))
            finally:
                if writer is not None:
                    writer.release()
        else:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError(f"cannot read image {path}")
            if image.dtype != np.uint8:  # 16-bit camera frames: draw on an 8-bit copy
                image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
            det = predictor(image, conf, iou, max_det)
            results.append(Prediction(str(path), None, det, predictor.class_names))
            if out is not None:
                cv2.imwrite(
                    str(_unique(out / path.name)),
                    draw_detections(image, det, predictor.class_names),
                )
    if out is not None:
        payload = [
            {"source": r.source, "frame": r.frame, "detections": r.records()} for r in results
        ]
        (out / "predictions.json").write_text(json.dumps(payload, indent=1) + "\n")
    return results


def _unique(path: Path) -> Path:
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
        n += 1
    return candidate


def _video_writer(out: Path, source: Path, fps: float, shape) -> cv2.VideoWriter:
    suffix = ".avi" if source.suffix.lower() == ".avi" else ".mp4"
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if suffix == ".avi" else "mp4v"))
    h, w = shape[:2]
    path = _unique(out / f"{source.stem}{suffix}")
    writer = cv2.VideoWriter(str(path), fourcc, max(fps, 1.0), (w, h))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path}")
    return writer
