"""trainer.evaluate against faster-coco-eval's COCOeval, its properties, and the plots."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.evaluate import EvalResult, Evaluator, evaluate, print_table

NAMES = ["crazing", "inclusion", "patches", "pitted", "scratches"]
TOL = 1e-3


# ----------------------------------------------------------------------------- data
def _random_boxes(rng: np.random.Generator, n: int, size: float = 640.0) -> np.ndarray:
    wh = rng.uniform(8, size / 3, size=(n, 2))
    xy = rng.uniform(0, size - wh)
    return np.concatenate([xy, xy + wh], axis=1)


def make_dataset(
    seed: int, n_images: int = 40, nc: int = len(NAMES), gt_classes_used: int | None = None
):
    """GT jittered into predictions with random scores, plus false positives, misses,
    duplicates, wrong classes, images without GT, and one class that is only ever predicted."""
    rng = np.random.default_rng(seed)
    gt_nc = nc - 1 if gt_classes_used is None else gt_classes_used  # the last class never has GT
    preds, gt_boxes, gt_classes = [], [], []
    for _ in range(n_images):
        m = 0 if rng.random() < 0.2 else int(rng.integers(1, 8))
        boxes = _random_boxes(rng, m)
        classes = rng.integers(0, gt_nc, size=m)
        dets = []
        for b, c in zip(boxes, classes, strict=True):
            if rng.random() < 0.15:  # missed
                continue
            w, h = b[2] - b[0], b[3] - b[1]
            sigma = rng.choice([0.02, 0.08, 0.2])
            jb = b + rng.normal(0, sigma, 4) * np.array([w, h, w, h])
            jb = np.array(
                [min(jb[0], jb[2]), min(jb[1], jb[3]), max(jb[0], jb[2]), max(jb[1], jb[3])]
            )
            cls = c if rng.random() > 0.1 else rng.integers(0, nc)
            dets.append([*jb, rng.random(), cls])
            if rng.random() < 0.15:  # duplicate
                db = jb + rng.normal(0, 2, 4)
                db = np.array(
                    [min(db[0], db[2]), min(db[1], db[3]), max(db[0], db[2]), max(db[1], db[3])]
                )
                dets.append([*db, rng.random(), cls])
        for fb in _random_boxes(rng, int(rng.integers(0, 4))):  # false positives
            dets.append([*fb, rng.random() * 0.7, rng.integers(0, nc)])
        preds.append(np.array(dets, dtype=np.float64).reshape(-1, 6))
        gt_boxes.append(boxes)
        gt_classes.append(classes)
    return preds, gt_boxes, gt_classes


def coco_reference(preds, gt_boxes, gt_classes, nc: int):
    """(mAP50-95, mAP50, per-class AP50-95 with nan for classes without GT) from COCOeval."""
    from faster_coco_eval import COCO, COCOeval_faster

    images, anns, dets = [], [], []
    for i, (p, b, c) in enumerate(zip(preds, gt_boxes, gt_classes, strict=True)):
        images.append({"id": i + 1, "width": 640, "height": 640, "file_name": f"{i}.jpg"})
        for box, cls in zip(b, c, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for x1, y1, x2, y2, s, cls in p:
            dets.append(
                {
                    "image_id": i + 1,
                    "category_id": int(cls) + 1,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(s),
                }
            )
    cats = [{"id": k + 1, "name": str(k)} for k in range(nc)]
    gt = COCO({"images": images, "annotations": anns, "categories": cats})
    dt = gt.loadRes(dets)
    ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *a, **k: None)
    ev.evaluate()
    ev.accumulate()
    prec = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]; M index of maxDets=100
    m = list(ev.params.maxDets).index(100)
    per_class = []
    for k in range(nc):
        pk = prec[:, :, k, 0, m]
        per_class.append(float(pk.mean()) if (pk > -1).all() else math.nan)
    ap = np.array(per_class)
    ap50 = np.array(
        [
            float(prec[0, :, k, 0, m].mean()) if (prec[0, :, k, 0, m] > -1).all() else math.nan
            for k in range(nc)
        ]
    )
    return float(np.nanmean(ap)), float(np.nanmean(ap50)), ap


# ----------------------------------------------------------------------------- COCO agreement
@pytest.mark.parametrize("seed", range(6))
def test_matches_cocoeval(seed):
    preds, gb, gc = make_dataset(seed)
    ours = evaluate(preds, gb, gc, NAMES)
    ref_5095, ref_50, ref_cls = coco_reference(preds, gb, gc, len(NAMES))
    assert abs(ours.map50_95 - ref_5095) < TOL
    assert abs(ours.map50 - ref_50) < TOL
    ours_cls = np.array([c.ap50_95 for c in ours.per_class])
    np.testing.assert_array_equal(np.isnan(ours_cls), np.isnan(ref_cls))
    np.testing.assert_allclose(ours_cls[~np.isnan(ours_cls)], ref_cls[~np.isnan(ref_cls)], atol=TOL)
    # the class never in GT is excluded, not counted as 0
    assert ours.excluded_classes == [NAMES[-1]]
    assert 0 < ours.map50_95 < ours.map50 < 1


def test_max_det_per_image_and_class_matches_cocoeval():
    """COCO keeps the 100 best detections per image and class: flood one image with 150."""
    rng = np.random.default_rng(7)
    preds, gb, gc = make_dataset(11, n_images=6)
    extra = np.concatenate(
        [_random_boxes(rng, 150), rng.random((150, 1)), np.zeros((150, 1))], axis=1
    )
    gb[0] = np.concatenate([gb[0], extra[:40, :4]])
    gc[0] = np.concatenate([gc[0], np.zeros(40, dtype=np.int64)])
    preds[0] = np.concatenate([preds[0], extra])
    ours = evaluate(preds, gb, gc, NAMES)
    ref_5095, ref_50, _ = coco_reference(preds, gb, gc, len(NAMES))
    assert abs(ours.map50_95 - ref_5095) < TOL
    assert abs(ours.map50 - ref_50) < TOL


# ----------------------------------------------------------------------------- properties
@st.composite
def gt_sets(draw):
    n_images = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    gb, gc = [], []
    for _ in range(n_images):
        m = draw(st.integers(0, 5))
        gb.append(_random_boxes(rng, m))
        gc.append(rng.integers(0, 3, size=m))
    return gb, gc, rng


FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(gt_sets())
def test_perfect_predictions_score_one(data):
    gb, gc, rng = data
    preds = [
        np.concatenate([b, rng.uniform(0.01, 1, (len(b), 1)), c[:, None]], axis=1)
        for b, c in zip(gb, gc)
    ]
    r = evaluate(preds, gb, gc, NAMES[:3])
    if sum(len(c) for c in gc) == 0:
        assert math.isnan(r.map50) and math.isnan(r.map50_95)
        return
    assert r.map50 == pytest.approx(1.0) and r.map50_95 == pytest.approx(1.0)
    for c in r.per_class:
        if c.has_gt:
            assert c.precision == pytest.approx(1.0) and c.recall == pytest.approx(1.0)
    # confusion: no class mix-ups and no false positives (misses only below conf 0.25)
    m = r.confusion.matrix
    assert np.count_nonzero(m[:-1, :-1] - np.diag(np.diag(m[:-1, :-1]))) == 0
    assert m[:, -1].sum() == 0


@FAST
@given(gt_sets())
def test_no_predictions_score_zero(data):
    gb, gc, _ = data
    r = evaluate([np.zeros((0, 6))] * len(gb), gb, gc, NAMES[:3])
    if sum(len(c) for c in gc) == 0:
        assert math.isnan(r.map50)
        return
    assert r.map50 == 0.0 and r.map50_95 == 0.0
    assert r.precision == 0.0 and r.recall == 0.0
    assert r.confusion.matrix[-1, :-1].sum() == r.instances  # every GT missed: background row


@FAST
@given(seed=st.integers(0, 10_000), img=st.integers(0, 9), cls=st.integers(0, len(NAMES) - 1))
def test_ap_invariant_to_lowest_score_false_positive(seed, img, cls):
    """A false positive ranked below every other detection cannot change any AP.
    (Its score is strictly positive and below the minimum: a score of exactly 0 could tie.)"""
    preds, gb, gc = make_dataset(seed, n_images=10)
    before = evaluate(preds, gb, gc, NAMES)
    all_scores = np.concatenate([p[:, 4] for p in preds if len(p)] or [np.ones(1)])
    fp = np.array([[700.0, 700.0, 720.0, 720.0, all_scores.min() / 2, cls]])  # outside every GT box
    preds = [p.copy() for p in preds]
    preds[img] = np.concatenate([preds[img], fp])
    after = evaluate(preds, gb, gc, NAMES)
    np.testing.assert_array_equal(np.isnan(before.ap), np.isnan(after.ap))
    np.testing.assert_allclose(after.ap, before.ap, rtol=0, atol=1e-12, equal_nan=True)


def test_streaming_equals_batch_and_order_of_images_is_irrelevant():
    preds, gb, gc = make_dataset(3)
    batch = evaluate(preds, gb, gc, NAMES)
    ev = Evaluator(NAMES)
    for i in reversed(range(len(preds))):
        ev.update(preds[i], gb[i], gc[i])
    stream = ev.compute()
    assert stream.map50_95 == pytest.approx(batch.map50_95, abs=1e-12)
    np.testing.assert_array_equal(stream.confusion.matrix, batch.confusion.matrix)


# ----------------------------------------------------------------------------- confusion matrix
def test_confusion_matrix_like_ultralytics():
    gt_b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=float)
    gt_c = np.array([0, 1, 2])
    pred = np.array(
        [
            [0, 0, 10, 10, 0.9, 0],  # correct class 0
            [0.5, 0, 10, 10, 0.8, 0],  # duplicate of it: background FP
            [20, 20, 30, 30, 0.9, 2],  # GT 1 predicted as class 2
            [60, 60, 70, 70, 0.9, 1],  # FP class 1
            [40, 40, 50, 50, 0.2, 2],  # below conf 0.25: ignored, GT 2 missed
        ]
    )
    r = evaluate([pred], [gt_b], [gt_c], ["a", "b", "c"])
    m = r.confusion.matrix  # [pred, true], index 3 = background
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 0] = 1
    expected[0, 3] = 1
    expected[2, 1] = 1
    expected[1, 3] = 1
    expected[3, 2] = 1
    np.testing.assert_array_equal(m, expected)
    assert r.confusion.names == ["a", "b", "c", "background"]
    np.testing.assert_allclose(r.confusion.normalized().sum(0)[:3], 1.0)


# ----------------------------------------------------------------------------- API surface
def test_as_dict_table_and_validation(tmp_path):
    import json

    from rich.console import Console

    preds, gb, gc = make_dataset(1)
    r = evaluate(preds, gb, gc, NAMES)
    assert isinstance(r, EvalResult)
    d = json.loads(json.dumps(r.as_dict(), allow_nan=False))
    assert d["per_class"][-1]["map50"] is None and d["excluded_classes"] == [NAMES[-1]]
    assert d["instances"] == sum(len(c) for c in gc) and d["images"] == len(gc)
    assert set(r.metrics_row()) == {
        "metrics/precision(B)",
        "metrics/recall(B)",
        "metrics/mAP50(B)",
        "metrics/mAP50-95(B)",
    }
    console = Console(record=True, width=120)
    print_table(r, console)
    text = console.export_text()
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    assert lines[0] == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert lines[1][0] == "all" and lines[1][1:3] == [str(r.images), str(r.instances)]
    assert [ln[0] for ln in lines[2:6]] == NAMES[:4]
    assert "scratches" in text.splitlines()[-1]  # caption names the excluded class

    with pytest.raises(ValueError):
        evaluate([np.zeros((1, 5))], [np.zeros((0, 4))], [np.zeros(0)], NAMES)
    with pytest.raises(ValueError):
        evaluate([np.array([[0, 0, 1, 1, 0.5, 9]])], [np.zeros((0, 4))], [np.zeros(0)], NAMES)
    with pytest.raises(ValueError):
        evaluate([np.zeros((0, 6))], [np.zeros((1, 4))], [np.array([7])], NAMES)
    with pytest.raises(ValueError, match="x2 >= x1"):
        evaluate([np.array([[5, 0, 1, 1, 0.5, 0]])], [np.zeros((0, 4))], [np.zeros(0)], NAMES)


# ----------------------------------------------------------------------------- plots
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > 1000


def test_plots_write_pngs(tmp_path):
    from trainer.plots import plot_confusion_matrix, plot_pr_curve, plot_results_csv

    preds, gb, gc = make_dataset(2)
    r = evaluate(preds, gb, gc, NAMES)
    plot_pr_curve(r, tmp_path / "pr.png")
    plot_confusion_matrix(r, tmp_path / "cm.png")
    plot_confusion_matrix(r, tmp_path / "cm_counts.png", normalize=False)

    cols = [
        "epoch",
        "train/box_loss",
        "train/obj_loss",
        "train/cls_loss",
        "metrics/precision(B)",
        "metrics/recall(B)",
        "metrics/mAP50(B)",
        "metrics/mAP50-95(B)",
        "val/box_loss",
        "lr/pg0",
    ]  # val/obj_loss and val/cls_loss absent: plot what exists
    csv_path = tmp_path / "results.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"{c:>20}" for c in cols])  # Ultralytics pads its header
        for e in range(5):
            w.writerow([e, *np.round(np.random.default_rng(e).random(len(cols) - 1), 4)])
    plot_results_csv(csv_path, tmp_path / "results.png")
    for name in ("pr.png", "cm.png", "cm_counts.png", "results.png"):
        assert _is_png(tmp_path / name), name

    # degenerate inputs still give a picture
    empty = evaluate([np.zeros((0, 6))], [np.zeros((0, 4))], [np.zeros(0, dtype=int)], NAMES)
    plot_pr_curve(empty, tmp_path / "pr_empty.png")
    plot_confusion_matrix(empty, tmp_path / "cm_empty.png")
    assert _is_png(tmp_path / "pr_empty.png") and _is_png(tmp_path / "cm_empty.png")
