"""What can be wrong with a data set, and how a reader reports it.

Every reader takes a :class:`Reporter`. A strict reporter (the default) raises
:class:`DatasetError` on the first problem, naming file and line; a tolerant one collects
every problem and lets the reader skip the bad record and go on, which is what
``trainer.data.check`` uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

# A box may stick out of its image by this much (pixels) before it is a problem; within
# it, readers clip the box to the image. Covers rounding of normalised YOLO floats and
# off-by-one habits of hand-made annotations.
BOX_TOLERANCE_PX = 1.0


class Kind(StrEnum):
    MISSING_IMAGE = "missing-image"
    UNREADABLE_IMAGE = "unreadable-image"
    SIZE_MISMATCH = "size-mismatch"
    BOX_OUTSIDE = "box-outside"
    EMPTY_BOX = "empty-box"
    UNKNOWN_CLASS = "unknown-class"
    MALFORMED_LINE = "malformed-line"
    MALFORMED_XML = "malformed-xml"
    MALFORMED_JSON = "malformed-json"
    MALFORMED_YAML = "malformed-yaml"
    ORPHAN_LABEL = "orphan-label"
    MISSING_ANNOTATION = "missing-annotation"
    DUPLICATE_ID = "duplicate-id"
    BAD_LAYOUT = "bad-layout"


@dataclass(frozen=True)
class Problem:
    """One problem at ``file:line`` (line 0: the file as a whole, or a line not known)."""

    file: Path
    line: int
    kind: Kind
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


class DatasetError(Exception):
    """A data set that cannot be read or written; ``problem`` says where, when known."""

    def __init__(self, message: str | Problem):
        self.problem = message if isinstance(message, Problem) else None
        super().__init__(str(message))


class Reporter:
    """Receives the problems a reader finds: raises on the first one, or collects them all."""

    def __init__(self, strict: bool = True):
        self.strict = strict
        self.problems: list[Problem] = []

    def __call__(self, file: Path, line: int, kind: Kind, message: str) -> None:
        problem = Problem(Path(file), line, Kind(kind), message)
        if self.strict:
            raise DatasetError(problem)
        self.problems.append(problem)


def checked_box(
    box: tuple[float, float, float, float],
    width: int,
    height: int,
    file: Path,
    line: int,
    report: Reporter,
) -> tuple[float, float, float, float] | None:
    """Return ``box`` (x1, y1, x2, y2 pixels) clipped to the image, or None after reporting it.

    A box more than :data:`BOX_TOLERANCE_PX` outside the image, or with no area, is a problem.
    """
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        report(file, line, Kind.MALFORMED_LINE, f"box {_fmt(box)} has a non-finite coordinate")
        return None
    if x2 <= x1 or y2 <= y1:
        report(file, line, Kind.EMPTY_BOX, f"box {_fmt(box)} has zero or negative area")
        return None
    tol = BOX_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        report(
            file,
            line,
            Kind.BOX_OUTSIDE,
            f"box {_fmt(box)} lies outside the {width}x{height} image",
        )
        return None
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        report(file, line, Kind.EMPTY_BOX, f"box {_fmt(box)} has no area inside the image")
        return None
    return x1, y1, x2, y2


def _fmt(box) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in box) + ")"
