"""The smoke test's comparison of found and expected detections, and the shared backoff."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.backoff import backoff_delay
from edge_agent.smoke import compare

NAMES = ["scratch", "patch"]


def det(*rows):
    return np.array(rows, dtype=np.float32).reshape(-1, 6)


def check(found, expected, threshold=0.25):
    return compare(found, expected, iou=0.9, score=0.05, threshold=threshold, class_names=NAMES)


def test_equal_detections_pass_and_small_differences_are_tolerated():
    expected = det([10, 10, 50, 50, 0.8, 0], [0, 0, 64, 64, 0.6, 1])
    assert check(expected, expected) == []
    moved = det([0, 0, 64, 64, 0.62, 1], [10.5, 10, 50.5, 50, 0.78, 0])  # other order too
    assert check(moved, expected) == []


@pytest.mark.parametrize(
    ("found", "words"),
    [
        (det([10, 10, 50, 50, 0.8, 1]), "expected scratch 0.800"),  # wrong class
        (det([30, 30, 70, 70, 0.8, 0]), "expected scratch"),  # box moved
        (det([10, 10, 50, 50, 0.5, 0]), "expected scratch"),  # score off by 0.3
        (det(), "expected scratch"),  # nothing found
    ],
)
def test_differences_beyond_the_tolerance_fail(found, words):
    problems = check(found, det([10, 10, 50, 50, 0.8, 0]))
    assert problems and words in problems[0]


def test_extra_detections_fail_unless_they_sit_at_the_threshold():
    expected = det([10, 10, 50, 50, 0.8, 0])
    extra = det([10, 10, 50, 50, 0.8, 0], [0, 0, 20, 20, 0.7, 1])
    assert check(extra, expected) == ["unexpected patch 0.700 at [0.0, 0.0, 20.0, 20.0]"]
    borderline = det([10, 10, 50, 50, 0.8, 0], [0, 0, 20, 20, 0.27, 1])
    assert check(borderline, expected) == []  # within `score` of the threshold: may flicker
    missing_borderline = det([10, 10, 50, 50, 0.8, 0])
    assert check(missing_borderline, det([10, 10, 50, 50, 0.8, 0], [0, 0, 20, 20, 0.28, 1])) == []


def test_backoff_grows_to_its_ceiling_with_jitter_in_the_upper_half():
    assert backoff_delay(0, 0.5, 30) == 0
    assert backoff_delay(1, 0.5, 30, rng=lambda: 0.0) == 0.25
    assert backoff_delay(1, 0.5, 30, rng=lambda: 1.0) == 0.5
    assert backoff_delay(4, 0.5, 30, rng=lambda: 1.0) == 4.0
    assert backoff_delay(50, 0.5, 30, rng=lambda: 0.0) == 15.0
    assert backoff_delay(10_000, 0.5, 30, rng=lambda: 1.0) == 30.0
