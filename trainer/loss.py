"""The YOLO training loss: CIoU box loss, objectness BCE, class BCE, YOLOv5-style assignment.

Prediction contract (the model's raw output): a list of S maps, one per stride (8, 16, 32),
each (B, A*(5+C), H, W) with A anchors per scale and, per anchor, the logits
``[tx, ty, tw, th, obj, cls_1..cls_C]``. Decode (the same as the one post-processing):

    xy = (sigmoid(txy) * 2 - 0.5 + grid_xy) * stride
    wh = (sigmoid(twh) * 2) ** 2 * anchor_wh

so a cell reaches centres in (-0.5, 1.5) of its own width and boxes up to 4x its anchor.
Assignment follows from that: a ground truth is given to every anchor whose width and
height ratios max(r, 1/r) stay under ``anchor_t`` (4 by default: what the decode reaches),
in the cell holding its centre and in the horizontal and vertical neighbours nearest the
centre (both reachable through the -0.5..1.5 range).

Targets are (T, 6) ``[image_index, class, cx, cy, w, h]`` in input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def bbox_ciou(box1: Tensor, box2: Tensor, eps: float = 1e-7) -> Tensor:
    """Complete IoU (Zheng et al. 2020) of boxes given as ``cx, cy, w, h``.

    CIoU = IoU - rho^2 / c^2 - alpha * v, with rho the distance between the centres, c the
    diagonal of the smallest enclosing box, v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2 the
    aspect-ratio term and alpha = v / (1 - IoU + v), held constant in the backward pass
    (as the authors' code does). In (-1.5, 1]; 1 for identical boxes; symmetric.

    Args:
        box1, box2: (..., 4) ``cx, cy, w, h``, broadcastable; any unit, the same for both.
    Returns:
        (...) CIoU.
    """
    # corners
    b1_x1, b1_x2 = box1[..., 0] - box1[..., 2] / 2, box1[..., 0] + box1[..., 2] / 2
    b1_y1, b1_y2 = box1[..., 1] - box1[..., 3] / 2, box1[..., 1] + box1[..., 3] / 2
    b2_x1, b2_x2 = box2[..., 0] - box2[..., 2] / 2, box2[..., 0] + box2[..., 2] / 2
    b2_y1, b2_y2 = box2[..., 1] - box2[..., 3] / 2, box2[..., 1] + box2[..., 3] / 2
    w1, h1 = box1[..., 2], box1[..., 3] + eps
    w2, h2 = box2[..., 2], box2[..., 3] + eps

    # IoU
    inter_w = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(min=0)
    inter_h = (torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)).clamp(min=0)
    inter = inter_w * inter_h
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union

    # centre distance over the enclosing box's diagonal, both squared
    cw = torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)
    ch = torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)
    c2 = cw**2 + ch**2 + eps
    rho2 = (box2[..., 0] - box1[..., 0]) ** 2 + (box2[..., 1] - box1[..., 1]) ** 2

    # aspect-ratio consistency
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - rho2 / c2 - alpha * v


class ScaleTargets(NamedTuple):
    """The ground truths assigned on one scale: n (target, anchor, cell) matches."""

    b: Tensor  # (n,) image index in the batch
    a: Tensor  # (n,) anchor index within the scale, 0..A-1
    gj: Tensor  # (n,) grid row
    gi: Tensor  # (n,) grid column
    tbox: Tensor  # (n, 4) cx, cy, w, h in grid units; cx, cy relative to the cell (gi, gj)
    anchor: Tensor  # (n, 2) the matched anchor's w, h in grid units
    cls: Tensor  # (n,) class id


# the centre cell, then its left, upper, right and lower neighbours, as (dx, dy)
_NEIGHBOURS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


def build_targets(
    targets: Tensor,
    anchors: Tensor,
    strides: Sequence[int],
    grid_shapes: Sequence[tuple[int, int]],
    anchor_t: float = 4.0,
) -> list[ScaleTargets]:
    """Assign ground truths to (scale, anchor, cell), vectorised over targets.

    A target goes to every anchor of a scale whose ratio max(w/aw, aw/w, h/ah, ah/h) is
    under ``anchor_t``, in its centre cell and in the nearest horizontal and the nearest
    vertical neighbour (left if the centre sits in the cell's left half, right if in the
    right half; the same for up/down; none on a tie or off the grid). That gives up to 3
    cells per matched anchor, all of which the 2*sigmoid-0.5 decode can reach.

    Args:
        targets: (T, 6) ``[image_index, class, cx, cy, w, h]`` in input pixels.
        anchors: (S, A, 2) or (S*A, 2) anchor w, h in input pixels, small to large.
        strides: S strides, e.g. (8, 16, 32).
        grid_shapes: S (H, W) of the prediction maps.
        anchor_t: the wh-ratio threshold.
    Returns:
        one :class:`ScaleTargets` per scale.
    """
    num_scales = len(strides)
    anchors = anchors.reshape(num_scales, -1, 2).to(targets.device, torch.float32)  # (S, A, 2)
    targets = targets.to(torch.float32)
    neighbours = torch.tensor(_NEIGHBOURS, device=targets.device, dtype=torch.float32)  # (5, 2)

    out = []
    for i, stride in enumerate(strides):
        H, W = grid_shapes[i]
        gxy = targets[:, 2:4] / stride  # (T, 2) centres in grid units
        gwh = targets[:, 4:6] / stride  # (T, 2) sizes in grid units
        anchor_wh = anchors[i] / stride  # (A, 2)

        # which anchors each target fits: the decode reaches at most 4x an anchor
        r = targets[None, :, 4:6] / anchors[i][:, None]  # (A, T, 2)
        fits = torch.maximum(r, 1 / r).amax(dim=2) < anchor_t  # (A, T)

        # which cells: the centre cell always, plus the nearest neighbour along x and along y
        cell = gxy.floor()  # (T, 2)
        frac = gxy - cell  # (T, 2) position inside the centre cell, [0, 1)
        left = (frac[:, 0] < 0.5) & (gxy[:, 0] >= 1)
        up = (frac[:, 1] < 0.5) & (gxy[:, 1] >= 1)
        right = (frac[:, 0] > 0.5) & (gxy[:, 0] < W - 1)
        down = (frac[:, 1] > 0.5) & (gxy[:, 1] < H - 1)
        centre = torch.ones_like(left)
        use = torch.stack((centre, left, up, right, down))  # (5, T), order of _NEIGHBOURS

        # every (neighbour k, anchor a, target t) that is kept
        k, a, t = torch.nonzero(use[:, None, :] & fits[None, :, :], as_tuple=True)  # (n,) each

        gij = cell[t] + neighbours[k]  # (n, 2) x, y of the assigned cell
        gij[:, 0].clamp_(0, W - 1)  # a centre exactly on the far border floors off the grid
        gij[:, 1].clamp_(0, H - 1)
        tbox = torch.cat((gxy[t] - gij, gwh[t]), dim=1)  # (n, 4)
        gij = gij.long()
        out.append(
            ScaleTargets(
                b=targets[t, 0].long(),
                a=a,
                gj=gij[:, 1],
                gi=gij[:, 0],
                tbox=tbox,
                anchor=anchor_wh[a],
                cls=targets[t, 1].long(),
            )
        )
    return out


class YoloLoss(nn.Module):
    """YOLOv4/v5 loss on the raw maps: gains * (1 - CIoU, objectness BCE, class BCE) * B.

    Args:
        anchors: 9 (w, h) in input pixels, small to large; scale i uses anchors[3i:3i+3].
        strides: the maps' strides, e.g. (8, 16, 32).
        num_classes: C.
        box_gain, obj_gain, cls_gain: weights of the three parts.
        balance: per-scale weight of the objectness loss (small strides see more cells).
        anchor_t: wh-ratio threshold of the assignment.
        label_smoothing: eps; class targets become 1 - eps/2 and eps/2.
    """

    def __init__(
        self,
        anchors: Sequence[Sequence[float]] | Tensor,
        strides: Sequence[int] = (8, 16, 32),
        num_classes: int = 1,
        box_gain: float = 0.05,
        obj_gain: float = 1.0,
        cls_gain: float = 0.5,
        balance: Sequence[float] = (4.0, 1.0, 0.4),
        anchor_t: float = 4.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        anchors = torch.as_tensor(anchors, dtype=torch.float32).reshape(len(strides), -1, 2)
        if len(balance) != len(strides):
            raise ValueError(f"balance has {len(balance)} entries for {len(strides)} strides")
        self.register_buffer("anchors", anchors)  # (S, A, 2) input pixels
        self.strides = tuple(int(s) for s in strides)
        self.num_anchors = anchors.shape[1]
        self.num_classes = num_classes
        self.box_gain = box_gain
        self.obj_gain = obj_gain
        self.cls_gain = cls_gain
        self.balance = tuple(balance)
        self.anchor_t = anchor_t
        self.cls_pos = 1.0 - 0.5 * label_smoothing
        self.cls_neg = 0.5 * label_smoothing

    def build_targets(self, preds: list[Tensor], targets: Tensor) -> list[ScaleTargets]:
        """:func:`build_targets` with this loss's anchors, the grid shapes read off ``preds``."""
        grid_shapes = [tuple(p.shape[-2:]) for p in preds]
        return build_targets(targets, self.anchors, self.strides, grid_shapes, self.anchor_t)

    def forward(self, preds: list[Tensor], targets: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            preds: S raw maps (B, A*(5+C), H, W).
            targets: (T, 6) ``[image_index, class, cx, cy, w, h]`` in input pixels.
        Returns:
            total loss (scalar, to backpropagate) and the detached parts (3,) [box, obj, cls]
            (gains applied, not multiplied by B).
        """
        B = preds[0].shape[0]
        A, C = self.num_anchors, self.num_classes
        device = preds[0].device
        assigned = self.build_targets(preds, targets.to(device))
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)

        for i, p in enumerate(preds):
            _, _, H, W = p.shape
            p = p.view(B, A, 5 + C, H, W).permute(0, 1, 3, 4, 2)  # (B, A, H, W, 5+C)
            st = assigned[i]
            n = st.b.shape[0]
            tobj = torch.zeros((B, A, H, W), device=device, dtype=p.dtype)

            if n:
                ps = p[st.b, st.a, st.gj, st.gi]  # (n, 5+C) the matched predictions
                pxy = ps[:, 0:2].sigmoid() * 2 - 0.5  # (n, 2) relative to the cell
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * st.anchor  # (n, 2) grid units
                pbox = torch.cat((pxy, pwh), dim=1)  # (n, 4)
                ciou = bbox_ciou(pbox, st.tbox)  # (n,)
                lbox = lbox + (1.0 - ciou).mean()

                # objectness target: how well the cell's box fits, the best fit where
                # several targets share a cell (scatter amax is deterministic, a put is not)
                flat = ((st.b * A + st.a) * H + st.gj) * W + st.gi  # (n,)
                score = ciou.detach().clamp(min=0).to(tobj.dtype)
                tobj.view(-1).scatter_reduce_(0, flat, score, reduce="amax")

                tcls = torch.full_like(ps[:, 5:], self.cls_neg)  # (n, C)
                tcls[torch.arange(n, device=device), st.cls] = self.cls_pos
                lcls = lcls + F.binary_cross_entropy_with_logits(ps[:, 5:], tcls)

            lobj = lobj + F.binary_cross_entropy_with_logits(p[..., 4], tobj) * self.balance[i]

        lbox = lbox * self.box_gain
        lobj = lobj * self.obj_gain
        lcls = lcls * self.cls_gain
        total = (lbox + lobj + lcls) * B
        return total, torch.stack((lbox, lobj, lcls)).detach()
