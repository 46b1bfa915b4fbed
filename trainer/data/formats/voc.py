"""Pascal VOC layout.

::

    Annotations/{id}.xml        one VOC annotation per image (see ``voc_xml``)
    JPEGImages/{id}.{jpg,png}   every split's images in one folder
    ImageSets/Main/{split}.txt  image ids, one a line
    classes.txt                 class names in id order (ours; VOC itself has no class list)

Without ``ImageSets/Main`` every annotation is in one split, ``train``. Without
``classes.txt`` the class order is NEU-DET's when the names are NEU-DET's, else sorted.
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.dataset import IMAGE_SUFFIXES, DetectionDataset, image_info
from trainer.data.formats import voc_xml
from trainer.data.formats._common import CLASS_LIST, read_class_list, split_name
from trainer.data.problems import Kind, Reporter

NAME = "voc"


def detect(path: Path) -> bool:
    path = Path(path)
    return (path / "Annotations").is_dir() and (path / "JPEGImages").is_dir()


def image_dir(out: Path, split: str) -> Path:
    return Path(out) / "JPEGImages"


def write_annotations(ds: DetectionDataset) -> None:
    """Write XML files, split lists and ``classes.txt`` for images already in JPEGImages/."""
    annotations = ds.root / "Annotations"
    lists = ds.root / "ImageSets" / "Main"
    annotations.mkdir(parents=True, exist_ok=True)
    lists.mkdir(parents=True, exist_ok=True)
    for split, samples in ds.splits.items():
        ids = []
        for sample in samples:
            stem = Path(sample.name).stem
            ids.append(stem)
            objects = [
                voc_xml.VocObject(ds.names[c], tuple(box), 0)
                for box, c in zip(sample.boxes.tolist(), sample.classes.tolist())
            ]
            record = voc_xml.Annotation(sample.name, sample.width, sample.height, objects)
            depth = image_info(ds.image_path(sample))[2]
            (annotations / f"{stem}.xml").write_text(voc_xml.render(record, "JPEGImages", depth))
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (ds.root / CLASS_LIST).write_text("".join(f"{n}\n" for n in ds.names))


def read(path: Path, report: Reporter) -> DetectionDataset:
    root = Path(path)
    images = _image_index(root / "JPEGImages")
    split_ids = _split_ids(root, report)
    records, owners = [], []
    for split, ids in split_ids.items():
        for stem, listing, number in ids:
            xml_file = root / "Annotations" / f"{stem}.xml"
            if not xml_file.is_file():
                report(
                    listing or xml_file,
                    number,
                    Kind.MISSING_ANNOTATION,
                    f"no annotation {xml_file.name}",
                )
                continue
            annotation = voc_xml.read(xml_file, report)
            if annotation is None:
                continue
            image = _find_image(root / "JPEGImages", images, annotation.filename, stem)
            if image is None:
                report(
                    xml_file,
                    annotation.filename_line,
                    Kind.MISSING_IMAGE,
                    f"image {annotation.filename or stem} not found in JPEGImages/",
                )
                continue
            records.append((xml_file, annotation, image))
            owners.append(split)
    samples, names = voc_xml.to_samples(records, read_class_list(root / CLASS_LIST), root, report)
    splits = {split: [] for split in split_ids}
    for split, sample in zip(owners, samples):
        splits[split].append(sample)
    return DetectionDataset(root, names, splits)


def _split_ids(root: Path, report: Reporter) -> dict[str, list[tuple[str, Path | None, int]]]:
    """split -> (image id, list file, line) from ImageSets/Main, or every XML as ``train``."""
    main = root / "ImageSets" / "Main"
    lists = (
        {p.stem: p for p in sorted(main.glob("*.txt")) if "_" not in p.stem}
        if main.is_dir()
        else {}
    )
    if "trainval" in lists and ({"train", "val"} & set(lists)):
        del lists["trainval"]  # the union of train and val, not a split of its own
    if not lists:
        return {"train": [(p.stem, None, 0) for p in sorted((root / "Annotations").glob("*.xml"))]}
    splits: dict[str, list] = {}
    seen: dict[str, str] = {}
    for stem, listing in lists.items():
        split = split_name(stem)
        entries = splits.setdefault(split, [])
        for number, raw in enumerate(listing.read_text().splitlines(), 1):
            image_id = raw.split()[0] if raw.split() else ""
            if not image_id:
                continue
            if image_id in seen:
                report(
                    listing,
                    number,
                    Kind.DUPLICATE_ID,
                    f"{image_id} is already listed in {seen[image_id]}",
                )
                continue
            seen[image_id] = split
            entries.append((image_id, listing, number))
    return splits


def _image_index(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _find_image(folder: Path, index: dict[str, Path], filename: str, stem: str) -> Path | None:
    if filename and (folder / filename).is_file():
        return folder / filename
    return index.get(Path(filename).stem if filename else stem) or index.get(stem)
