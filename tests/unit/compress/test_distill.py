"""Distillation: zero terms for a teacher equal to the student, gradients to the student only,
the bounded box term, the imitation mask, and a 2-epoch distill_train run.
yolov4-n (student) and yolov4-s (teacher) at 64 px, 1 thread."""

from __future__ import annotations

import copy
import csv

import pytest
import torch

from trainer.callbacks import Callback
from trainer.compress.distill import (
    ADAPTER_GROUP,
    DISTILL_PART_NAMES,
    DistillLoss,
    distill_train,
    imitation_mask,
)
from trainer.config import ConfigError, TrainConfig
from trainer.data.synth import synthesize
from trainer.loss import YoloLoss
from trainer.model import build, get_spec, load_checkpoint, save_checkpoint

# one object per image, far apart: no two matches share an (anchor, cell)
TARGETS = torch.tensor([[0, 1, 20.0, 24.0, 16.0, 12.0], [1, 3, 40.0, 36.0, 30.0, 20.0]])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model(variant="yolov4-n", seed=0):
    return build(get_spec(variant, input_size=64), seed=seed)


def det_loss(spec) -> YoloLoss:
    return YoloLoss(spec.flat_anchors, spec.strides, spec.num_classes)


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))


def test_teacher_equal_to_student_gives_zero_distillation(images):
    student = model().eval()  # eval: the same BN statistics as the teacher's
    teacher = copy.deepcopy(student)
    loss = DistillLoss(
        det_loss(student.spec),
        teacher,
        feat_weight=1.0,
        student_channels=student.spec.feature_channels,
    )
    assert loss.needs_features
    outputs = student(images, return_features=True)
    total, parts = loss(outputs, TARGETS, images)
    assert parts.shape == (len(DISTILL_PART_NAMES),)
    assert torch.equal(parts[3:], torch.zeros(3)), parts
    assert all(v == 0.0 for v in loss.last_terms.values())
    det, det_parts = det_loss(student.spec)(outputs[0], TARGETS)
    torch.testing.assert_close(total, det)
    torch.testing.assert_close(parts[:3], det_parts)
    # the mask was not empty, so the zero feature term is a real comparison
    assert any(
        m.any()
        for m in imitation_mask(
            TARGETS,
            loss.student_loss.anchors,
            (8, 16, 32),
            [tuple(f.shape[-2:]) for f in outputs[1]],
            2,
        )
    )


def test_gradients_reach_the_student_not_the_teacher(images):
    student = model("yolov4-n", seed=0)
    teacher = model("yolov4-s", seed=1)
    loss = DistillLoss(
        det_loss(student.spec),
        teacher,
        feat_weight=1.0,
        student_channels=student.spec.feature_channels,
    )
    loss.train()  # the teacher stays in eval mode whatever the loss's mode
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    student.train()
    maps, feats = student(images, return_features=True)
    t_maps, t_feats = loss.teacher_outputs(images)
    terms = loss.distill_terms(maps, t_maps, TARGETS, feats, t_feats)
    for name, term in terms._asdict().items():  # each term on its own reaches the student
        assert term.requires_grad and float(term.detach()) > 0, name
        student.zero_grad(set_to_none=True)
        term.backward(retain_graph=True)
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in loss.adapter_parameters())  # adapters learn too
    # the whole loss backpropagates to the student only as well
    student.zero_grad(set_to_none=True)
    total, _ = loss((maps, feats), TARGETS, images)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None) > 0


def perfect(maps, loss: YoloLoss, targets):
    """Copies of ``maps`` whose box logits decode exactly to the ground truth at every
    assigned (anchor, cell)."""
    out = [m.detach().clone() for m in maps]
    B = maps[0].shape[0]
    A, C = loss.num_anchors, loss.num_classes
    for m, st in zip(out, loss.build_targets(out, targets), strict=True):
        H, W = m.shape[-2:]
        v = m.view(B, A, 5 + C, H, W)
        sxy = (st.tbox[:, :2] + 0.5) / 2  # pxy = 2 * sigmoid - 0.5
        swh = (st.tbox[:, 2:] / st.anchor).sqrt() / 2  # pwh = (2 * sigmoid)^2 * anchor
        v[st.b, st.a, 0:4, st.gj, st.gi] = torch.logit(torch.cat((sxy, swh), 1))
    return out


def test_bounded_box_term(images):
    net = model().eval()
    loss = DistillLoss(det_loss(net.spec), copy.deepcopy(net))
    with torch.no_grad():
        plain = net(images)
    good = perfect(plain, loss.student_loss, TARGETS)
    # the "perfect" maps really fit the ground truth: their box loss is ~0
    lbox_good = loss.student_loss(good, TARGETS)[1][0]
    assert float(lbox_good) < 1e-5 < float(loss.student_loss(plain, TARGETS)[1][0])

    better = loss.distill_terms(good, plain, TARGETS).box  # student beats the teacher
    assert float(better) == 0.0
    worse = loss.distill_terms(plain, good, TARGETS).box  # teacher beats the student
    assert float(worse) > 0
    # the value is the gap l_s - l_t, times the box gain and alpha_box
    gap = (loss.student_loss(plain, TARGETS)[1][0] - lbox_good) * loss.alpha_box
    torch.testing.assert_close(worse, gap, rtol=1e-4, atol=1e-6)
    # a margin makes a student level with its teacher pay
    loss.margin = 0.1
    assert float(loss.distill_terms(plain, plain, TARGETS).box) > 0
    assert float(loss.distill_terms(good, plain, TARGETS).box) == 0.0  # still far better


def test_imitation_mask_near_gt_only():
    anchors = torch.tensor(get_spec("yolov4-n", input_size=64).flat_anchors)
    targets = torch.tensor([[0, 2, 16.0, 20.0, 14.0, 18.0]])
    grids = [(8, 8), (4, 4), (2, 2)]
    masks = imitation_mask(targets, anchors, (8, 16, 32), grids, batch_size=2, psi=0.5)
    assert [tuple(m.shape) for m in masks] == [(2, 8, 8), (2, 4, 4), (2, 2, 2)]
    assert not any(m[1].any() for m in masks)  # no object in image 1
    stride8 = masks[0][0]
    assert stride8[20 // 8, 16 // 8]  # the centre's cell at the best-fitting scale
    assert not stride8[6:, 6:].any()  # far from the object: nothing
    total = sum(int(m.sum()) for m in masks)
    assert 0 < total < 8 * 8 // 2
    # psi near 1: only the cells of the best anchor boxes; more psi, fewer cells
    best = sum(int(m.sum()) for m in imitation_mask(targets, anchors, (8, 16, 32), grids, 2, 0.99))
    assert 1 <= best <= total
    empty = imitation_mask(targets[:0], anchors, (8, 16, 32), grids, 2)
    assert not any(m.any() for m in empty)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "data"
    synthesize(out, images=20, size=96, seed=0, val_fraction=0.2)  # 16 train, 4 val
    return out


def test_distill_train_two_epochs(data_dir, tmp_path):
    teacher = save_checkpoint(
        tmp_path / "teacher.pt", model("yolov4-s", seed=1), {"stage": "sparse"}
    )
    student = save_checkpoint(
        tmp_path / "student.pt", model("yolov4-n", seed=0), {"stage": "prune"}
    )
    config = TrainConfig(
        data=str(data_dir),
        model="yolov4-n",
        imgsz=64,
        epochs=2,
        batch=8,
        accumulate=1,
        workers=0,
        warmup_epochs=0.0,
        warmup_min_iters=0,
        val_every=2,
        project=str(tmp_path / "runs"),
        verbose=False,
        plots=False,
    )

    class Adapters(Callback):  # runs after DistillCallback: sees the adapters' group
        def on_train_start(self, ctx):
            group = ctx.optimizer.param_groups[-1]
            assert group["name"] == ADAPTER_GROUP
            self.initial = [p.detach().clone() for p in group["params"]]

    seen = Adapters()
    result = distill_train(config, teacher, student, feat_weight=0.5, callbacks=[seen])
    run = result.run_dir
    assert run.name == "distill" and result.epochs_done == 2
    assert (run / "args.yaml").is_file() and result.best.is_file() and result.last.is_file()
    with (run / "results.csv").open() as f:
        header = next(csv.reader(f))
    for name in DISTILL_PART_NAMES:
        assert f"train/{name}" in header
    rows = result.history
    assert all(r["train/distill_obj_cls"] > 0 and r["train/distill_feat"] > 0 for r in rows)
    pruned, meta = load_checkpoint(result.last)
    assert pruned.spec.feature_channels == get_spec("yolov4-n").feature_channels
    assert meta["stage"] == "distill"
    assert meta["model_source"] == "module"
    assert meta["train_args"]["anchors"] == "spec"
    assert meta["distill"]["feat_weight"] == 0.5
    adapters = meta["distill"]["adapters"]
    assert adapters["0.weight"].shape == (64, 32, 1, 1)  # student 32 -> teacher 64 channels
    # the adapters were optimized: the 4th optimizer group
    groups = meta["resume"]["optimizer"]["param_groups"]
    assert [g["name"] for g in groups][-1] == ADAPTER_GROUP and len(groups) == 4
    assert len(seen.initial) == 6  # 3 adapters x (weight, bias)
    trained = [adapters[f"{i}.{k}"] for i in range(3) for k in ("weight", "bias")]
    assert all(not torch.equal(a, b) for a, b in zip(trained, seen.initial, strict=True))


def test_distill_with_feature_imitation_resumes_exactly(data_dir, tmp_path):
    """The adapters are the engine's 4th optimizer group and part of the resume state."""
    teacher = save_checkpoint(
        tmp_path / "teacher.pt", model("yolov4-s", seed=1), {"stage": "sparse"}
    )
    student = save_checkpoint(
        tmp_path / "student.pt", model("yolov4-n", seed=0), {"stage": "prune"}
    )

    def config(name):
        return TrainConfig(
            data=str(data_dir), model="yolov4-n", imgsz=64, epochs=2, batch=8, accumulate=1,
            workers=0, warmup_epochs=0.0, warmup_min_iters=0, close_mosaic=1,
            project=str(tmp_path / "runs"), name=name, verbose=False, plots=False,
        )  # fmt: skip

    class StopAfterOne(Callback):
        def on_train_start(self, ctx):
            self.ctx = ctx

        def on_epoch_end(self, epoch, metrics):
            self.ctx.stop = epoch == 1

    straight = distill_train(config("straight"), teacher, student, feat_weight=0.5)
    stopped = distill_train(
        config("stopped"), teacher, student, feat_weight=0.5, callbacks=[StopAfterOne()]
    )
    assert stopped.epochs_done == 1
    resumed = distill_train(None, teacher, resume=stopped.run_dir, feat_weight=0.5)
    assert resumed.epochs_done == 2

    _, ref = load_checkpoint(straight.last)
    _, res = load_checkpoint(resumed.last)
    for k, v in ref["resume"]["model"].items():
        assert torch.equal(v, res["resume"]["model"][k]), f"raw weights differ: {k}"
    for k, v in ref["distill"]["adapters"].items():
        assert torch.equal(v, res["distill"]["adapters"][k]), f"adapters differ: {k}"
    # a resume with other loss parameters (adapters the run did not have) is refused
    plain = distill_train(config("plain"), teacher, student, callbacks=[StopAfterOne()])
    with pytest.raises(ConfigError, match="loss parameters differ"):
        distill_train(None, teacher, resume=plain.run_dir, feat_weight=0.5)
