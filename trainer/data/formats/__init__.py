"""Read and write detection data sets: YOLO, COCO, Pascal VOC, NEU-DET (read only).

``read_dataset(path)`` tells the format from the layout; ``write_dataset(ds, out, fmt)``
copies the images and writes the annotations into a new, empty folder.

A round trip keeps boxes within the rounding each format imposes:

======  =================================================  ===============================
format  stored as                                          largest change of a box edge
======  =================================================  ===============================
yolo    class cx cy w h, normalised, 6 decimals            ``1e-6 * image size`` px
coco    [x, y, w, h] pixels, 3 decimals                    0.001 px
voc     1-based inclusive pixels, 3 decimals (reader       0.0005 px
        accepts the traditional integers as well)
======  =================================================  ===============================

plus float32 storage in :class:`~trainer.data.dataset.Sample` (about ``1e-7`` relative).
Readers clip boxes that stick out of the image by at most ``BOX_TOLERANCE_PX`` and report
the rest (see ``trainer.data.problems``).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from trainer.data.dataset import DetectionDataset
from trainer.data.formats import coco, neu, voc, yolo
from trainer.data.formats._common import place_images, prepare_output
from trainer.data.problems import DatasetError, Reporter

# Detection order matters: YOLO's test (a YAML, or images/ + labels/) is the loosest.
READERS: dict[str, ModuleType] = {"coco": coco, "voc": voc, "neu": neu, "yolo": yolo}
WRITERS: dict[str, ModuleType] = {"yolo": yolo, "voc": voc, "coco": coco}


def detect_format(path: Path) -> str:
    """The name of the format of the data set at ``path`` (a folder, or a YOLO YAML file)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    for name, module in READERS.items():
        if module.detect(path):
            return name
    raise DatasetError(
        f"cannot tell the format of {path}: expected a YOLO data.yaml or images/ + labels/, "
        "COCO annotations/*.json, VOC Annotations/ + JPEGImages/, or NEU-DET IMAGES/ + ANNOTATIONS/"
    )


def read_dataset(
    path: Path, fmt: str | None = None, report: Reporter | None = None
) -> DetectionDataset:
    """Read the data set at ``path``.

    Args:
        fmt: one of ``READERS``; None tells it from the layout.
        report: where problems go; the default raises :class:`DatasetError` on the first.
    """
    fmt = fmt or detect_format(path)
    if fmt not in READERS:
        raise DatasetError(f"unknown format {fmt!r}: choose one of {', '.join(READERS)}")
    return READERS[fmt].read(Path(path), report or Reporter(strict=True))


def write_dataset(ds: DetectionDataset, out: Path, fmt: str) -> DetectionDataset:
    """Write ``ds`` as ``fmt`` into the new or empty folder ``out``; return what was written."""
    if fmt not in WRITERS:
        raise DatasetError(f"cannot write format {fmt!r}: choose one of {', '.join(WRITERS)}")
    module = WRITERS[fmt]
    prepare_output(Path(out))
    written = place_images(ds, Path(out), module.image_dir)
    module.write_annotations(written)
    return written
