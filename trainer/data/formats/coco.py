"""COCO detection JSON layout.

::

    annotations/instances_{split}.json   images, annotations (bbox [x, y, w, h] pixels), categories
    images/{split}/*.png

The writer numbers categories from 1 in class order and keeps 3 decimals of each bbox
number, so a round trip moves a box edge by at most 0.001 px; it writes one record per
line. The reader maps categories, sorted by id, to class ids 0..n-1 (later splits by
name), skips ``iscrowd`` annotations, and looks for ``file_name`` under ``images/{split}/``,
``{split}/``, ``images/`` and the root, in that order. JSON keeps no line numbers: a
problem with a record points at the line where the record's ``"id"`` is written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from trainer.data.dataset import DetectionDataset, Sample, ordered_splits
from trainer.data.formats._common import relative, split_name
from trainer.data.problems import Kind, Reporter, checked_box

NAME = "coco"
PREFIX = "instances_"


def detect(path: Path) -> bool:
    folder = Path(path) / "annotations"
    return folder.is_dir() and any(folder.glob("*.json"))


def image_dir(out: Path, split: str) -> Path:
    return Path(out) / "images" / split


def write_annotations(ds: DetectionDataset) -> None:
    folder = ds.root / "annotations"
    folder.mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": i + 1, "name": n, "supercategory": "defect"} for i, n in enumerate(ds.names)
    ]
    for split, samples in ds.splits.items():
        images, annotations = [], []
        for image_id, sample in enumerate(samples, 1):
            images.append(
                {
                    "id": image_id,
                    "file_name": sample.name,
                    "width": sample.width,
                    "height": sample.height,
                }
            )
            for box, cls in zip(sample.boxes.tolist(), sample.classes.tolist()):
                x1, y1, x2, y2 = box
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cls + 1,
                        "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)],
                        "area": round(w * h, 3),
                        "iscrowd": 0,
                    }
                )
        (folder / f"{PREFIX}{split}.json").write_text(_dump(images, annotations, categories))


def _dump(images: list, annotations: list, categories: list) -> str:
    def rows(records):
        return ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in records)

    return (
        '{"info": {"description": "written by slimspect"},\n'
        f'"images": [\n{rows(images)}\n],\n'
        f'"annotations": [\n{rows(annotations)}\n],\n'
        f'"categories": [\n{rows(categories)}\n]}}\n'
    )


def read(path: Path, report: Reporter) -> DetectionDataset:
    root = Path(path)
    files = {
        split_name(p.stem.removeprefix(PREFIX)): p
        for p in sorted((root / "annotations").glob("*.json"))
    }
    names: list[str] | None = None
    splits: dict[str, list[Sample]] = {}
    for split in ordered_splits(files):
        loaded = _load(files[split], report)
        if loaded is None:
            continue
        data, text = loaded
        locate = _Locator(files[split], text, report)
        categories = _categories(data, locate)
        if names is None:
            names = [categories[k] for k in sorted(categories)]
        splits[split] = _read_split(root, split, data, categories, names, locate)
    return DetectionDataset(root, names or [], splits)


def _load(file: Path, report: Reporter) -> tuple[dict, str] | None:
    try:
        text = file.read_text()
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        report(file, exc.lineno, Kind.MALFORMED_JSON, exc.msg)
        return None
    except UnicodeDecodeError as exc:
        report(file, 0, Kind.MALFORMED_JSON, str(exc))
        return None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        report(
            file,
            1,
            Kind.MALFORMED_JSON,
            "expected an object with lists images, annotations, categories",
        )
        return None
    return data, text


class _Locator:
    """Reports a problem at the line of a record's ``"id"`` (found only when needed)."""

    def __init__(self, file: Path, text: str, report: Reporter):
        self.file, self.text, self.report = file, text, report

    def line(self, section: str, record_id, nth: int = 1) -> int:
        """Line of the ``nth`` record of ``section`` with ``"id": record_id`` (0: not found)."""
        start = self.text.find(f'"{section}"')
        if start < 0 or not isinstance(record_id, int):
            return 0
        pattern = re.compile(rf'"id"\s*:\s*{record_id}(?![\d.])')
        match = None
        for match, _ in zip(pattern.finditer(self.text, start), range(nth)):
            pass
        return self.text.count("\n", 0, match.start()) + 1 if match else 0

    def __call__(self, section: str, record_id, kind: Kind, message: str, nth: int = 1) -> None:
        self.report(self.file, self.line(section, record_id, nth), kind, message)

    def at(self, section: str, record_id, prefix: str):
        """A reporter for ``make_sample`` that pins its problems on one record."""
        return lambda _file, _line, kind, message: self(
            section, record_id, kind, f"{prefix}{message}"
        )


def _categories(data: dict, locate: _Locator) -> dict[int, str]:
    categories: dict[int, str] = {}
    for cat in data["categories"]:
        cat_id = cat.get("id") if isinstance(cat, dict) else None
        if not isinstance(cat_id, int) or not isinstance(cat.get("name"), str):
            locate(
                "categories",
                cat_id,
                Kind.MALFORMED_JSON,
                f"category {cat!r} needs an int id and a name",
            )
        elif cat_id in categories:
            locate("categories", cat_id, Kind.DUPLICATE_ID, f"category id {cat_id} appears twice")
        else:
            categories[cat_id] = cat["name"]
    return categories


def _read_split(root, split, data, categories, names, locate) -> list[Sample]:
    index = {name: i for i, name in enumerate(names)}
    images: dict[int, dict] = {}
    files: dict[str, int] = {}
    dropped: set = set()  # ids of images already reported: their annotations go quietly
    seen: dict[int, int] = {}  # image id -> records with that id so far, past the first
    for image in data["images"]:
        image_id = image.get("id") if isinstance(image, dict) else None
        if not (
            isinstance(image_id, int)
            and isinstance(image.get("file_name"), str)
            and isinstance(image.get("width"), int)
            and isinstance(image.get("height"), int)
        ):
            locate(
                "images",
                image_id,
                Kind.MALFORMED_JSON,
                f"image {image!r} needs int id, width, height and a file_name",
            )
            continue
        if image_id in images or image_id in dropped:
            seen[image_id] = seen.get(image_id, 1) + 1
            locate(
                "images",
                image_id,
                Kind.DUPLICATE_ID,
                f"image id {image_id} appears twice",
                nth=seen[image_id],
            )
            continue
        if image["file_name"] in files:
            locate(
                "images",
                image_id,
                Kind.DUPLICATE_ID,
                f"{image['file_name']} is also image id {files[image['file_name']]}",
            )
            dropped.add(image_id)
            continue
        path = _find_image(root, split, image["file_name"])
        if path is None:
            locate("images", image_id, Kind.MISSING_IMAGE, f"image {image['file_name']} not found")
            dropped.add(image_id)
            continue
        files[image["file_name"]] = image_id
        images[image_id] = {"path": path, "meta": image, "items": []}
    for ann in data["annotations"]:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        if not isinstance(ann, dict) or ann.get("iscrowd"):
            continue
        bbox = ann.get("bbox")
        if not (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) for v in bbox)
        ):
            locate(
                "annotations",
                ann_id,
                Kind.MALFORMED_JSON,
                f"annotation {ann_id}: bbox must be [x, y, w, h]",
            )
            continue
        name = categories.get(ann.get("category_id"))
        if name not in index:
            locate(
                "annotations",
                ann_id,
                Kind.UNKNOWN_CLASS,
                f"annotation {ann_id}: category {ann.get('category_id')} is not one of {names}",
            )
            continue
        owner = images.get(ann.get("image_id"))
        if owner is None and ann.get("image_id") in dropped:
            continue
        if owner is None:
            locate(
                "annotations",
                ann_id,
                Kind.MISSING_IMAGE,
                f"annotation {ann_id}: image id {ann.get('image_id')} is not a readable image",
            )
            continue
        x, y, w, h = (float(v) for v in bbox)
        owner["items"].append((index[name], (x, y, x + w, y + h), ann_id))
    return [_sample(root, entry, locate) for entry in images.values()]


def _sample(root: Path, entry: dict, locate: _Locator) -> Sample:
    meta = entry["meta"]
    boxes, classes = [], []
    for cls, box, ann_id in entry["items"]:
        report = locate.at("annotations", ann_id, f"annotation {ann_id}: ")
        box = checked_box(box, meta["width"], meta["height"], Path(), 0, report)
        if box is not None:
            boxes.append(box)
            classes.append(cls)
    return Sample(
        relative(entry["path"], root),
        meta["width"],
        meta["height"],
        np.array(boxes, np.float32),
        np.array(classes, np.int64),
    )


def _find_image(root: Path, split: str, file_name: str) -> Path | None:
    for folder in (root / "images" / split, root / split, root / "images", root):
        if (folder / file_name).is_file():
            return folder / file_name
    return None
