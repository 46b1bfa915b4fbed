"""Detection output: the one post-processing shared by trainer evaluation and the edge runtime.

A detection is a box in source-image pixels ``x1, y1, x2, y2`` (float, x right, y down,
origin at the top-left corner of the top-left pixel), a score in [0, 1], a class id and
the class name. Hot paths carry detections as a float32 array of shape (N, 6):
``x1, y1, x2, y2, score, class_id``; :class:`Detection` is the record form used in
manifests, events and JSON.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Detection(BaseModel):
    """One detected object in source-image pixels."""

    model_config = ConfigDict(frozen=True)

    x1: float
    y1: float
    x2: float
    y2: float
    score: float = Field(ge=0.0, le=1.0)
    class_id: int = Field(ge=0)
    class_name: str
