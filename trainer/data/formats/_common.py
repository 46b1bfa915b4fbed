"""Small pieces the format readers and writers share."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from trainer.data.dataset import NEU_DET_CLASSES, DetectionDataset, Sample
from trainer.data.problems import DatasetError, Reporter, checked_box

# Folder or file names that mean the validation split.
SPLIT_ALIASES = {"validation": "val", "valid": "val"}
CLASS_LIST = "classes.txt"


def split_name(name: str) -> str:
    return SPLIT_ALIASES.get(name.lower(), name)


def make_sample(
    image: str,
    width: int,
    height: int,
    items: Iterable[tuple[int, tuple[float, float, float, float], int]],
    file: Path,
    report: Reporter,
) -> Sample:
    """A sample from ``(class_id, box, line)`` items; bad boxes are reported and dropped."""
    boxes, classes = [], []
    for cls, box, line in items:
        box = checked_box(box, width, height, file, line, report)
        if box is not None:
            boxes.append(box)
            classes.append(cls)
    return Sample(image, width, height, np.array(boxes, np.float32), np.array(classes, np.int64))


def guess_names(found: Iterable[str]) -> list[str]:
    """Class order when a format has no class list: NEU-DET's if it fits, else sorted."""
    found = set(found)
    if found <= set(NEU_DET_CLASSES):
        return list(NEU_DET_CLASSES)
    return sorted(found)


def read_class_list(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators (absolute if outside root)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def prepare_output(out: Path) -> None:
    """Create ``out``; refuse a non-empty folder so that stale files never mix in."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} exists and is not an empty folder; choose a new one")
    out.mkdir(parents=True, exist_ok=True)


def place_images(
    ds: DetectionDataset, out: Path, image_dir: Callable[[Path, str], Path]
) -> DetectionDataset:
    """Copy every image into ``image_dir(out, split)``; return the data set rooted at ``out``."""
    splits: dict[str, list[Sample]] = {}
    seen: dict[Path, set[str]] = {}  # folder -> image stems placed there
    for split, samples in ds.splits.items():
        folder = image_dir(out, split)
        folder.mkdir(parents=True, exist_ok=True)
        stems = seen.setdefault(folder, set())
        placed = []
        for sample in samples:
            stem = Path(sample.name).stem
            if stem in stems:
                raise DatasetError(
                    f"two images named {stem!r} would land in {folder}; rename one first"
                )
            stems.add(stem)
            target = folder / sample.name
            shutil.copyfile(ds.image_path(sample), target)
            placed.append(
                Sample(
                    relative(target, out), sample.width, sample.height, sample.boxes, sample.classes
                )
            )
        splits[split] = placed
    return DetectionDataset(Path(out), list(ds.names), splits)
