"""The data model every reader fills and every writer drains.

Boxes follow ``slimspect.detection``: ``x1, y1, x2, y2`` in pixels, x right, y down, the
origin at the top-left corner of the top-left pixel, so a box covering the whole image is
``(0, 0, width, height)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# NEU-DET's six classes, in the order the data set (and the paper) lists them.
NEU_DET_CLASSES: tuple[str, ...] = (
    "crazing",
    "inclusion",
    "patches",
    "pitted_surface",
    "rolled-in_scale",
    "scratches",
)

# Image file suffixes the readers look for (Ultralytics' list, less the exotic ones).
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp"}
)

# Split order used wherever splits are listed.
SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Sample:
    """One image and its boxes.

    Args:
        image: path of the image relative to the data set root, with ``/`` separators.
        width, height: image size in pixels.
        boxes: float32 (N, 4) ``x1, y1, x2, y2`` in pixels.
        classes: int64 (N,) class ids, indexes into ``DetectionDataset.names``.
    """

    image: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if len(boxes) != len(classes):
            raise ValueError(f"{self.image}: {len(boxes)} boxes but {len(classes)} classes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "classes", classes)

    @property
    def name(self) -> str:
        """The image file name without folders."""
        return self.image.rsplit("/", 1)[-1]


@dataclass
class DetectionDataset:
    """A detection data set: where it lives, its class names, and its splits.

    Args:
        root: folder that ``Sample.image`` paths are relative to.
        names: class names; a class id indexes this list.
        splits: split name (``train``, ``val``, ``test``, ...) -> samples.
    """

    root: Path
    names: list[str]
    splits: dict[str, list[Sample]] = field(default_factory=dict)

    def image_path(self, sample: Sample) -> Path:
        return self.root / sample.image

    def samples(self) -> Iterator[tuple[str, Sample]]:
        for split, samples in self.splits.items():
            for sample in samples:
                yield split, sample

    @property
    def num_images(self) -> int:
        return sum(len(s) for s in self.splits.values())

    @property
    def num_boxes(self) -> int:
        return sum(len(s.boxes) for _, s in self.samples())


def ordered_splits(names) -> list[str]:
    """Split names in the conventional order: train, val, test, then the rest sorted."""
    names = set(names)
    return [s for s in SPLIT_ORDER if s in names] + sorted(names - set(SPLIT_ORDER))


def load_image(path: Path, gray: bool = True) -> np.ndarray | None:
    """Decode an image file: uint8 (H, W) when ``gray``, else (H, W, 3) BGR; None if unreadable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    flags = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
    return cv2.imdecode(data, flags)


def image_info(path: Path) -> tuple[int, int, int]:
    """Width, height and channel count of an image from its header, without decoding it.

    Raises:
        OSError: the file is missing or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            width, height = im.size
            channels = len(im.getbands())
    except UnidentifiedImageError as exc:
        raise OSError(f"not a readable image: {path}") from exc
    return width, height, channels
