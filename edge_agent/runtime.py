"""One loaded model: an ONNX Runtime session, the manifest's pre-processing, the shared
post-processing, and JPEG crops of what it finds.

The graph ends at the raw head maps; decoding and NMS are
:func:`slimspect.detection.postprocess`, the one post-processing the trainer evaluates
with, so a station reports what evaluation measured. The anchors, strides and output
names come from the model's own metadata (:mod:`slimspect.onnx_meta`); the input size,
channels, padding, normalisation, class names and thresholds from the signed manifest,
and the two must agree or the model is refused.

A :class:`Detector` is immutable once built and holds one session, so a model swap is
the replacement of one reference between two frames (see model_slot.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime as ort

from edge_agent.errors import ModelLoadError
from edge_agent.settings import CropSettings, RuntimeSettings
from slimspect.detection import postprocess, preprocess
from slimspect.errors import OnnxMetadataError
from slimspect.manifest import InputSpec, ModelManifest
from slimspect.onnx_meta import DetectorMetadata
from slimspect.store import FetchedModel

_IDENTITY_SCALE = 1.0 / 255.0


@dataclass(frozen=True)
class Inference:
    """What one frame gave: (N, 6) ``x1, y1, x2, y2, score, class_id`` in frame pixels."""

    detections: np.ndarray
    inference_ms: float
    width: int
    height: int


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


class Detector:
    """A verified model loaded into ONNX Runtime.

    Raises :class:`ModelLoadError` when the file does not load, the providers are not
    available, or the manifest and the model's metadata disagree.
    """

    def __init__(self, fetched: FetchedModel, settings: RuntimeSettings) -> None:
        self.fetched = fetched
        self.manifest: ModelManifest = fetched.manifest
        self.settings = settings
        where = f"{self.manifest.key} ({fetched.model_path})"
        missing = [p for p in settings.providers if p not in available_providers()]
        if missing:
            raise ModelLoadError(
                f"{where}: execution providers {missing} are not available here "
                f"(available: {available_providers()})"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(fetched.model_path), options, providers=list(settings.providers)
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{where} does not load in ONNX Runtime: {exc}") from exc
        try:
            self.meta = DetectorMetadata.from_props(
                self.session.get_modelmeta().custom_metadata_map, source=where
            )
        except OnnxMetadataError as exc:
            raise ModelLoadError(str(exc)) from None
        self._check_agreement(where)
        self._input_name = self.session.get_inputs()[0].name

    def _check_agreement(self, where: str) -> None:
        spec: InputSpec = self.manifest.input
        meta = self.meta
        problems = []
        if not spec.letterbox:
            problems.append("manifest input.letterbox is false; the runtime letterboxes only")
        if (spec.width, spec.height, spec.channels) != (
            meta.input_width,
            meta.input_height,
            meta.channels,
        ):
            problems.append(
                f"manifest input {spec.width}x{spec.height}x{spec.channels} but the model "
                f"takes {meta.input_width}x{meta.input_height}x{meta.channels}"
            )
        if tuple(self.manifest.class_names) != meta.class_names:
            problems.append(
                f"manifest classes {self.manifest.class_names} but the model has "
                f"{list(meta.class_names)}"
            )
        outputs = {o.name for o in self.session.get_outputs()}
        if not set(meta.outputs) <= outputs:
            problems.append(f"outputs {list(meta.outputs)} not all in the graph ({outputs})")
        if problems:
            raise ModelLoadError(f"{where}: " + "; ".join(problems))

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    @property
    def score_threshold(self) -> float:
        return self.manifest.thresholds.score

    def tensor(self, image: np.ndarray):
        """A camera frame (BGR or gray) -> the network input and its letterbox info."""
        spec = self.manifest.input
        x, info = preprocess(
            image,
            (spec.height, spec.width),
            channels=spec.channels,
            source_order="bgr",
            pad_value=spec.pad_value,
        )
        norm = spec.normalize
        if (norm.scale, norm.mean, norm.std) != (_IDENTITY_SCALE, (0.0,), (1.0,)):
            # preprocess gives pixel/255; the manifest's normalisation is of 8-bit pixels.
            mean = np.asarray(norm.mean, dtype=np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(norm.std, dtype=np.float32).reshape(1, -1, 1, 1)
            x = (x * np.float32(255.0 * norm.scale) - mean) / std
        return np.ascontiguousarray(x, dtype=np.float32), info

    def detect(self, image: np.ndarray) -> Inference:
        """Detections of one frame, in its pixels, after NMS at the manifest's thresholds."""
        height, width = image.shape[:2]
        x, info = self.tensor(image)
        start = time.perf_counter()
        maps = self.session.run(list(self.meta.outputs), {self._input_name: x})
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        (det,) = postprocess(
            maps,
            self.meta.anchors,
            self.meta.strides,
            self.manifest.class_names,
            info,
            score_threshold=self.manifest.thresholds.score,
            iou_threshold=self.manifest.thresholds.iou,
            max_detections=self.settings.max_detections,
        )
        return Inference(det, elapsed_ms, int(width), int(height))


def jpeg_crops(image: np.ndarray, detections: np.ndarray, settings: CropSettings) -> list[bytes]:
    """One JPEG per detection (best first, as postprocess sorts them); b"" where none is sent.

    Only the first ``max_per_event`` get a crop. A crop is the box plus ``margin`` of its
    size on every side, scaled down to ``max_side``; one that stays over ``max_bytes`` is
    encoded again at lower quality, and left out if it still does not fit.
    """
    out: list[bytes] = []
    if not settings.enabled:
        return [b""] * len(detections)
    h, w = image.shape[:2]
    for i, (x1, y1, x2, y2, *_rest) in enumerate(np.asarray(detections).tolist()):
        if i >= settings.max_per_event:
            out.append(b"")
            continue
        mx, my = (x2 - x1) * settings.margin, (y2 - y1) * settings.margin
        left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
        right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
        if right <= left or bottom <= top:
            out.append(b"")
            continue
        crop = image[top:bottom, left:right]
        longest = max(crop.shape[:2])
        if longest > settings.max_side:
            factor = settings.max_side / longest
            size = (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor)))
            crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        out.append(_encode(crop, settings))
    return out


def _encode(crop: np.ndarray, settings: CropSettings) -> bytes:
    for quality in (settings.jpeg_quality, 50, 25):
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and len(buf) <= settings.max_bytes:
            return buf.tobytes()
    return b""
