"""Synthetic NEU-DET-like data sets: grey steel surfaces with boxed defects.

Each image is a function of ``(seed, index)`` alone, so the same seed gives byte-identical
files and images can be drawn in any order or process. An image holds 1-4 defects (mostly
of one class, as in NEU-DET), faint to strong, small to large, on textured steel with
rolling streaks, uneven light, unlabelled clutter, blur and sensor noise. A box is the
tight bounding box of the pixels a defect changes noticeably (by more than 12 % of its
contrast, and at least 2.5 grey levels), before light, blur and noise.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from trainer.data.dataset import NEU_DET_CLASSES, DetectionDataset, Sample
from trainer.data.formats import WRITERS
from trainer.data.formats._common import prepare_output, relative
from trainer.data.problems import DatasetError
from trainer.data.synth_defects import PAINTERS, Mask
from trainer.data.synth_surface import NoiseBank, clutter, light, noise_bank, sensor, texture

DEFECTS_PER_IMAGE = (0.35, 0.3, 0.2, 0.15)  # P(1), P(2), P(3), P(4)
SAME_CLASS = 0.7  # chance that a further defect has the image's main class
CONTRAST = (2.2, 8.0)  # times the texture's deviation (at least 5 grey levels), log-uniform
# Per class: hair-thin cracks and scratches need more contrast to be seen at all.
CLASS_CONTRAST = (1.8, 1.0, 1.0, 1.0, 1.0, 1.5)
MAX_IOU = 0.3  # defects overlap at most this much
MIN_SIDE = 3  # pixels: no slivers cut off at the border
TRIES = 4  # placements tried per defect
# Lossless and fast: noisy texture barely compresses, so Huffman coding after the AVG
# filter is both quicker (0.4 ms at 200 px) and smaller than zlib's default.
# fmt: off
PNG = [
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]
# fmt: on


@dataclass(frozen=True)
class SynthImage:
    image: np.ndarray  # uint8 (size, size)
    boxes: np.ndarray  # float32 (N, 4) x1, y1, x2, y2 pixels
    classes: np.ndarray  # int64 (N,)


def render(seed: int, index: int, size: int = 200, contrast: float = 1.0) -> SynthImage:
    """Draw image ``index`` of the data set with ``seed``; ``contrast`` scales every
    defect's contrast (1: the NEU-DET-like faint-to-strong range; 3: plainly visible
    defects, which a few CPU minutes of training from scratch learn to find)."""
    rng = np.random.default_rng([seed, index])
    scale = float(contrast)  # the loop below names each defect's own contrast
    bank = noise_bank(size)
    image, std = texture(rng, bank)
    clutter(image, rng, bank, std)
    boxes: list[tuple[int, int, int, int]] = []
    classes: list[int] = []
    main = int(rng.integers(len(PAINTERS)))
    for _ in range(int(rng.choice(4, p=DEFECTS_PER_IMAGE)) + 1):
        cls = main if rng.random() < SAME_CLASS else int(rng.integers(len(PAINTERS)))
        painter, dark = PAINTERS[cls]
        contrast = (
            max(std, 5.0) * CLASS_CONTRAST[cls] * float(np.exp(rng.uniform(*np.log(CONTRAST))))
        ) * scale
        placed = _place(rng, bank, painter, contrast, boxes)
        if placed is None:
            continue
        mask, box = placed
        sign = -1.0 if rng.random() < dark else 1.0
        h, w = mask.values.shape
        window = image[mask.y0 : mask.y0 + h, mask.x0 : mask.x0 + w]
        cv2.scaleAdd(mask.values, sign * contrast, window, window)
        boxes.append(box)
        classes.append(cls)
    image = sensor(light(image, rng, bank), rng, bank)
    return _orient(
        image, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64), rng
    )


def _place(rng, bank: NoiseBank, painter, contrast: float, boxes) -> tuple[Mask, tuple] | None:
    """Paint a defect where it overlaps the others little; its mask and tight box."""
    size = bank.size
    threshold = max(0.12, 2.5 / contrast)
    for _ in range(TRIES):
        cx, cy = rng.uniform(0, size, 2)
        mask = painter(rng, bank, cx, cy, size / 200)
        if mask is None:
            continue
        depth = bank.crop(bank.octaves[3], rng, *mask.values.shape)
        mask.values[:] *= np.clip(0.75 + 0.25 * depth, 0, 1)  # uneven depth
        box = _tight_box(mask.values > threshold)
        if box is None:
            continue
        box = (box[0] + mask.x0, box[1] + mask.y0, box[2] + mask.x0, box[3] + mask.y0)
        if box[2] - box[0] < MIN_SIDE or box[3] - box[1] < MIN_SIDE:
            continue
        if all(_iou(box, other) <= MAX_IOU for other in boxes):
            return mask, box
    return None


def _tight_box(hit: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(hit.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(hit.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _orient(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, rng) -> SynthImage:
    """Turn the rolling direction (drawn along x) to x or y, and flip at random."""
    size = image.shape[1]
    if rng.random() < 0.5:
        image, boxes = image.T, boxes[:, [1, 0, 3, 2]]
    if rng.random() < 0.5:
        image, boxes = (
            image[:, ::-1],
            np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1),
        )
    if rng.random() < 0.5:
        image, boxes = (
            image[::-1],
            np.stack([boxes[:, 0], size - boxes[:, 3], boxes[:, 2], size - boxes[:, 1]], 1),
        )
    return SynthImage(np.ascontiguousarray(image), boxes.astype(np.float32).reshape(-1, 4), classes)


def val_indices(images: int, val_fraction: float, seed: int) -> set[int]:
    """The indices held out for validation: ``round(images * val_fraction)``, at least one
    when the fraction is positive and there are two images or more."""
    count = round(images * val_fraction)
    if val_fraction > 0 and images >= 2:
        count = min(max(count, 1), images - 1)
    rng = np.random.default_rng([seed, images, 1])
    return set(rng.permutation(images)[:count].tolist())


def synthesize(
    out_dir: Path,
    images: int,
    size: int = 200,
    seed: int = 0,
    fmt: str = "yolo",
    val_fraction: float = 0.2,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    contrast: float = 1.0,
) -> DetectionDataset:
    """Write a synthetic data set of ``images`` grey ``size`` x ``size`` PNGs to ``out_dir``.

    Args:
        out_dir: a new or empty folder.
        fmt: ``yolo``, ``voc`` or ``coco``.
        val_fraction: share of images held out as the ``val`` split.
        workers: processes to draw with; the files do not depend on it.
        progress: called with the number of images finished since the last call.
        contrast: defect contrast scale (:func:`render`).

    Returns:
        The data set as written.
    """
    if fmt not in WRITERS:
        raise DatasetError(f"cannot write format {fmt!r}: choose one of {', '.join(WRITERS)}")
    if images < 1 or size < 32:
        raise DatasetError("need at least 1 image of at least 32 pixels")
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val fraction must be in [0, 1), not {val_fraction}")
    if not 0 < contrast <= 20:
        raise DatasetError(f"contrast must be in (0, 20], not {contrast}")
    out_dir = Path(out_dir)
    prepare_output(out_dir)
    held_out = val_indices(images, val_fraction, seed)
    digits = max(6, len(str(images - 1)))
    paths = []
    for index in range(images):
        folder = WRITERS[fmt].image_dir(out_dir, "val" if index in held_out else "train")
        paths.append(folder / f"{index:0{digits}d}.png")
    for folder in {p.parent for p in paths}:
        folder.mkdir(parents=True, exist_ok=True)
    chunks = [list(range(i, min(i + 64, images))) for i in range(0, images, 64)]
    jobs = [(seed, size, contrast, [(i, paths[i]) for i in chunk]) for chunk in chunks]
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if workers > 1:
        # spawn, not fork: forking a process whose thread pools (OpenMP, OpenCV) are running
        # can deadlock the children.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_threaded) as pool:
            for done in pool.map(_draw_chunk, jobs):
                results.update(done)
                if progress:
                    progress(len(done))
    else:
        for job in jobs:
            done = _draw_chunk(job)
            results.update(done)
            if progress:
                progress(len(done))
    splits: dict[str, list[Sample]] = {"train": [], "val": []}
    for index, path in enumerate(paths):
        boxes, classes = results[index]
        split = "val" if index in held_out else "train"
        splits[split].append(Sample(relative(path, out_dir), size, size, boxes, classes))
    ds = DetectionDataset(out_dir, list(NEU_DET_CLASSES), {k: v for k, v in splits.items() if v})
    WRITERS[fmt].write_annotations(ds)
    return ds


def _draw_chunk(job) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    seed, size, contrast, items = job
    done = {}
    for index, path in items:
        drawn = render(seed, index, size, contrast)
        ok, data = cv2.imencode(".png", drawn.image, PNG)
        if not ok:
            raise DatasetError(f"could not encode {path}")
        data.tofile(str(path))
        done[index] = (drawn.boxes, drawn.classes)
    return done


def _single_threaded() -> None:
    cv2.setNumThreads(1)  # one process per core already
