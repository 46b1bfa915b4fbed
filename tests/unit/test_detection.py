"""slimspect.detection: letterbox, decode, NMS, postprocess (numpy only, the edge path)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimspect.detection import (
    Detection,
    LetterboxInfo,
    box_iou,
    decode,
    letterbox,
    nms,
    postprocess,
    preprocess,
    to_array,
    to_records,
)

HAVE_TORCH = importlib.util.find_spec("torch") is not None  # tests only, as a cross-check
STRIDES = (8, 16, 32)
ANCHORS = np.array(
    [[4, 5], [8, 10], [12, 8], [16, 30], [30, 20], [28, 50], [50, 40], [70, 90], [120, 110]],
    dtype=np.float32,
)  # (9, 2) input pixels, small to large


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def empty_maps(batch: int, size: int, num_classes: int, fill: float = -20.0) -> list[np.ndarray]:
    """Raw maps (B, 3*(5+C), size/s, size/s) per stride, every logit = ``fill``."""
    return [
        np.full((batch, 3 * (5 + num_classes), size // s, size // s), fill, dtype=np.float32)
        for s in STRIDES
    ]


def put(maps, scale, b, a, gy, gx, num_classes, tx=0.0, ty=0.0, tw=0.0, th=0.0, obj=20.0, cls=0):
    """Write one cell's logits: anchor ``a`` of scale ``scale`` at (gy, gx), class ``cls``."""
    no = 5 + num_classes
    m = maps[scale]
    m[b, a * no : (a + 1) * no, gy, gx] = -20.0
    m[b, a * no + 0, gy, gx] = tx
    m[b, a * no + 1, gy, gx] = ty
    m[b, a * no + 2, gy, gx] = tw
    m[b, a * no + 3, gy, gx] = th
    m[b, a * no + 4, gy, gx] = obj
    m[b, a * no + 5 + cls, gy, gx] = 20.0


# ----------------------------------------------------------------------------- letterbox


@pytest.mark.parametrize("channels", [0, 1, 3])
@pytest.mark.parametrize(("src_hw", "dst_hw"), [((100, 200), (128, 128)), ((300, 120), (96, 160))])
def test_letterbox_round_trip_of_a_drawn_box(channels, src_hw, dst_hw):
    h, w = src_hw
    shape = (h, w) if channels == 0 else (h, w, channels)
    img = np.zeros(shape, dtype=np.uint8)
    box = np.array([0.3 * w, 0.25 * h, 0.7 * w, 0.8 * h]).round()  # x1, y1, x2, y2
    x1, y1, x2, y2 = box.astype(int)
    img[y1:y2, x1:x2] = 255
    out, info = letterbox(img, dst_hw)
    assert out.shape[:2] == dst_hw and out.shape[2:] == img.shape[2:] and out.dtype == np.uint8
    assert info.src_w == w and info.src_h == h
    assert info.scale == pytest.approx(min(dst_hw[0] / h, dst_hw[1] / w))
    # the drawn rectangle sits where info.to_input says (within a pixel: linear resize)
    plane = out if out.ndim == 2 else out[..., 0]
    ys, xs = np.nonzero(plane > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
    expected = info.to_input(box)
    np.testing.assert_allclose(found, expected, atol=1.0)
    np.testing.assert_allclose(info.to_source(expected), box, atol=1e-9)
    # padding is the pad value, centred
    content_w, content_h = round(w * info.scale), round(h * info.scale)
    assert info.pad_x == (dst_hw[1] - content_w) // 2
    assert info.pad_y == (dst_hw[0] - content_h) // 2
    if info.pad_y >= 1:
        assert np.all(plane[0] == 114) and np.all(plane[-1] == 114)
    if info.pad_x >= 1:
        assert np.all(plane[:, 0] == 114) and np.all(plane[:, -1] == 114)


def test_letterbox_same_size_is_identity_and_upscales():
    img = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    out, info = letterbox(img, 64)
    assert np.array_equal(out, img) and info == LetterboxInfo.identity(64, 64)
    out, info = letterbox(np.zeros((20, 40, 3), np.uint8), (100, 100))
    assert info.scale == pytest.approx(2.5) and (info.pad_x, info.pad_y) == (0.0, 25.0)


def test_to_source_clips_to_the_image():
    info = LetterboxInfo(0.5, 10.0, 0.0, 100, 60)
    out = info.to_source(np.array([[0.0, -5.0, 200.0, 20.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.0, 100.0, 40.0]])


def test_preprocess_layout_channels_and_colour_order():
    bgr = np.zeros((50, 100, 3), dtype=np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV order
    t, info = preprocess(bgr, (64, 64), channels=3)
    assert t.shape == (1, 3, 64, 64) and t.dtype == np.float32 and t.flags.c_contiguous
    assert 0.0 <= t.min() and t.max() <= 1.0
    centre = t[0, :, 32, 32]
    np.testing.assert_allclose(centre, [0.0, 0.0, 1.0])  # RGB order: blue is last
    np.testing.assert_allclose(t[0, :, 0, 0], [114 / 255] * 3, rtol=1e-6)  # padding
    assert info.pad_y == 16.0
    t_rgb, _ = preprocess(bgr[..., ::-1].copy(), (64, 64), channels=3, source_order="rgb")
    np.testing.assert_array_equal(t_rgb, t)
    g, _ = preprocess(bgr, (64, 64), channels=1)
    assert g.shape == (1, 1, 64, 64)
    assert g[0, 0, 32, 32] == pytest.approx(29 / 255, abs=1 / 255)  # BT.601 blue weight
    gray = np.full((30, 30), 200, np.uint8)
    t3, _ = preprocess(gray, 32, channels=3)
    assert t3.shape == (1, 3, 32, 32)
    np.testing.assert_allclose(t3[0, :, 16, 16], [200 / 255] * 3, rtol=1e-6)
    t1, _ = preprocess(gray[..., None], 32, channels=1)
    np.testing.assert_allclose(t1[0, 0, 16, 16], 200 / 255, rtol=1e-6)


# -------------------------------------------------------------------------------- decode


def test_decode_hand_built_map_puts_the_box_exactly():
    nc = 2
    maps = empty_maps(2, 64, nc)
    # image 0: scale 0 (stride 8), anchor 1, cell (gy=2, gx=3), centre offsets 0.5 -> +1 cell
    put(maps, 0, 0, 1, 2, 3, nc, tx=logit(0.75), ty=0.0, tw=logit(0.75), th=0.0, cls=1)
    # image 1: scale 2 (stride 32), anchor 2, cell (1, 0), plain logits
    put(maps, 2, 1, 2, 1, 0, nc, cls=0)
    rows = decode(maps, ANCHORS, STRIDES, nc)
    assert len(rows) == 2
    n_total = 3 * (8 * 8 + 4 * 4 + 2 * 2)
    assert all(r.shape == (n_total, 5 + nc) and r.dtype == np.float32 for r in rows)
    # row index: scale-major, then anchor, y, x
    i0 = 1 * 8 * 8 + 2 * 8 + 3
    r = rows[0][i0]
    cx, cy = (0.75 * 2 - 0.5 + 3) * 8, (0.5 * 2 - 0.5 + 2) * 8  # 32, 20
    bw, bh = (0.75 * 2) ** 2 * 8, (0.5 * 2) ** 2 * 10  # anchor 1 = (8, 10)
    np.testing.assert_allclose(
        r[:4], [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], atol=1e-4
    )
    assert r[4] == pytest.approx(1.0, abs=1e-6) and r[6] == pytest.approx(1.0, abs=1e-6)
    assert r[5] < 1e-6
    assert np.argmax(rows[0][:, 4]) == i0 and np.sort(rows[0][:, 4])[-2] < 1e-6
    i1 = 3 * 8 * 8 + 3 * 4 * 4 + 2 * 2 * 2 + 1 * 2 + 0
    cx, cy, (aw, ah) = 0.5 * 32, 1.5 * 32, ANCHORS[8]
    np.testing.assert_allclose(
        rows[1][i1, :4], [cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2], atol=1e-4
    )
    assert np.argmax(rows[1][:, 5]) == i1


def test_decode_matches_a_torch_reference():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    nc, b = 3, 2
    maps = [
        rng.normal(0, 2, (b, 3 * (5 + nc), 32 // s, 32 // s)).astype(np.float32) for s in STRIDES
    ]
    ours = decode(maps, ANCHORS, STRIDES, nc)
    refs = []
    for i, (m, s) in enumerate(zip(maps, STRIDES, strict=True)):
        t = torch.from_numpy(m)
        _, _, h, w = t.shape
        p = t.view(b, 3, 5 + nc, h, w).permute(0, 1, 3, 4, 2).sigmoid()
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        grid = torch.stack([gx, gy], -1).float()
        xy = (p[..., :2] * 2 - 0.5 + grid) * s
        anc = torch.from_numpy(ANCHORS[3 * i : 3 * i + 3]).view(1, 3, 1, 1, 2)
        wh = (p[..., 2:4] * 2) ** 2 * anc
        box = torch.cat([xy - wh / 2, xy + wh / 2], -1)
        refs.append(torch.cat([box, p[..., 4:5], p[..., 5:] * p[..., 4:5]], -1).view(b, -1, 5 + nc))
    ref = torch.cat(refs, 1).numpy()
    for k in range(b):
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-4)


def test_decode_rejects_a_wrong_channel_count():
    maps = empty_maps(1, 32, 2)
    with pytest.raises(ValueError, match="expected"):
        decode(maps, ANCHORS, STRIDES, num_classes=3)


# ----------------------------------------------------------------------------------- IoU


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], dtype=float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], dtype=float)
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 50 / 150, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 4)


# ----------------------------------------------------------------------------------- NMS


def iou_py(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    area_a = max(a[2] - a[0], 0.0) * max(a[3] - a[1], 0.0)
    area_b = max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def nms_reference(boxes, scores, classes, thr) -> list[int]:
    """The textbook loop: visit by score (ties: index), keep unless a kept same-class box
    overlaps it by IoU > thr."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(classes[j] != classes[i] or iou_py(boxes[i], boxes[j]) <= thr for j in kept):
            kept.append(i)
    return kept


def nms_torch_reference(boxes, scores, classes, thr):
    """Greedy NMS with plain torch ops (no torchvision): class-offset trick, float64."""
    import torch

    b = torch.as_tensor(boxes, dtype=torch.float64)
    s = torch.as_tensor(scores, dtype=torch.float64)
    c = torch.as_tensor(classes, dtype=torch.float64)
    if len(b) == 0:
        return []
    # offsets separate the classes; here coordinates are small integers, so exact
    b = b + (c * (b.max() - b.min() + 1))[:, None]
    order = sorted(range(len(s)), key=lambda i: (-float(s[i]), i))
    idx = torch.tensor(order, dtype=torch.long)
    keep = []
    while idx.numel():
        i = int(idx[0])
        keep.append(i)
        rest = idx[1:]
        lt = torch.maximum(b[i, :2], b[rest, :2])
        rb = torch.minimum(b[i, 2:], b[rest, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)
        union = area(b[i]) + area(b[rest]) - inter
        iou = torch.where(union > 0, inter / union, torch.zeros_like(inter))
        idx = rest[iou <= thr]
    return keep


@st.composite
def box_sets(draw):
    n = draw(st.integers(0, 40))
    coords = st.integers(0, 60)
    boxes = []
    for _ in range(n):
        x1, y1 = draw(coords), draw(coords)
        w, h = draw(st.integers(0, 30)), draw(st.integers(0, 30))
        boxes.append([x1, y1, x1 + w, y1 + h])
    scores = draw(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]), min_size=n, max_size=n))
    classes = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    thr = draw(st.sampled_from([0.0, 0.3, 0.45, 0.5, 0.7, 1.0]))
    return (
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(scores),
        np.array(classes),
        thr,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(box_sets())
def test_nms_equals_the_reference_implementations(data):
    boxes, scores, classes, thr = data
    got = nms(boxes, scores, classes, thr).tolist()
    ref = nms_reference(boxes.astype(float).tolist(), scores.tolist(), classes.tolist(), thr)
    assert got == ref  # same set AND same order (score desc, index asc)
    half = len(got) // 2  # stopping early gives the prefix
    assert nms(boxes, scores, classes, thr, max_keep=half).tolist() == got[:half]
    if HAVE_TORCH:
        assert got == nms_torch_reference(boxes, scores, classes, thr)


def test_nms_is_per_class_and_orders_ties_by_index():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.8, 0.8])
    # same box, different classes: both kept; box 1 is suppressed by box 0 (same class)
    np.testing.assert_array_equal(nms(boxes, scores, np.array([0, 0, 1, 0]), 0.5), [0, 2, 3])
    # one class: 1 and 2 both suppressed by 0
    np.testing.assert_array_equal(nms(boxes, scores, None, 0.5), [0, 3])
    assert nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).shape == (0,)


# --------------------------------------------------------------------------- postprocess


def test_postprocess_of_empty_maps_gives_empty_arrays():
    names = ["scratch", "pit"]
    out = postprocess(empty_maps(3, 64, 2), ANCHORS, STRIDES, names, LetterboxInfo.identity(64, 64))
    assert len(out) == 3 and all(o.shape == (0, 6) and o.dtype == np.float32 for o in out)
    no_cells = [np.zeros((1, 21, 0, 0), np.float32) for _ in STRIDES]
    out = postprocess(no_cells, ANCHORS, STRIDES, names, LetterboxInfo.identity(64, 64))
    assert len(out) == 1 and out[0].shape == (0, 6)
    assert to_records(out[0], names) == []


def test_postprocess_undoes_the_letterbox_clips_and_suppresses():
    names = ["scratch", "pit", "crack"]
    nc = len(names)
    info = LetterboxInfo(scale=0.5, pad_x=0.0, pad_y=16.0, src_w=128, src_h=64)  # 64x64 input
    maps = empty_maps(1, 64, nc)
    # A: stride 8, anchor 1 (8, 10), cell (4, 3): input box [24, 31, 32, 41], score 0.9
    put(maps, 0, 0, 1, 4, 3, nc, obj=logit(0.9), cls=2)
    # B: same cell, anchor 2 (12, 8) stretched to the same (8, 10) box, score 0.6, same
    # class: suppressed by A
    sw, sh = math.sqrt(8 / 12) / 2, math.sqrt(10 / 8) / 2
    put(maps, 0, 0, 2, 4, 3, nc, tw=logit(sw), th=logit(sh), obj=logit(0.6), cls=2)
    # C: same cell, anchor 0 (4, 5) doubled to the same box, other class, score 0.5: kept
    r2 = math.sqrt(2) / 2
    put(maps, 0, 0, 0, 4, 3, nc, tw=logit(r2), th=logit(r2), obj=logit(0.5), cls=0)
    # D: stride 16, anchor 5 (28, 50), cell (2, 0): input box [-6, 15, 22, 65], overflowing
    put(maps, 1, 0, 2, 2, 0, nc, cls=1)
    out = postprocess(maps, ANCHORS, STRIDES, names, info, score_threshold=0.25)
    assert len(out) == 1
    det = out[0]
    assert det.shape == (3, 6)
    assert np.all(np.diff(det[:, 4]) <= 0)  # score descending
    by_class = {int(c): row for row, c in zip(det, det[:, 5], strict=True)}
    assert set(by_class) == {0, 1, 2}
    np.testing.assert_allclose(by_class[2][:4], [48, 30, 64, 50], atol=1e-3)
    assert by_class[2][4] == pytest.approx(0.9, abs=1e-4)
    np.testing.assert_allclose(by_class[0][:4], [48, 30, 64, 50], atol=1e-3)
    assert by_class[0][4] == pytest.approx(0.5, abs=1e-4)
    # D in source pixels: [-12, -2, 44, 98] clipped to the 128 x 64 image
    np.testing.assert_allclose(by_class[1][:4], [0, 0, 44, 64], atol=1e-3)
    recs = to_records(det, names)
    assert [r.class_name for r in recs] == [names[int(c)] for c in det[:, 5]]
    assert all(isinstance(r, Detection) and 0 <= r.score <= 1 for r in recs)
    np.testing.assert_allclose(to_array(recs), det, atol=1e-6)


def test_postprocess_threshold_and_max_detections():
    names = ["a"]
    maps = empty_maps(1, 64, 1)
    for gx in range(8):  # 8 disjoint boxes in one row, scores rising with x
        put(maps, 0, 0, 0, 3, gx, 1, obj=logit(0.2 + 0.1 * gx))
    info = LetterboxInfo.identity(64, 64)
    out = postprocess(maps, ANCHORS, STRIDES, names, info, score_threshold=0.45)[0]
    assert len(out) == 5 and out[:, 4].min() > 0.45  # 0.5 .. 0.9
    out = postprocess(maps, ANCHORS, STRIDES, names, info, score_threshold=0.0, max_detections=3)[0]
    np.testing.assert_allclose(out[:, 4], [0.9, 0.8, 0.7], atol=1e-4)


def test_postprocess_multi_label_keeps_each_class_above_threshold():
    maps = empty_maps(1, 32, 2)
    put(maps, 0, 0, 0, 1, 1, 2, cls=0)
    maps[0][0, 5 + 1, 1, 1] = 20.0  # anchor 0, class 1 as well
    info = LetterboxInfo.identity(32, 32)
    single = postprocess(maps, ANCHORS, STRIDES, ["a", "b"], info)[0]
    multi = postprocess(maps, ANCHORS, STRIDES, ["a", "b"], info, multi_label=True)[0]
    assert len(single) == 1 and sorted(multi[:, 5].tolist()) == [0.0, 1.0]


# ----------------------------------------------------------------------------- edge rule


def test_edge_import_rule_no_torch():
    code = "import slimspect.detection, sys; assert 'torch' not in sys.modules, 'torch imported'"
    res = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
