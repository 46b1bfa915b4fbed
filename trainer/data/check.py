"""Find every problem in a data set: what the tolerant reader reports, plus image checks.

The reader side (see ``trainer.data.problems``) finds malformed label lines, XML and
JSON, unknown classes, boxes outside the image or without area, missing images, label
files without an image and duplicate ids. Here every image is also decoded (unreadable
images, sizes that differ from the annotation) and an image in two splits is flagged.
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.dataset import DetectionDataset, load_image
from trainer.data.formats import detect_format, read_dataset
from trainer.data.problems import DatasetError, Kind, Problem, Reporter


def check(path: Path) -> list[Problem]:
    """Every problem of the data set at ``path``, sorted by file and line; empty if none."""
    return inspect(path)[1]


def inspect(path: Path) -> tuple[DetectionDataset | None, list[Problem]]:
    """The data set as far as it could be read (None if not at all), and its problems."""
    path = Path(path)
    try:
        fmt = detect_format(path)
    except DatasetError as exc:
        return None, [Problem(path, 0, Kind.BAD_LAYOUT, str(exc))]
    report = Reporter(strict=False)
    ds = read_dataset(path, fmt, report)
    problems = report.problems + _image_problems(ds) + _split_overlap(ds)
    return ds, sorted(problems, key=lambda p: (str(p.file), p.line))


def _image_problems(ds: DetectionDataset) -> list[Problem]:
    problems = []
    for _, sample in ds.samples():
        file = ds.image_path(sample)
        image = load_image(file)
        if image is None:
            problems.append(Problem(file, 0, Kind.UNREADABLE_IMAGE, "cannot decode the image"))
        elif image.shape[:2] != (sample.height, sample.width):
            problems.append(
                Problem(
                    file,
                    0,
                    Kind.SIZE_MISMATCH,
                    f"annotated as {sample.width}x{sample.height}, "
                    f"the file is {image.shape[1]}x{image.shape[0]}",
                )
            )
    return problems


def _split_overlap(ds: DetectionDataset) -> list[Problem]:
    owner: dict[str, str] = {}
    problems = []
    for split, sample in ds.samples():
        if sample.image in owner and owner[sample.image] != split:
            problems.append(
                Problem(
                    ds.image_path(sample),
                    0,
                    Kind.DUPLICATE_ID,
                    f"the image is in both {owner[sample.image]} and {split}",
                )
            )
        owner.setdefault(sample.image, split)
    return problems
