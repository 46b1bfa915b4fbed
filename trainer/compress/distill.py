"""Knowledge distillation of a (pruned) student from its unpruned teacher.

    from trainer.compress.distill import distill_train
    result = distill_train(config, "runs/sparse/weights/best.pt", "runs/prune/pruned.pt")

:class:`DistillLoss` is an engine ``loss_fn`` (see :mod:`trainer.engine`, "Hooks"): the
student's detection loss on the ground truth plus three distillation terms, each with the
student loss's own gains, so that ``alpha = 1`` weighs a term like its ground-truth twin.

(a) Soft objectness and class targets at a temperature ``T`` (Hinton et al. 2015, as
    Chen et al. 2017 use them for detection). Objectness: the teacher's ``sigmoid(obj/T)``
    is a soft target for the student's ``obj/T`` on EVERY cell (mean over cells, the
    per-scale ``balance`` weights of the objectness loss). Classes: per cell the teacher's
    ``sigmoid(cls/T)`` is the soft target for the student's ``cls/T``, weighted by the
    teacher's objectness probability ``sigmoid(obj)`` and normalised by its sum, so the
    many background cells do not dominate. Both are multiplied by ``T**2`` (the gradient
    of a tempered soft target shrinks as ``1/T**2``). Each is computed as the Bernoulli KL
    divergence ``BCE(student, p) - BCE(teacher, p)``: the gradient of the soft-target BCE,
    but zero when the student equals the teacher.
(b) Bounded box regression (Chen et al. 2017, "Learning Efficient Object Detection Models
    with Knowledge Distillation"): the teacher is an upper bound, not a target. At the
    cells the ground truth is assigned to (:func:`trainer.loss.build_targets`) with
    ``l_s = 1 - CIoU(student box, GT)`` and ``l_t = 1 - CIoU(teacher box, GT)``, the term
    is ``mean(max(0, l_s - l_t + margin))``: its gradient is the student's own box-loss
    gradient where ``l_s + margin > l_t`` (Chen's condition) and zero where the student
    already beats the teacher by the margin; its value is the gap, which reads better in
    results.csv than Chen's ``l_s``.
(c) Feature imitation (Wang et al. 2019, "Distilling Object Detectors with Fine-grained
    Feature Imitation"), off by default (``feat_weight=0``): 1x1 conv adapters map the
    student's neck outputs to the teacher's widths (identity-initialised where the widths
    match); the squared error is summed over channels at the cells of the imitation mask
    and divided by ``2 * N_p``, ``N_p`` the number of masked cells. The mask
    (:func:`imitation_mask`): for every ground truth, the IoU with every anchor box centred
    on every cell of every scale; cells where some anchor exceeds ``psi`` times that
    ground truth's largest IoU (over all scales) are imitated.

The teacher runs in eval mode under ``torch.no_grad`` with frozen parameters: no gradient
reaches it. ``parts`` (logged as ``train/<name>``) are the detection loss's three, then
``distill_obj_cls``, ``distill_box``, ``distill_feat`` (gains applied, per image, like
YoloLoss's); ``last_terms`` holds the four separate terms of the latest batch.

The adapters are trainable: the engine optimizes a loss's own parameters as a 4th group
(its lr and momentum follow the weights' schedule) and keeps them in the resume state, so a
distillation with feature imitation resumes exactly. :class:`DistillCallback` stores their
weights in the checkpoints' metadata too (``metadata["distill"]["adapters"]``), for whoever
reads a finished run. :func:`distill_train` wires both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.callbacks import Callback, TrainContext
from trainer.engine import LOSS_GROUP_NAME
from trainer.loss import YoloLoss, bbox_ciou

__all__ = [
    "DISTILL_PART_NAMES",
    "DistillCallback",
    "DistillLoss",
    "DistillTerms",
    "distill_train",
    "imitation_mask",
]

DET_PART_NAMES = ("box_loss", "obj_loss", "cls_loss")
DISTILL_PART_NAMES = (*DET_PART_NAMES, "distill_obj_cls", "distill_box", "distill_feat")
ADAPTER_SEED = 0
ADAPTER_GROUP = LOSS_GROUP_NAME  # the engine's group of a loss's own parameters


class DistillTerms(NamedTuple):
    """The distillation terms of one batch, gains applied, per image (not times B)."""

    obj: Tensor
    cls: Tensor
    box: Tensor
    feat: Tensor


def _box_iou_cxcywh(a: Tensor, b: Tensor, eps: float = 1e-9) -> Tensor:
    """Plain IoU of boxes ``cx, cy, w, h`` (broadcast)."""
    ax1, ay1 = a[..., 0] - a[..., 2] / 2, a[..., 1] - a[..., 3] / 2
    ax2, ay2 = a[..., 0] + a[..., 2] / 2, a[..., 1] + a[..., 3] / 2
    bx1, by1 = b[..., 0] - b[..., 2] / 2, b[..., 1] - b[..., 3] / 2
    bx2, by2 = b[..., 0] + b[..., 2] / 2, b[..., 1] + b[..., 3] / 2
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = iw * ih
    return inter / (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter + eps)


def imitation_mask(
    targets: Tensor,
    anchors: Tensor,
    strides: Sequence[int],
    grid_shapes: Sequence[tuple[int, int]],
    batch_size: int,
    psi: float = 0.5,
) -> list[Tensor]:
    """Wang et al.'s fine-grained imitation mask, per scale.

    Args:
        targets: (T, 6) ``[image_index, class, cx, cy, w, h]`` in input pixels.
        anchors: (S, A, 2) or (S*A, 2) anchor w, h in input pixels.
        strides, grid_shapes: per scale, the stride and the (H, W) of the feature map.
        batch_size: B.
        psi: a cell is imitated when one of its anchor boxes has IoU above ``psi`` times
            the largest IoU any anchor box (any cell, any scale) has with that ground truth.
    Returns:
        S bool tensors (B, H, W).
    """
    device = targets.device
    S = len(strides)
    anchors = anchors.reshape(S, -1, 2).to(device, torch.float32)
    T = targets.shape[0]
    if T == 0:
        return [
            torch.zeros((batch_size, h, w), dtype=torch.bool, device=device) for h, w in grid_shapes
        ]
    gt = targets[:, 2:6].to(torch.float32)  # (T, 4) cx, cy, w, h
    ious = []
    for i, (stride, (H, W)) in enumerate(zip(strides, grid_shapes, strict=True)):
        gy, gx = torch.meshgrid(
            torch.arange(H, device=device, dtype=torch.float32),
            torch.arange(W, device=device, dtype=torch.float32),
            indexing="ij",
        )
        A = anchors.shape[1]
        boxes = torch.stack(
            (
                ((gx + 0.5) * stride).expand(A, H, W),
                ((gy + 0.5) * stride).expand(A, H, W),
                anchors[i, :, 0, None, None].expand(A, H, W),
                anchors[i, :, 1, None, None].expand(A, H, W),
            ),
            dim=-1,
        )  # (A, H, W, 4)
        ious.append(_box_iou_cxcywh(boxes[None], gt[:, None, None, None, :]))  # (T, A, H, W)
    best = torch.stack([iou.flatten(1).amax(1) for iou in ious]).amax(0)  # (T,)
    onehot = F.one_hot(targets[:, 0].long(), batch_size).to(torch.float32)  # (T, B)
    masks = []
    for iou, (H, W) in zip(ious, grid_shapes, strict=True):
        cells = (iou > (psi * best)[:, None, None, None]).any(dim=1) & (best > 0)[:, None, None]
        per_image = onehot.T @ cells.reshape(T, -1).to(torch.float32)  # (B, H*W)
        masks.append((per_image > 0).reshape(batch_size, H, W))
    return masks


def _decode(ps: Tensor, anchor: Tensor) -> Tensor:
    """Matched predictions (n, 5+C) -> boxes (n, 4) relative to their cell, grid units
    (the decode of :class:`~trainer.loss.YoloLoss`)."""
    pxy = ps[:, 0:2].sigmoid() * 2 - 0.5
    pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * anchor
    return torch.cat((pxy, pwh), dim=1)


def _bernoulli_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """KL(p_t || p_s) of Bernoulli variables, elementwise: the soft-target BCE minus the
    teacher's entropy (same gradient, zero when equal)."""
    p = teacher_logits.sigmoid()
    return F.binary_cross_entropy_with_logits(
        student_logits, p, reduction="none"
    ) - F.binary_cross_entropy_with_logits(teacher_logits, p, reduction="none")


class DistillLoss(nn.Module):
    """Detection loss + distillation from ``teacher``; see the module docstring.

    Args:
        student_loss: the student's detection loss (as the engine builds it).
        teacher: the teacher (a YOLOv4 with the same classes, anchors per scale and
            strides); frozen, kept in eval mode.
        temperature: T of the soft objectness and class targets.
        alpha_obj, alpha_cls, alpha_box: weights of the soft objectness, soft class and
            bounded box terms, relative to the student loss's obj, cls and box gains.
        feat_weight: weight of feature imitation; 0 turns it off (no adapters, no features).
        margin: m of the bounded box term.
        psi: the imitation mask's IoU ratio.
        student_channels: widths of the student's neck outputs (``spec.feature_channels``);
            needed when ``feat_weight > 0``.
    """

    part_names = DISTILL_PART_NAMES

    def __init__(
        self,
        student_loss: YoloLoss,
        teacher: nn.Module,
        *,
        temperature: float = 2.0,
        alpha_obj: float = 0.5,
        alpha_cls: float = 0.5,
        alpha_box: float = 0.5,
        feat_weight: float = 0.0,
        margin: float = 0.0,
        psi: float = 0.5,
        student_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if min(alpha_obj, alpha_cls, alpha_box, feat_weight) < 0:
            raise ValueError("the distillation weights must be >= 0")
        if not 0 < psi <= 1:
            raise ValueError(f"psi must be in (0, 1], got {psi}")
        self.student_loss = student_loss
        self.teacher = teacher
        self.teacher.eval()
        self.teacher.requires_grad_(False)
        self.temperature = float(temperature)
        self.alpha_obj = float(alpha_obj)
        self.alpha_cls = float(alpha_cls)
        self.alpha_box = float(alpha_box)
        self.feat_weight = float(feat_weight)
        self.margin = float(margin)
        self.psi = float(psi)

        spec = getattr(teacher, "spec", None)
        S, A = student_loss.anchors.shape[:2]
        if spec is not None:
            t_anchors = torch.as_tensor(spec.anchors, dtype=torch.float32).reshape(-1, 2)
            if t_anchors.shape[0] != S * A:
                raise ValueError(
                    f"the teacher has {t_anchors.shape[0]} anchors, the student {S * A}: "
                    "soft targets pair the anchors one to one"
                )
            if spec.num_classes != student_loss.num_classes:
                raise ValueError(
                    f"the teacher has {spec.num_classes} classes, the student "
                    f"{student_loss.num_classes}"
                )
            t_anchors = t_anchors.reshape(S, A, 2)
            if not torch.allclose(t_anchors, student_loss.anchors.cpu(), atol=0.05):
                warnings.warn(
                    "teacher and student anchors differ: soft objectness and class targets "
                    "pair anchor slots that mean different box sizes",
                    stacklevel=2,
                )
        else:
            t_anchors = student_loss.anchors.detach().clone().cpu()
        self.register_buffer("teacher_anchors", t_anchors)

        self.adapters: nn.ModuleList | None = None
        if self.feat_weight > 0:
            if student_channels is None:
                raise ValueError("feature imitation needs student_channels (spec.feature_channels)")
            if spec is None:
                raise ValueError("feature imitation needs a teacher with a spec (feature_channels)")
            self.adapters = nn.ModuleList()
            # Their own generator: the same adapters whatever ran before (reproducible runs)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ADAPTER_SEED)
                convs = [
                    nn.Conv2d(int(cs), int(ct), 1)
                    for cs, ct in zip(student_channels, spec.feature_channels, strict=True)
                ]
            for conv, cs, ct in zip(convs, student_channels, spec.feature_channels, strict=True):
                if cs == ct:  # a student as wide as its teacher starts imitating exactly
                    with torch.no_grad():
                        conv.weight.copy_(torch.eye(int(ct)).view(ct, ct, 1, 1))
                        conv.bias.zero_()
                self.adapters.append(conv)
        self.last_terms: dict[str, float] = {}

    @property
    def needs_features(self) -> bool:
        """The engine passes ``(maps, features)`` when true."""
        return self.feat_weight > 0

    def train(self, mode: bool = True) -> DistillLoss:
        super().train(mode)
        self.teacher.eval()  # the teacher always uses its running BN statistics
        return self

    def adapter_parameters(self) -> list[nn.Parameter]:
        return (
            []
            if self.adapters is None
            else [p for p in self.adapters.parameters() if p.requires_grad]
        )

    def _to_device(self, device: torch.device) -> None:
        p = next(self.teacher.parameters(), None)
        if p is not None and p.device != device:
            self.to(device)  # parameters keep their identity: optimizer groups stay valid

    # ---- the terms --------------------------------------------------------------------------

    def distill_terms(
        self,
        s_maps: Sequence[Tensor],
        t_maps: Sequence[Tensor],
        targets: Tensor,
        s_feats: Sequence[Tensor] | None = None,
        t_feats: Sequence[Tensor] | None = None,
    ) -> DistillTerms:
        """The four terms from student and teacher raw maps (and neck features)."""
        loss = self.student_loss
        B = s_maps[0].shape[0]
        A, C = loss.num_anchors, loss.num_classes
        device = s_maps[0].device
        T = self.temperature
        targets = targets.to(device)
        assigned = loss.build_targets(list(s_maps), targets)
        zero = torch.zeros((), device=device)
        lobj, lcls, lbox = zero, zero, zero
        for i, (sp, tp) in enumerate(zip(s_maps, t_maps, strict=True)):
            if sp.shape != tp.shape:
                raise ValueError(
                    f"scale {i}: student map {tuple(sp.shape)} vs teacher {tuple(tp.shape)}"
                )
            _, _, H, W = sp.shape
            sp = sp.float().view(B, A, 5 + C, H, W).permute(0, 1, 3, 4, 2)  # (B, A, H, W, 5+C)
            tp = tp.float().view(B, A, 5 + C, H, W).permute(0, 1, 3, 4, 2)

            if self.alpha_obj:
                kl = _bernoulli_kl(sp[..., 4] / T, tp[..., 4] / T)  # (B, A, H, W)
                lobj = lobj + kl.mean() * loss.balance[i]
            if self.alpha_cls:
                w = tp[..., 4].sigmoid()  # (B, A, H, W) the teacher's objectness
                kl = _bernoulli_kl(sp[..., 5:] / T, tp[..., 5:] / T).mean(-1)
                lcls = lcls + (w * kl).sum() / w.sum().clamp(min=1e-9)

            st = assigned[i]
            if self.alpha_box and st.b.numel():
                ps = sp[st.b, st.a, st.gj, st.gi]
                pt = tp[st.b, st.a, st.gj, st.gi]
                l_s = 1.0 - bbox_ciou(_decode(ps, st.anchor), st.tbox)
                t_anchor = self.teacher_anchors[i][st.a] / loss.strides[i]
                with torch.no_grad():
                    l_t = 1.0 - bbox_ciou(_decode(pt, t_anchor), st.tbox)
                lbox = lbox + (l_s - l_t + self.margin).clamp(min=0).mean()

        lfeat = zero
        if self.feat_weight > 0:
            if s_feats is None or t_feats is None:
                raise ValueError("feature imitation needs the student's and teacher's features")
            masks = imitation_mask(
                targets,
                loss.anchors,
                loss.strides,
                [tuple(f.shape[-2:]) for f in s_feats],
                B,
                self.psi,
            )
            n_p = sum(int(m.sum()) for m in masks)
            if n_p:
                sq = zero
                for adapter, sf, tf, m in zip(self.adapters, s_feats, t_feats, masks, strict=True):
                    diff = (adapter(sf.float()) - tf.float()).pow(2).sum(1)  # (B, H, W)
                    sq = sq + (diff * m).sum()
                lfeat = sq / (2 * n_p)

        return DistillTerms(
            obj=lobj * loss.obj_gain * self.alpha_obj * T**2,
            cls=lcls * loss.cls_gain * self.alpha_cls * T**2,
            box=lbox * loss.box_gain * self.alpha_box,
            feat=lfeat * self.feat_weight,
        )

    def teacher_outputs(self, images: Tensor):
        """The teacher's raw maps (and neck features when imitating), without gradient."""
        self._to_device(images.device)
        self.teacher.eval()
        with torch.no_grad():
            out = self.teacher(images, return_features=self.needs_features)
        return out if self.needs_features else (out, None)

    def forward(self, outputs, targets: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        """The engine's ``loss_fn(outputs, targets, images) -> (loss, parts)``; the loss is
        summed over the batch's images, as :class:`~trainer.loss.YoloLoss`'s."""
        if self.needs_features:
            maps, feats = outputs
        else:
            maps, feats = outputs, None
        maps = [m.float() for m in maps]
        det, det_parts = self.student_loss(maps, targets)
        t_maps, t_feats = self.teacher_outputs(images)
        terms = self.distill_terms(maps, t_maps, targets, feats, t_feats)
        B = maps[0].shape[0]
        total = det + (terms.obj + terms.cls + terms.box + terms.feat) * B
        self.last_terms = {k: float(v.detach()) for k, v in terms._asdict().items()}
        extra = torch.stack((terms.obj + terms.cls, terms.box, terms.feat)).detach()
        return total, torch.cat((det_parts.to(extra.device), extra))


class DistillCallback(Callback):
    """Puts a :class:`DistillLoss` on the model's device, adds its adapters to the
    optimizer (4th group) and records the distillation in the checkpoints."""

    def __init__(self, loss: DistillLoss) -> None:
        self.loss = loss

    def on_train_start(self, ctx: TrainContext) -> None:
        device = next(ctx.model.parameters()).device
        self.loss.to(device)
        # the engine builds its detection loss from the run's spec (anchors rounded by
        # choose_anchors); use the very same anchors
        spec_anchors = torch.as_tensor(ctx.model.spec.flat_anchors, dtype=torch.float32)
        own = self.loss.student_loss.anchors
        if spec_anchors.numel() == own.numel() and not torch.equal(
            spec_anchors.to(own).view_as(own), own
        ):
            own.copy_(spec_anchors.to(own).view_as(own))
        held = {id(p) for g in ctx.optimizer.param_groups for p in g["params"]}
        missing = [p for p in self.loss.adapter_parameters() if id(p) not in held]
        if missing:  # the engine optimizes a loss's parameters: this loss is not its loss_fn
            raise RuntimeError("DistillCallback needs its DistillLoss passed as loss_fn")

    def on_checkpoint(self, ctx: TrainContext, path: Path, metadata: dict[str, Any]) -> None:
        loss = self.loss
        meta: dict[str, Any] = {
            "temperature": loss.temperature,
            "alpha_obj": loss.alpha_obj,
            "alpha_cls": loss.alpha_cls,
            "alpha_box": loss.alpha_box,
            "feat_weight": loss.feat_weight,
            "margin": loss.margin,
            "psi": loss.psi,
        }
        if loss.adapters is not None:
            meta["adapters"] = {
                k: v.detach().cpu().clone() for k, v in loss.adapters.state_dict().items()
            }
        metadata["stage"] = "distill"
        metadata["distill"] = {**metadata.get("distill", {}), **meta}


def _check_pair(teacher, student) -> None:
    from trainer.config import ConfigError

    ts, ss = teacher.spec, student.spec
    for what in ("num_classes", "in_channels", "strides", "num_anchors"):
        if getattr(ts, what) != getattr(ss, what):
            raise ConfigError(
                f"teacher and student differ in {what}: {getattr(ts, what)} vs {getattr(ss, what)}"
            )


def distill_train(
    config,
    teacher_ckpt: str | Path,
    student_ckpt: str | Path | None = None,
    *,
    temperature: float = 2.0,
    alpha_obj: float = 0.5,
    alpha_cls: float = 0.5,
    alpha_box: float = 0.5,
    feat_weight: float = 0.0,
    margin: float = 0.0,
    psi: float = 0.5,
    callbacks: Iterable[Callback] = (),
    resume: str | Path | None = None,
    run_dir: str | Path | None = None,
    train_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]] | None = None,
):
    """Fine-tune ``student_ckpt`` (the pruned model) with distillation from ``teacher_ckpt``.

    Args:
        config: a TrainConfig. Its ``model`` becomes the student checkpoint, ``anchors``
            becomes ``spec`` (the student keeps its anchors, which pair with the
            teacher's), and a run still named ``train`` (the default) is named ``distill``.
            With ``resume`` it may be None or the machine settings, as for
            :func:`trainer.engine.train`.
        teacher_ckpt: the unpruned (sparse-trained) model's checkpoint.
        student_ckpt: the pruned model's checkpoint (not needed with ``resume``).
        temperature, alpha_*, feat_weight, margin, psi: see :class:`DistillLoss`.
        resume: continue a stopped distillation run (its last.pt or folder); the teacher
            and the distillation settings must be given again.
    Returns:
        the :class:`trainer.engine.TrainResult`.
    """
    from trainer.config import ConfigError, TrainConfig
    from trainer.engine import detection_loss, train
    from trainer.model import load_checkpoint

    teacher_ckpt = Path(teacher_ckpt)
    if not teacher_ckpt.is_file():
        raise ConfigError(f"teacher checkpoint not found: {teacher_ckpt}")
    teacher, _ = load_checkpoint(teacher_ckpt)
    options = {
        "temperature": temperature,
        "alpha_obj": alpha_obj,
        "alpha_cls": alpha_cls,
        "alpha_box": alpha_box,
        "feat_weight": feat_weight,
        "margin": margin,
        "psi": psi,
    }

    if resume is not None:
        last = Path(resume)
        last = last / "weights" / "last.pt" if last.is_dir() else last
        if not last.is_file():
            raise ConfigError(f"checkpoint not found: {last}")
        student, meta = load_checkpoint(last)
        _check_pair(teacher, student)
        saved = TrainConfig.from_dict(meta["train_args"])
        loss = DistillLoss(
            detection_loss(saved, student.spec),
            teacher,
            student_channels=student.spec.feature_channels,
            **options,
        )
        return train(
            config,
            loss_fn=loss,
            callbacks=[DistillCallback(loss), *callbacks],
            resume=resume,
            train_batches=train_batches,
        )

    if student_ckpt is None:
        raise ConfigError("distill_train needs a student checkpoint")
    student_ckpt = Path(student_ckpt)
    if not student_ckpt.is_file():
        raise ConfigError(f"student checkpoint not found: {student_ckpt}")
    student, _ = load_checkpoint(student_ckpt)
    _check_pair(teacher, student)
    changes: dict[str, Any] = {"model": str(student_ckpt.resolve()), "anchors": "spec"}
    if config.name == "train":
        changes["name"] = "distill"
    config = config.updated(**changes)
    spec = student.spec
    loss = DistillLoss(
        detection_loss(config, spec),
        teacher,
        student_channels=spec.feature_channels,
        **options,
    )
    return train(
        config,
        model=student,
        loss_fn=loss,
        callbacks=[DistillCallback(loss), *callbacks],
        run_dir=run_dir,
        train_batches=train_batches,
    )
