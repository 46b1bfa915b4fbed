"""The YOLO loss: CIoU against a scalar reference, assignment cells, gradients, and an
overfit run whose decoded output recovers the targets (assignment and decode agree)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.loss import YoloLoss, bbox_ciou, build_targets

STRIDES = (8, 16, 32)
# 9 (w, h) in input pixels, small to large; scale i uses ANCHORS[3i:3i+3]
ANCHORS = [(6, 8), (10, 12), (14, 10), (16, 20), (22, 18), (20, 30), (30, 28), (40, 36), (52, 50)]


def ciou_reference(b1: tuple[float, ...], b2: tuple[float, ...]) -> float:
    """CIoU of two cx, cy, w, h boxes, written straight from the paper."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = b1, b2
    ix = max(0.0, min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2))
    iy = max(0.0, min(y1 + h1 / 2, y2 + h2 / 2) - max(y1 - h1 / 2, y2 - h2 / 2))
    inter = ix * iy
    iou = inter / (w1 * h1 + w2 * h2 - inter)
    cw = max(x1 + w1 / 2, x2 + w2 / 2) - min(x1 - w1 / 2, x2 - w2 / 2)
    ch = max(y1 + h1 / 2, y2 + h2 / 2) - min(y1 - h1 / 2, y2 - h2 / 2)
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (1 - iou + v) if v > 0 else 0.0
    return iou - rho2 / (cw**2 + ch**2) - alpha * v


def iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> float:
    ix = (torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])).clamp(min=0)
    iy = (torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])).clamp(min=0)
    inter = ix * iy
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return float(inter / (area_a + area_b - inter))


def decode(preds: list[torch.Tensor], num_classes: int) -> torch.Tensor:
    """The contract's decode -> (B, N, 6) x1, y1, x2, y2, score, class_id in input pixels."""
    anchors = torch.tensor(ANCHORS, dtype=torch.float32).view(3, 3, 2)
    out = []
    for i, p in enumerate(preds):
        B, _, H, W = p.shape
        p = p.detach().view(B, 3, 5 + num_classes, H, W).permute(0, 1, 3, 4, 2)  # (B,A,H,W,5+C)
        gy, gx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        grid = torch.stack((gx, gy), dim=-1).float()  # (H, W, 2) x, y
        xy = (p[..., 0:2].sigmoid() * 2 - 0.5 + grid) * STRIDES[i]  # (B, A, H, W, 2)
        wh = (p[..., 2:4].sigmoid() * 2) ** 2 * anchors[i].view(1, 3, 1, 1, 2)
        cls_p, cls_id = p[..., 5:].sigmoid().max(dim=-1)  # (B, A, H, W)
        score = p[..., 4].sigmoid() * cls_p
        box = torch.cat((xy - wh / 2, xy + wh / 2, score[..., None], cls_id[..., None]), -1)
        out.append(box.reshape(B, -1, 6))
    return torch.cat(out, dim=1)


# --- CIoU ---------------------------------------------------------------------------------


def test_ciou_identical_boxes_is_one() -> None:
    box = torch.tensor([[10.0, 20.0, 8.0, 4.0], [0.5, 0.5, 1.0, 3.0]])
    assert torch.allclose(bbox_ciou(box, box), torch.ones(2), atol=1e-5)


def test_ciou_disjoint_far_boxes_is_negative() -> None:
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([100.0, 50.0, 3.0, 1.0])
    assert bbox_ciou(a, b) < 0


box_st = st.tuples(st.floats(-50, 50), st.floats(-50, 50), st.floats(0.1, 60), st.floats(0.1, 60))


@settings(max_examples=200, deadline=None)
@given(b1=box_st, b2=box_st)
def test_ciou_matches_reference_and_is_symmetric(b1, b2) -> None:
    t1 = torch.tensor(b1, dtype=torch.float64)
    t2 = torch.tensor(b2, dtype=torch.float64)
    c12 = bbox_ciou(t1, t2, eps=1e-12).item()
    c21 = bbox_ciou(t2, t1, eps=1e-12).item()
    assert c12 == pytest.approx(ciou_reference(b1, b2), abs=1e-6)
    assert c12 == pytest.approx(c21, abs=1e-9)
    assert -1.5 < c12 <= 1.0 + 1e-9  # IoU - rho2/c2 (< 1) - alpha*v (<= 1/2)


def test_ciou_broadcasts() -> None:
    a = torch.rand(5, 1, 4) + 0.1
    b = torch.rand(1, 7, 4) + 0.1
    assert bbox_ciou(a, b).shape == (5, 7)


# --- assignment ---------------------------------------------------------------------------


def test_assignment_centre_cell_and_two_nearest_neighbours() -> None:
    # a 64x64 input: grids 8x8, 4x4, 2x2. At stride 8 the centre sits in cell (x=3, y=5),
    # in its left half (-> left neighbour x=2) and its lower half (-> lower neighbour y=6).
    cx, cy = 3.25 * 8, 5.75 * 8
    w, h = 12.0, 14.0  # fits anchors (6,8) (10,12) (14,10) at ratio < 4
    targets = torch.tensor([[1, 1, cx, cy, w, h]])
    out = build_targets(targets, torch.tensor(ANCHORS), STRIDES, [(8, 8), (4, 4), (2, 2)])

    s8 = out[0]
    cells = {(int(a), int(gj), int(gi)) for a, gj, gi in zip(s8.a, s8.gj, s8.gi)}
    expected = {(a, gj, gi) for a in range(3) for gj, gi in ((5, 3), (5, 2), (6, 3))}
    assert cells == expected
    assert len(s8.a) == 9 and (s8.b == 1).all() and (s8.cls == 1).all()
    # the target box, relative to each cell, lies where 2*sigmoid-0.5 reaches: (-0.5, 1.5)
    assert ((s8.tbox[:, :2] > -0.5) & (s8.tbox[:, :2] < 1.5)).all()
    # decoding the cell offset back gives the centre in pixels
    centre = (s8.tbox[:, :2] + torch.stack((s8.gi, s8.gj), 1)) * 8
    assert torch.allclose(centre, torch.tensor([[cx, cy]]).expand(9, 2))
    assert torch.allclose(s8.tbox[:, 2:], torch.tensor([[w / 8, h / 8]]).expand(9, 2))

    # the largest anchors (52x50 vs 12x14: ratio > 4) take nothing at stride 32
    s32 = out[2]
    assert not ((s32.a == 2).any())


def test_assignment_respects_anchor_ratio_and_borders() -> None:
    # a tiny box in the top-left corner: no left/up neighbours exist
    targets = torch.tensor([[0, 0, 2.0, 2.0, 4.0, 4.0]])
    out = build_targets(targets, torch.tensor(ANCHORS), STRIDES, [(8, 8), (4, 4), (2, 2)])
    s8 = out[0]
    # 4x4 against (6,8): 2 < 4 fits; (10,12): 3 fits; (14,10): 3.5 fits
    assert set(s8.a.tolist()) == {0, 1, 2}
    assert set(zip(s8.gj.tolist(), s8.gi.tolist())) == {(0, 0)}
    # the anchors of strides 16 and 32 are all 5x or more its size
    assert out[1].a.numel() == 0 and out[2].a.numel() == 0


def test_assignment_empty_targets() -> None:
    out = build_targets(torch.zeros(0, 6), torch.tensor(ANCHORS), STRIDES, [(8, 8), (4, 4), (2, 2)])
    assert all(s.b.numel() == 0 and s.tbox.shape == (0, 4) for s in out)


# --- the loss -----------------------------------------------------------------------------


def _maps(B: int, C: int, size: int = 64, requires_grad: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(B, 3 * (5 + C), size // s, size // s, generator=g) * 0.5).requires_grad_(
            requires_grad
        )
        for s in STRIDES
    ]


def test_loss_gradients_reach_every_map_and_are_finite() -> None:
    C = 2
    preds = _maps(2, C)
    targets = torch.tensor([[0, 0, 20.0, 24.0, 16.0, 12.0], [1, 1, 40.0, 40.0, 40.0, 34.0]])
    loss_fn = YoloLoss(ANCHORS, STRIDES, num_classes=C)
    loss, parts = loss_fn(preds, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert parts.shape == (3,) and not parts.requires_grad and (parts > 0).all()
    assert loss.item() == pytest.approx(parts.sum().item() * 2, rel=1e-5)  # times B
    loss.backward()
    for p in preds:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_loss_without_targets_is_objectness_only() -> None:
    preds = _maps(2, 3)
    loss, parts = YoloLoss(ANCHORS, STRIDES, num_classes=3)(preds, torch.zeros(0, 6))
    assert torch.isfinite(loss)
    assert parts[0] == 0 and parts[2] == 0 and parts[1] > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)


def test_overfit_one_image_recovers_boxes_and_classes() -> None:
    torch.manual_seed(0)
    C = 2
    # boxes placed so their assigned cells never collide on any scale
    targets = torch.tensor([[0, 0, 12.0, 14.0, 10.0, 12.0], [0, 1, 50.0, 48.0, 24.0, 28.0]])
    preds = [torch.nn.Parameter(m.detach()) for m in _maps(1, C)]
    loss_fn = YoloLoss(ANCHORS, STRIDES, num_classes=C)
    opt = torch.optim.Adam(preds, lr=0.05)
    first = None
    for _ in range(200):
        loss, _ = loss_fn(preds, targets)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first

    det = decode(preds, C)[0]  # (N, 6)
    det = det[det[:, 4] > 0.5]
    assert len(det) > 0
    for t in targets:
        cx, cy, w, h = t[2:].tolist()
        gt = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        hits = [d for d in det if int(d[5]) == int(t[1]) and iou_xyxy(d[:4], gt) > 0.7]
        assert hits, f"target {t.tolist()} not recovered"
    # and nothing confident that is not one of them
    for d in det:
        gts = [
            torch.tensor([t[2] - t[4] / 2, t[3] - t[5] / 2, t[2] + t[4] / 2, t[3] + t[5] / 2])
            for t in targets
            if int(t[1]) == int(d[5])
        ]
        assert max(iou_xyxy(d[:4], g) for g in gts) > 0.5
