"""trainer.anchors: K-means++ anchors under d = 1 - IoU, fitness, scaling, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.anchors import (
    BPR_RATIO_THRESHOLD,
    DEFAULT_YOLOV4_ANCHORS,
    anchor_fitness,
    compare_report,
    kmeans_anchors,
    scale_anchors,
    wh_from_boxes,
    wh_iou,
)

# nine well separated sizes at a 256 px input (small to large by area), defect-like:
# thin scratches, round pits, wide patches
CENTRES = np.array(
    [[6, 6], [4, 24], [24, 5], [14, 14], [10, 48], [50, 12], [34, 34], [30, 110], [90, 80]],
    dtype=float,
)


def synthetic_wh(n_per: int = 300, jitter: float = 0.06, seed: int = 1) -> np.ndarray:
    """(9 * n_per, 2) sizes: each centre times log-normal noise of ``jitter``."""
    rng = np.random.default_rng(seed)
    parts = [c * np.exp(rng.normal(0, jitter, (n_per, 2))) for c in CENTRES]
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def wh() -> np.ndarray:
    return synthetic_wh()


@pytest.fixture(scope="module")
def ours(wh) -> np.ndarray:
    return kmeans_anchors(wh, k=9, seed=0)


def test_recovers_the_known_centres(ours):
    assert ours.shape == (9, 2)
    areas = ours.prod(axis=1)
    assert np.all(np.diff(areas) >= 0)  # sorted small to large
    # each true centre has a recovered anchor nearly identical to it (and vice versa)
    iou = wh_iou(CENTRES, ours)  # (9, 9)
    assert iou.max(axis=1).min() > 0.9
    assert sorted(iou.argmax(axis=1).tolist()) == list(range(9))


def test_deterministic_by_seed(wh, ours):
    np.testing.assert_array_equal(kmeans_anchors(wh, k=9, seed=0), ours)
    other = kmeans_anchors(wh, k=9, seed=123)
    assert other.shape == (9, 2)  # another seed may differ but is as good on this data
    assert anchor_fitness(wh, other).mean_iou == pytest.approx(
        anchor_fitness(wh, ours).mean_iou, abs=0.02
    )


def test_ours_fit_at_least_as_well_as_the_scaled_defaults(wh, ours):
    default = scale_anchors(DEFAULT_YOLOV4_ANCHORS, 608, 256)
    f_ours, f_def = anchor_fitness(wh, ours), anchor_fitness(wh, default)
    assert f_ours.mean_iou >= f_def.mean_iou
    assert f_ours.bpr >= f_def.bpr
    assert f_ours.mean_iou > 0.8 and f_ours.bpr == 1.0 and f_ours.bpr_iou == 1.0
    assert f_ours.n_labels == len(wh) and f_ours.ratio_threshold == BPR_RATIO_THRESHOLD


def test_anchor_fitness_by_hand():
    anchors = np.array([[10, 10]], dtype=float)
    wh = np.array([[10, 10], [20, 20], [5, 10], [10, 41]], dtype=float)
    f = anchor_fitness(wh, anchors)
    # IoUs: 1, 0.25, 0.5, 100/410
    assert f.mean_iou == pytest.approx((1 + 0.25 + 0.5 + 100 / 410) / 4)
    assert f.bpr == pytest.approx(3 / 4)  # 4.1x is beyond the decode's reach
    assert f.anchors_per_label == pytest.approx(3 / 4)
    assert f.bpr_iou == pytest.approx(2 / 4)  # 0.25 is not > 0.25
    two = anchor_fitness(wh, np.array([[10, 10], [10, 40]], dtype=float))
    # 10x40 is 4x (not < 4) from 10x10 and 5x10: only 20x20 fits both
    assert two.bpr == 1.0 and two.anchors_per_label == pytest.approx((1 + 2 + 1 + 1) / 4)


def test_fewer_distinct_sizes_than_k_is_a_clear_error():
    wh = np.repeat(CENTRES[:5], 10, axis=0)  # 50 labels, 5 distinct sizes
    with pytest.raises(ValueError, match="5 distinct box sizes"):
        kmeans_anchors(wh, k=9)
    anchors = kmeans_anchors(wh, k=5)  # exactly k distinct: each one an anchor
    np.testing.assert_allclose(
        anchors, CENTRES[:5][np.argsort(CENTRES[:5].prod(axis=1), kind="stable")]
    )


@pytest.mark.parametrize("bad", [[0.0, 5.0], [5.0, -1.0], [np.nan, 3.0]])
def test_degenerate_sizes_are_rejected(bad):
    wh = np.vstack([synthetic_wh(20), [bad]])
    with pytest.raises(ValueError, match="zero- or negative-size|non-finite"):
        kmeans_anchors(wh)
    with pytest.raises(ValueError):
        anchor_fitness(wh, DEFAULT_YOLOV4_ANCHORS)


def test_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        kmeans_anchors(np.ones((10, 3)))


def test_scale_anchors():
    s = scale_anchors(DEFAULT_YOLOV4_ANCHORS, 608, 304)
    np.testing.assert_allclose(s, DEFAULT_YOLOV4_ANCHORS / 2)
    r = scale_anchors(DEFAULT_YOLOV4_ANCHORS.ravel(), 608, (304, 608))  # (H, W)
    np.testing.assert_allclose(r[:, 0], DEFAULT_YOLOV4_ANCHORS[:, 0])
    np.testing.assert_allclose(r[:, 1], DEFAULT_YOLOV4_ANCHORS[:, 1] / 2)


def test_wh_from_boxes_scales_like_letterbox():
    boxes = np.array([[10, 20, 110, 70], [0, 0, 40, 40]], dtype=float)
    sizes = np.array([[1000, 500], [200, 400]])  # (width, height) of each box's image
    wh = wh_from_boxes(boxes, sizes, 256)
    # image 0: min(256/500, 256/1000) = 0.256; image 1: min(256/400, 256/200) = 0.64
    np.testing.assert_allclose(wh, [[100 * 0.256, 50 * 0.256], [40 * 0.64, 40 * 0.64]])
    np.testing.assert_allclose(wh_from_boxes(boxes, (1000, 500), 256)[0], wh[0])
    # agrees with slimspect.detection.letterbox's own scale
    from slimspect.detection import letterbox

    _, info = letterbox(np.zeros((500, 1000), np.uint8), 256)
    assert info.scale == pytest.approx(0.256)


def test_compare_report(wh):
    rep = compare_report(wh, 256, seed=0)
    json.dumps(rep)  # JSON-ready
    assert rep["input_size"] == [256, 256] and rep["n_labels"] == len(wh)
    assert len(rep["ours"]["anchors"]) == 9 and len(rep["default"]["anchors"]) == 9
    assert rep["ours"]["mean_iou"] >= rep["default"]["mean_iou"]
    np.testing.assert_allclose(
        rep["default"]["anchors"], np.round(DEFAULT_YOLOV4_ANCHORS * 256 / 608, 1)
    )
