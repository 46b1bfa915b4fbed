"""The smoke test a model passes before it may run: its golden image must give the
detections its signed manifest expects.

Matching is one-to-one and per class, best expected detection first: an expected
detection is matched by a detection of the same class whose box has IoU >= the
tolerance's ``iou`` with it and whose score is within ``score`` of it. Detections whose
score lies within ``score`` of the model's score threshold may appear or vanish without
failing the test (another CPU or ONNX Runtime build may move them across the threshold);
any other unmatched detection, expected or found, fails it.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_agent.errors import SmokeTestError
from edge_agent.runtime import Detector
from slimspect.detection import box_iou, to_array


def smoke_test(detector: Detector) -> int:
    """Runs the golden image through ``detector``; returns how many detections matched.

    Raises :class:`SmokeTestError` saying what differed, or that there is no golden image
    (a model that cannot be checked is not run).
    """
    fetched, manifest = detector.fetched, detector.manifest
    if manifest.golden is None or fetched.golden_path is None:
        raise SmokeTestError(f"{manifest.key}: the manifest has no golden image to smoke-test")
    image = cv2.imread(str(fetched.golden_path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SmokeTestError(f"{manifest.key}: cannot decode {fetched.golden_path}")
    try:
        found = detector.detect(image).detections  # (N, 6)
    except Exception as exc:  # whatever breaks inference refuses the model
        raise SmokeTestError(
            f"{manifest.key} failed the smoke test: inference on its golden image raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    expected = to_array(manifest.golden.expected)  # (M, 6)
    problems = compare(
        found,
        expected,
        iou=manifest.golden.tolerance.iou,
        score=manifest.golden.tolerance.score,
        threshold=detector.score_threshold,
        class_names=detector.class_names,
    )
    if problems:
        shown = "; ".join(problems[:3]) + (
            f"; ... {len(problems) - 3} more" if len(problems) > 3 else ""
        )
        raise SmokeTestError(
            f"{manifest.key} failed the smoke test on its golden image "
            f"({len(found)} detections, {len(expected)} expected): {shown}"
        )
    return len(expected)


def compare(
    found: np.ndarray,
    expected: np.ndarray,
    *,
    iou: float,
    score: float,
    threshold: float,
    class_names: list[str],
) -> list[str]:
    """What differs between (N, 6) ``found`` and (M, 6) ``expected`` detections; [] if nothing."""
    problems: list[str] = []
    unmatched = np.ones(len(found), dtype=bool)
    ious = box_iou(expected[:, :4], found[:, :4])  # (M, N)
    for i in np.argsort(-expected[:, 4], kind="stable"):
        exp = expected[i]
        ok = unmatched & (found[:, 5] == exp[5]) & (np.abs(found[:, 4] - exp[4]) <= score)
        ok &= ious[i] >= iou
        if ok.any():
            candidates = np.flatnonzero(ok)
            unmatched[candidates[np.argmax(ious[i][candidates])]] = False
        elif exp[4] > threshold + score:
            problems.append(f"expected {_describe(exp, class_names)} not found")
    for j in np.flatnonzero(unmatched):
        if found[j, 4] > threshold + score:
            problems.append(f"unexpected {_describe(found[j], class_names)}")
    return problems


def _describe(det: np.ndarray, class_names: list[str]) -> str:
    x1, y1, x2, y2, s, k = det.tolist()
    name = class_names[int(k)] if 0 <= int(k) < len(class_names) else str(int(k))
    return f"{name} {s:.3f} at [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]"
