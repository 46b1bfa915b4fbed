"""NEU-DET's published layouts (read only).

::

    IMAGES/*.jpg           or, in the Kaggle variant,   train/images/<class>/*.jpg
    ANNOTATIONS/*.xml                                   train/annotations/*.xml
                                                        validation/images/<class>/*.jpg
                                                        validation/annotations/*.xml

Folder names match in any case; images may sit in sub-folders; the annotations are VOC
XML (see ``voc_xml``). The flat layout is one split, ``train``, unless ``train.txt``,
``val.txt`` or ``test.txt`` at the root list image names (with or without suffix), one a
line. ``validation`` is read as ``val``. Class names come from ``classes.txt`` when present,
else from the files (NEU-DET's six, in NEU-DET's order).
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.dataset import IMAGE_SUFFIXES, DetectionDataset
from trainer.data.formats import voc_xml
from trainer.data.formats._common import CLASS_LIST, read_class_list, split_name
from trainer.data.problems import Kind, Reporter

NAME = "neu"
SPLIT_FOLDERS = ("train", "validation", "val", "valid", "test")
LIST_SPLITS = ("train", "val", "test")


def detect(path: Path) -> bool:
    return bool(_groups(Path(path)))


def read(path: Path, report: Reporter) -> DetectionDataset:
    root = Path(path)
    records, owners = [], []
    for split, images_dir, annotations_dir in _groups(root):
        images = _image_index(images_dir, report)
        used: set[str] = set()
        for xml_file in sorted(annotations_dir.glob("*.xml")):
            annotation = voc_xml.read(xml_file, report)
            if annotation is None:
                continue
            # An image shares its annotation's name; <filename> is the fallback (NEU-DET's
            # sometimes lacks the suffix).
            image = images.get(xml_file.stem) or images.get(Path(annotation.filename).stem)
            if image is None:
                report(
                    xml_file,
                    annotation.filename_line,
                    Kind.MISSING_IMAGE,
                    f"image {annotation.filename or xml_file.stem} not found in {images_dir.name}/",
                )
                continue
            used.add(image.stem)
            records.append((xml_file, annotation, image))
            owners.append(split)
        for stem, image in images.items():
            if stem not in used:
                report(image, 0, Kind.MISSING_ANNOTATION, "image without an annotation file")
    samples, names = voc_xml.to_samples(records, read_class_list(root / CLASS_LIST), root, report)
    lists = _split_lists(root)
    splits: dict[str, list] = {}
    for split, sample in zip(owners, samples):
        if split is None:
            split = lists.get(Path(sample.name).stem, "train") if lists else "train"
            if lists and Path(sample.name).stem not in lists:
                continue  # a list exists and leaves this image out
        splits.setdefault(split, []).append(sample)
    return DetectionDataset(root, names, splits)


def _groups(root: Path) -> list[tuple[str | None, Path, Path]]:
    """(split or None, images folder, annotations folder) for each group of the layout."""
    flat = _pair(root)
    if flat:
        return [(None, *flat)]
    groups = []
    for name in SPLIT_FOLDERS:
        folder = _child(root, name)
        pair = _pair(folder) if folder else None
        if pair:
            groups.append((split_name(name), *pair))
    return groups


def _pair(folder: Path) -> tuple[Path, Path] | None:
    images, annotations = _child(folder, "images"), _child(folder, "annotations")
    if images and annotations and any(annotations.glob("*.xml")):
        return images, annotations
    return None


def _child(folder: Path, name: str) -> Path | None:
    """The sub-folder of ``folder`` called ``name`` in any case."""
    if not folder.is_dir():
        return None
    exact = folder / name.upper()
    if exact.is_dir():
        return exact
    return next(
        (p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() == name), None
    )


def _image_index(folder: Path, report: Reporter) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for image in sorted(folder.rglob("*")):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if image.stem in index:
            report(
                image,
                0,
                Kind.DUPLICATE_ID,
                f"another image is also named {image.stem}: {index[image.stem]}",
            )
            continue
        index[image.stem] = image
    return index


def _split_lists(root: Path) -> dict[str, str]:
    """image stem -> split from ``train.txt``/``val.txt``/``test.txt`` at the root, if any."""
    owner: dict[str, str] = {}
    for split in LIST_SPLITS:
        listing = root / f"{split}.txt"
        if listing.is_file():
            for raw in listing.read_text().splitlines():
                if raw.strip():
                    owner.setdefault(Path(raw.strip()).stem, split)
    return owner
