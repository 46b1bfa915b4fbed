"""YOLO (Ultralytics) layout.

::

    data.yaml            path: <absolute root>, train: images/train, val: images/val,
                         names: {0: crazing, 1: inclusion, ...}
    images/{split}/*.png
    labels/{split}/*.txt one line per box: ``class cx cy w h``, normalised to [0, 1]

The writer keeps 6 decimals (Ultralytics' own precision), so a round trip moves a box
edge by at most about ``1e-6 * image size`` pixels. ``path`` is written absolute because
Ultralytics resolves a relative one against its own datasets folder; the reader falls back
to the YAML's folder when that absolute path no longer exists (a moved data set).

The reader also takes split entries that are lists of folders or ``.txt`` files listing
images, finds a label by replacing the last ``images`` folder of the image path with
``labels``, and reads a folder with ``images/`` and ``labels/`` but no YAML (class names
from ``classes.txt`` when present). An image without a label file has no boxes. When a
data set has no ``val`` split the YAML points ``val`` at the train images (Ultralytics
needs the key) and the reader, seeing the same folder twice, keeps only ``train``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from trainer.data.dataset import (
    IMAGE_SUFFIXES,
    SPLIT_ORDER,
    DetectionDataset,
    Sample,
    image_info,
    ordered_splits,
)
from trainer.data.formats._common import (
    CLASS_LIST,
    make_sample,
    read_class_list,
    relative,
)
from trainer.data.problems import Kind, Reporter

NAME = "yolo"
YAML_NAMES = ("data.yaml", "dataset.yaml")


def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix in (".yaml", ".yml")
    return _find_yaml(path) is not None or (
        (path / "images").is_dir() and (path / "labels").is_dir()
    )


def image_dir(out: Path, split: str) -> Path:
    return Path(out) / "images" / split


def write_annotations(ds: DetectionDataset) -> None:
    """Write label files and ``data.yaml`` for a data set whose images sit in :func:`image_dir`."""
    for split, samples in ds.splits.items():
        folder = ds.root / "labels" / split
        folder.mkdir(parents=True, exist_ok=True)
        for sample in samples:
            (folder / f"{Path(sample.name).stem}.txt").write_text(label_text(sample))
    order = ordered_splits(ds.splits)
    config: dict = {"path": str(Path(ds.root).resolve())}
    for split in order:
        config[split] = f"images/{split}"
    if order:
        config.setdefault("train", config[order[0]])
        config.setdefault("val", config["train"])
    config["names"] = dict(enumerate(ds.names))
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    (ds.root / "data.yaml").write_text(text)


def label_text(sample: Sample) -> str:
    """The YOLO label file of one sample: ``class cx cy w h`` normalised, 6 decimals."""
    b = sample.boxes.astype(np.float64)
    w, h = sample.width, sample.height
    rows = zip(
        sample.classes.tolist(),
        ((b[:, 0] + b[:, 2]) / (2 * w)).tolist(),
        ((b[:, 1] + b[:, 3]) / (2 * h)).tolist(),
        ((b[:, 2] - b[:, 0]) / w).tolist(),
        ((b[:, 3] - b[:, 1]) / h).tolist(),
    )
    return "".join(f"{c} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n" for c, cx, cy, bw, bh in rows)


def read(path: Path, report: Reporter) -> DetectionDataset:
    path = Path(path)
    yaml_file = path if path.is_file() else _find_yaml(path)
    if yaml_file is None:
        return _read_without_yaml(path, report)
    loaded = _load_yaml(yaml_file, report)
    if loaded is None:
        return DetectionDataset(yaml_file.parent, [], {})
    config, key_lines = loaded
    root = _resolve_root(yaml_file, config.get("path"))
    names = _names(config, yaml_file, key_lines, report)
    entries: dict[str, list[Path]] = {}
    for split in SPLIT_ORDER:
        value = config.get(split)
        if not value:
            continue
        paths = [_resolve(root, v) for v in (value if isinstance(value, list) else [value])]
        if any(paths == earlier for earlier in entries.values()):
            continue  # `val: images/train` and the like: the same images, not a new split
        for p in paths:
            if not p.exists():
                report(
                    yaml_file,
                    key_lines.get(split, 0),
                    Kind.BAD_LAYOUT,
                    f"{split}: {p} does not exist",
                )
        entries[split] = [p for p in paths if p.exists()]
    splits = {split: _read_split(root, paths, names, report) for split, paths in entries.items()}
    return DetectionDataset(root, names or [], splits)


def _read_without_yaml(folder: Path, report: Reporter) -> DetectionDataset:
    names = read_class_list(folder / CLASS_LIST)
    images = folder / "images"
    subdirs = sorted(p for p in images.iterdir() if p.is_dir()) if images.is_dir() else []
    entries = {p.name: [p] for p in subdirs} or {"train": [images]}
    splits = {split: _read_split(folder, paths, names, report) for split, paths in entries.items()}
    if names is None:  # no class list: name classes by their ids
        ids = [int(s.classes.max()) for v in splits.values() for s in v if len(s.classes)]
        names = [str(i) for i in range(max(ids, default=-1) + 1)]
    return DetectionDataset(folder, names, splits)


def _read_split(
    root: Path, paths: list[Path], names: list[str] | None, report: Reporter
) -> list[Sample]:
    images: list[Path] = []
    label_dirs: set[Path] = set()
    for entry in paths:
        if entry.is_dir():
            images += sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            label_dirs.add(label_path(entry / "x").parent)
        else:
            images += _read_list(entry, root, report)
    samples = []
    used_labels: dict[Path, Path] = {}
    for image in images:
        label = label_path(image)
        if label in used_labels:
            report(
                image,
                0,
                Kind.DUPLICATE_ID,
                f"{image.name} and {used_labels[label].name} share the label file {label.name}",
            )
            continue
        used_labels[label] = image
        try:
            width, height, _ = image_info(image)
        except OSError as exc:
            report(image, 0, Kind.UNREADABLE_IMAGE, str(exc))
            continue
        items = _read_labels(label, width, height, names, report) if label.is_file() else []
        samples.append(make_sample(relative(image, root), width, height, items, label, report))
    for folder in sorted(label_dirs):
        if not folder.is_dir():
            continue
        for label in sorted(folder.rglob("*.txt")):
            if label not in used_labels and label.name != CLASS_LIST:
                report(label, 0, Kind.ORPHAN_LABEL, "label file without an image")
    return samples


def _read_list(listing: Path, root: Path, report: Reporter) -> list[Path]:
    images, seen = [], set()
    for number, raw in enumerate(listing.read_text().splitlines(), 1):
        text = raw.strip()
        if not text:
            continue
        if text.startswith("./"):
            image = listing.parent / text[2:]
        else:
            image = _resolve(root, text)
        if image in seen:
            report(listing, number, Kind.DUPLICATE_ID, f"{text} is listed twice")
        elif not image.is_file():
            report(listing, number, Kind.MISSING_IMAGE, f"{text} does not exist")
        else:
            seen.add(image)
            images.append(image)
    return images


def _read_labels(label: Path, width: int, height: int, names: list[str] | None, report: Reporter):
    try:
        text = label.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        report(label, 0, Kind.MALFORMED_LINE, f"cannot read label file: {exc}")
        return []
    items = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 5:
            report(
                label,
                number,
                Kind.MALFORMED_LINE,
                f"expected 5 fields 'class cx cy w h', got {len(fields)}",
            )
            continue
        try:
            cls, cx, cy, w, h = (float(f) for f in fields)
        except ValueError:
            report(label, number, Kind.MALFORMED_LINE, f"non-numeric field in {raw.strip()!r}")
            continue
        if not cls.is_integer() or cls < 0 or (names is not None and cls >= len(names)):
            known = f"0..{len(names) - 1}" if names else "non-negative integers"
            report(label, number, Kind.UNKNOWN_CLASS, f"class {fields[0]} is not one of {known}")
            continue
        box = (
            (cx - w / 2) * width,
            (cy - h / 2) * height,
            (cx + w / 2) * width,
            (cy + h / 2) * height,
        )
        items.append((int(cls), box, number))
    return items


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _find_yaml(folder: Path) -> Path | None:
    for name in YAML_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    return found[0] if len(found) == 1 else None


def _load_yaml(path: Path, report: Reporter) -> tuple[dict, dict[str, int]] | None:
    text = path.read_text()
    try:
        node = yaml.compose(text)
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        report(path, mark.line + 1 if mark else 0, Kind.MALFORMED_YAML, str(exc).splitlines()[0])
        return None
    if not isinstance(config, dict):
        report(path, 1, Kind.MALFORMED_YAML, "expected a mapping with train, val and names")
        return None
    key_lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    return config, key_lines


def _names(
    config: dict, path: Path, key_lines: dict[str, int], report: Reporter
) -> list[str] | None:
    names = config.get("names")
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            ids = None
        if ids == list(range(len(ids))):
            return [str(names[k] if k in names else names[str(k)]) for k in ids]
        report(
            path,
            key_lines.get("names", 0),
            Kind.MALFORMED_YAML,
            "names must map ids 0..n-1 to names",
        )
        return None
    if isinstance(config.get("nc"), int):
        return [str(i) for i in range(config["nc"])]
    report(path, 0, Kind.MALFORMED_YAML, "no 'names' (or 'nc') in the data set YAML")
    return None


def _resolve_root(yaml_file: Path, path: str | None) -> Path:
    here = yaml_file.parent
    if not path:
        return here
    root = Path(path)
    if not root.is_absolute():
        root = here / root
    return root if root.is_dir() else here


def _resolve(root: Path, entry: str) -> Path:
    p = Path(str(entry))
    return p if p.is_absolute() else root / p
