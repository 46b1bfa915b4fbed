"""Detection output: the one post-processing shared by trainer evaluation and the edge runtime.

A detection is a box in source-image pixels ``x1, y1, x2, y2`` (float, x right, y down,
origin at the top-left corner of the top-left pixel), a score in [0, 1], a class id and
the class name. Hot paths carry detections as a float32 array of shape (N, 6):
``x1, y1, x2, y2, score, class_id``; :class:`Detection` is the record form used in
manifests, events and JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Detection(BaseModel):
    """One detected object in source-image pixels."""

    model_config = ConfigDict(frozen=True)

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = Field(ge=0.0, le=1.0)
    class_id: int = Field(ge=0)
    class_name: str


# --------------------------------------------------------------------------------------
# Array form of detections and the pre-processing that produces the network input.
# numpy (+ OpenCV for the resize) only: this module runs on edge stations, which carry
# numpy, onnxruntime and opencv and never torch.
# --------------------------------------------------------------------------------------

DET_COLUMNS = ("x1", "y1", "x2", "y2", "score", "class_id")
"""Columns of the (N, 6) float32 detection array returned by :func:`postprocess`."""

DEFAULT_PAD_VALUE = 114


@dataclass(frozen=True)
class LetterboxInfo:
    """How a source image was letterboxed: ``input = source * scale + pad``.

    ``scale`` is the one (aspect-preserving) factor from source pixels to input pixels,
    ``pad_x``/``pad_y`` the left/top padding in input pixels, ``src_w``/``src_h`` the
    source image size. The resized content spans ``[pad_x, pad_x + round(src_w*scale)]``
    horizontally (likewise vertically), so mapping back is exact to within half an input
    pixel at the far edge (the rounding of the resized size).
    """

    scale: float
    pad_x: float
    pad_y: float
    src_w: int
    src_h: int

    @classmethod
    def identity(cls, width: int, height: int) -> LetterboxInfo:
        """The info of an image fed as is (no resize, no padding)."""
        return cls(1.0, 0.0, 0.0, int(width), int(height))

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Source-pixel ``x1,y1,x2,y2`` boxes (..., 4) -> letterboxed input pixels (float64)."""
        b = np.asarray(boxes, dtype=np.float64)  # (..., 4)
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        return b * self.scale + pad

    def to_source(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """Letterboxed-input ``x1,y1,x2,y2`` boxes (..., 4) -> source pixels (float64).

        With ``clip`` the result is clipped to ``[0, src_w] x [0, src_h]``.
        """
        b = np.asarray(boxes, dtype=np.float64)  # (..., 4)
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        out = (b - pad) / self.scale
        if clip:
            out[..., 0::2] = np.clip(out[..., 0::2], 0.0, float(self.src_w))
            out[..., 1::2] = np.clip(out[..., 1::2], 0.0, float(self.src_h))
        return out


def _hw(shape: int | Sequence[int]) -> tuple[int, int]:
    """``416`` or ``(H, W)`` -> ``(H, W)``."""
    if isinstance(shape, (int, np.integer)):
        return int(shape), int(shape)
    h, w = shape
    return int(h), int(w)


def letterbox(
    image: np.ndarray,
    new_shape: int | Sequence[int] = (416, 416),
    pad_value: float = DEFAULT_PAD_VALUE,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping the aspect ratio (cv2 INTER_LINEAR), then pad to ``new_shape`` centred.

    ``image`` is (H, W) or (H, W, C) of any dtype OpenCV resizes; ``new_shape`` is ``(H, W)``
    or one int for a square. Images are scaled up as well as down. The result has the
    dtype and channel layout of the input: (newH, newW) or (newH, newW, C). Padding is
    split evenly, the odd pixel going right/bottom.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(
            f"letterbox: expected a non-empty (H, W) or (H, W, C) image, got {img.shape}"
        )
    out_h, out_w = _hw(new_shape)
    src_h, src_w = img.shape[:2]
    scale = min(out_h / src_h, out_w / src_w)
    new_w = min(out_w, max(1, round(src_w * scale)))
    new_h = min(out_h, max(1, round(src_h * scale)))
    if (new_w, new_h) != (src_w, src_h):
        resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        if img.ndim == 3 and resized.ndim == 2:  # cv2 drops a trailing channel axis of 1
            resized = resized[:, :, None]
    else:
        resized = img
    pad_x = (out_w - new_w) // 2
    pad_y = (out_h - new_h) // 2
    padded = np.full((out_h, out_w) + img.shape[2:], pad_value, dtype=img.dtype)
    padded[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return padded, LetterboxInfo(float(scale), float(pad_x), float(pad_y), int(src_w), int(src_h))


def _to_channels(image: np.ndarray, channels: int, source_order: str) -> np.ndarray:
    """Convert an (H, W) / (H, W, 1|3|4) image to (H, W) gray (channels=1) or (H, W, 3) RGB."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image if channels == 1 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"preprocess: unsupported image shape {image.shape}")
    order = source_order.lower()
    if order not in ("bgr", "rgb"):
        raise ValueError(f"preprocess: source_order must be 'bgr' or 'rgb', not {source_order!r}")
    four = image.shape[2] == 4
    if channels == 1:
        code = {
            ("bgr", False): cv2.COLOR_BGR2GRAY,
            ("rgb", False): cv2.COLOR_RGB2GRAY,
            ("bgr", True): cv2.COLOR_BGRA2GRAY,
            ("rgb", True): cv2.COLOR_RGBA2GRAY,
        }[(order, four)]
        return cv2.cvtColor(image, code)
    if order == "rgb":
        return image[:, :, :3] if four else image
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if four else cv2.COLOR_BGR2RGB)


def preprocess(
    image: np.ndarray,
    new_shape: int | Sequence[int] = (416, 416),
    channels: int = 3,
    source_order: str = "bgr",
    pad_value: float = DEFAULT_PAD_VALUE,
) -> tuple[np.ndarray, LetterboxInfo]:
    """One camera frame -> the network input tensor and the letterbox info to undo it.

    ``image``: (H, W) gray or (H, W, 3|4) colour in ``source_order`` ("bgr", what OpenCV
    reads and cameras give; or "rgb"), uint8 (scaled by 1/255), uint16 (1/65535) or float
    already in [0, 1]. ``channels``: 1 (gray) or 3 (RGB order); gray <-> colour is converted
    as needed (gray -> 3 channels replicates it). Returns the float32 NCHW tensor
    ``(1, channels, newH, newW)`` in [0, 1], C-contiguous, and the :class:`LetterboxInfo`.
    Stack several results along axis 0 for a batch.
    """
    if channels not in (1, 3):
        raise ValueError(f"preprocess: channels must be 1 or 3, not {channels}")
    img = np.asarray(image)
    if channels == 1:  # to gray before resizing: one channel is cheaper to resize
        img = _to_channels(img, 1, source_order)
    boxed, info = letterbox(img, new_shape, pad_value)  # (h, w) or (h, w, C)
    if channels == 3:  # colour conversion after resizing (usually the smaller image)
        boxed = _to_channels(boxed, 3, source_order)  # (h, w, 3) RGB; the pad value is grey
    if boxed.dtype == np.uint8:
        factor: float | None = 1.0 / 255.0
    elif boxed.dtype == np.uint16:
        factor = 1.0 / 65535.0
    elif np.issubdtype(boxed.dtype, np.floating):
        factor = None
    else:
        raise ValueError(f"preprocess: unsupported image dtype {boxed.dtype}")
    chw = boxed[None] if boxed.ndim == 2 else boxed.transpose(2, 0, 1)  # (C, h, w)
    tensor = np.ascontiguousarray(chw[None], dtype=np.float32)  # (1, C, h, w)
    if factor is not None:
        tensor *= np.float32(factor)
    return tensor, info


# --------------------------------------------------------------------------------------
# Decoding the raw head maps.
# --------------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings (tanh form), dtype preserved for floats."""
    x = np.asarray(x)
    half = x.dtype.type(0.5) if np.issubdtype(x.dtype, np.floating) else 0.5
    return half * (np.tanh(half * x) + 1)


def _anchor_array(anchors: Sequence[float] | np.ndarray) -> np.ndarray:
    """Anchors as ``[w0, h0, w1, h1, ...]`` or (K, 2) -> (K, 2) float32."""
    a = np.asarray(anchors, dtype=np.float32).reshape(-1, 2)  # (K, 2)
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"anchors must be positive and finite, got {a.tolist()}")
    return a


def decode(
    raw_maps: Sequence[np.ndarray],
    anchors: Sequence[float] | np.ndarray,
    strides: Sequence[int] = (8, 16, 32),
    num_classes: int = 1,
) -> list[np.ndarray]:
    """Raw head logits -> per-image candidate boxes in letterboxed input pixels.

    ``raw_maps``: one array per stride (usually 8, 16, 32), each (B, A*(5+C), H, W) with the
    channels of anchor ``a`` at ``[a*(5+C), (a+1)*(5+C))`` laid out as
    ``tx, ty, tw, th, obj, cls_1..cls_C`` (raw logits): the model's output contract.
    ``anchors``: (S*A, 2) or flat, in input pixels, small to large; scale ``i`` uses
    ``anchors[A*i : A*(i+1)]`` (A = 3 for YOLOv4).

    Decoding (YOLOv4 scale_x_y=2 / YOLOv5 form)::

        xy = (sigmoid(txy) * 2 - 0.5 + grid_xy) * stride
        wh = (sigmoid(twh) * 2) ** 2 * anchor_wh
        score_c = sigmoid(obj) * sigmoid(cls_c)

    Returns a list of B float32 arrays (N_total, 5+C): ``x1, y1, x2, y2, obj, score_1..C``
    with ``obj = sigmoid(obj)``, N_total = sum over scales of A*H*W, rows in the order
    scale, anchor, y, x.
    """
    maps = [np.asarray(m) for m in raw_maps]
    if not maps:
        raise ValueError("decode: no raw maps")
    if len(strides) != len(maps):
        raise ValueError(f"decode: {len(maps)} maps but {len(strides)} strides")
    anc = _anchor_array(anchors)  # (S*A, 2)
    if len(anc) % len(maps):
        raise ValueError(f"decode: {len(anc)} anchors do not split over {len(maps)} scales")
    na = len(anc) // len(maps)
    no = 5 + int(num_classes)
    batch = maps[0].shape[0]
    per_scale: list[np.ndarray] = []
    for i, (m, stride) in enumerate(zip(maps, strides, strict=True)):
        if m.ndim != 4 or m.shape[0] != batch or m.shape[1] != na * no:
            raise ValueError(
                f"decode: map {i} has shape {m.shape}, expected ({batch}, {na * no}, H, W)"
            )
        _, _, h, w = m.shape
        p = sigmoid(m.astype(np.float32, copy=False))  # (B, A*(5+C), H, W)
        p = p.reshape(batch, na, no, h, w).transpose(0, 1, 3, 4, 2)  # (B, A, H, W, 5+C)
        gy, gx = np.meshgrid(
            np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
        )  # (H, W) each
        s = np.float32(stride)
        cx = (p[..., 0] * 2 - np.float32(0.5) + gx) * s  # (B, A, H, W)
        cy = (p[..., 1] * 2 - np.float32(0.5) + gy) * s
        anc_i = anc[na * i : na * (i + 1)]  # (A, 2)
        bw = (p[..., 2] * 2) ** 2 * anc_i[:, 0].reshape(1, na, 1, 1)  # (B, A, H, W)
        bh = (p[..., 3] * 2) ** 2 * anc_i[:, 1].reshape(1, na, 1, 1)
        out = np.empty((batch, na, h, w, no), dtype=np.float32)  # (B, A, H, W, 5+C)
        out[..., 0] = cx - bw / 2
        out[..., 1] = cy - bh / 2
        out[..., 2] = cx + bw / 2
        out[..., 3] = cy + bh / 2
        out[..., 4] = p[..., 4]
        out[..., 5:] = p[..., 5:] * p[..., 4:5]
        per_scale.append(out.reshape(batch, na * h * w, no))  # (B, A*H*W, 5+C)
    allrows = np.concatenate(per_scale, axis=1)  # (B, N_total, 5+C)
    return [allrows[b] for b in range(batch)]


# --------------------------------------------------------------------------------------
# IoU and NMS: the one implementation, shared by evaluation and the edge runtime.
# --------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``x1,y1,x2,y2`` boxes: (N, 4) x (M, 4) -> (N, M) float64.

    Computed in float64 as ``inter / (area_a + area_b - inter)``; a pair whose union is 0
    (two degenerate boxes) has IoU 0. Boxes with x2 < x1 count as empty (area 0).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)  # (M, 4)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)  # (N,)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)  # (M,)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter  # (N, M)
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _order(scores: np.ndarray) -> np.ndarray:
    """Indices by score descending, ties by index ascending (stable)."""
    return np.argsort(-scores, kind="stable")


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray | None = None,
    iou_threshold: float = 0.45,
    max_keep: int | None = None,
) -> np.ndarray:
    """Greedy per-class non-maximum suppression.

    ``boxes`` (N, 4) ``x1,y1,x2,y2``, ``scores`` (N,), ``class_ids`` (N,) (None: one class).
    Boxes are visited by score descending (ties: lower index first); a box is kept unless
    its IoU (:func:`box_iou`) with an already kept box of the SAME class is strictly
    greater than ``iou_threshold``. Boxes of different classes never suppress each other.
    Returns the kept indices (int64), ordered by score descending, ties by index; with
    ``max_keep`` only the first ``max_keep`` of them (the loop stops there, which bounds the
    cost of low-threshold evaluation). The inner IoU is vectorised; the outer loop runs once
    per kept box.
    """
    bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)  # (N,)
    if len(bx) != len(sc):
        raise ValueError(f"nms: {len(bx)} boxes but {len(sc)} scores")
    n = len(sc)
    if class_ids is None:
        cls = np.zeros(n, dtype=np.int64)
    else:
        cls = np.asarray(class_ids).reshape(-1).astype(np.int64)
        if len(cls) != n:
            raise ValueError(f"nms: {n} boxes but {len(cls)} class ids")
    limit = n if max_keep is None else max(0, int(max_keep))
    order = _order(sc)  # (N,) visiting order
    bx_o, cls_o = bx[order], cls[order]  # (N, 4), (N,) in visiting order
    rest = np.arange(n)  # positions in visiting order still alive
    keep: list[int] = []
    while rest.size and len(keep) < limit:
        i, rest = rest[0], rest[1:]
        keep.append(int(order[i]))
        same = np.nonzero(cls_o[rest] == cls_o[i])[0]  # (n_same,) positions into rest
        if same.size:
            iou = box_iou(bx_o[i : i + 1], bx_o[rest[same]])[0]  # (n_same,)
            alive = np.ones(rest.size, dtype=bool)
            alive[same[iou > iou_threshold]] = False
            rest = rest[alive]
    return np.asarray(keep, dtype=np.int64)


def _infos(info: LetterboxInfo | Sequence[LetterboxInfo], batch: int) -> list[LetterboxInfo]:
    if isinstance(info, LetterboxInfo):
        return [info] * batch
    infos = list(info)
    if len(infos) != batch:
        raise ValueError(f"postprocess: {batch} images but {len(infos)} letterbox infos")
    return infos


def postprocess(
    raw_maps: Sequence[np.ndarray],
    anchors: Sequence[float] | np.ndarray,
    strides: Sequence[int],
    class_names: Sequence[str],
    info: LetterboxInfo | Sequence[LetterboxInfo],
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 300,
    *,
    multi_label: bool = False,
    max_candidates: int = 30_000,
) -> list[np.ndarray]:
    """Raw head maps -> final detections per image, in SOURCE image pixels.

    Steps, per image: :func:`decode`; keep candidates with ``score > score_threshold``
    (``score = sigmoid(obj) * sigmoid(cls)``; one label per box, its best class, unless
    ``multi_label`` where every class above the threshold gives a candidate, as mAP
    evaluation often does); at most ``max_candidates`` best go on; undo the letterbox and
    clip to the source image (``info``: one :class:`LetterboxInfo` for all images or one
    per image); drop boxes left with no area (they lay in the padding); per-class
    :func:`nms`; the best ``max_detections``.

    Returns a list of B float32 arrays (N, 6): ``x1, y1, x2, y2, score, class_id``, sorted
    by score descending. An image without detections gives a (0, 6) array.
    """
    num_classes = len(class_names)
    decoded = decode(raw_maps, anchors, strides, num_classes)  # B x (N_total, 5+C)
    infos = _infos(info, len(decoded))
    results: list[np.ndarray] = []
    for rows, inf in zip(decoded, infos, strict=True):
        cls_scores = rows[:, 5:]  # (N_total, C)
        if multi_label:
            r, c = np.nonzero(cls_scores > score_threshold)  # (K,), (K,)
            sc = cls_scores[r, c]
        else:
            c = cls_scores.argmax(axis=1) if num_classes else np.zeros(len(rows), np.int64)
            sc = cls_scores[np.arange(len(rows)), c] if num_classes else np.zeros(len(rows))
            r = np.nonzero(sc > score_threshold)[0]  # (K,)
            c, sc = c[r], sc[r]
        if sc.size > max_candidates:
            top = _order(sc)[:max_candidates]
            r, c, sc = r[top], c[top], sc[top]
        boxes = inf.to_source(rows[r, :4], clip=True)  # (K, 4) float64, source pixels
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, c, sc = boxes[ok], c[ok], sc[ok]
        keep = nms(boxes, sc, c, iou_threshold, max_keep=max_detections)
        det = np.empty((keep.size, 6), dtype=np.float32)  # (N, 6)
        det[:, :4] = boxes[keep]
        det[:, 4] = sc[keep]
        det[:, 5] = c[keep]
        results.append(det)
    return results


def to_records(array: np.ndarray, class_names: Sequence[str]) -> list[Detection]:
    """(N, 6) ``x1, y1, x2, y2, score, class_id`` array -> :class:`Detection` records."""
    arr = np.asarray(array, dtype=np.float64).reshape(-1, 6)
    out: list[Detection] = []
    for x1, y1, x2, y2, score, cid in arr:
        k = int(np.rint(cid))
        if not 0 <= k < len(class_names):
            raise ValueError(f"to_records: class id {k} outside {len(class_names)} class names")
        out.append(
            Detection(
                x1=float(x1),
                y1=float(y1),
                x2=float(x2),
                y2=float(y2),
                score=min(max(float(score), 0.0), 1.0),
                class_id=k,
                class_name=class_names[k],
            )
        )
    return out


def to_array(records: Sequence[Detection]) -> np.ndarray:
    """:class:`Detection` records -> (N, 6) float32 ``x1, y1, x2, y2, score, class_id``."""
    arr = np.array(
        [[d.x1, d.y1, d.x2, d.y2, d.score, d.class_id] for d in records], dtype=np.float32
    )
    return arr.reshape(-1, 6)
