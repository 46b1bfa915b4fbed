"""Per-event validation: an event is stored as sent, or refused with one RejectReason.

A refusal is final (the agent drops the event from its spool), so only the event itself
can cause one, never the server's state. A bad event never breaks its stream or the rest
of its batch. Checks run in this order and the first failure is reported:

1. MISSING_ID          event_id, station or camera empty
2. STATION_MISMATCH    station differs from the stream's authenticated station
3. MALFORMED           event_id over 128 characters or with control characters; camera
                       over 128; model_name or model_version empty; image width or height
                       0; captured_at_ms <= 0; inference_ms negative or not finite; more
                       than ``max_detections`` detections; frame_count > 1 with detections
                       (only clean-frame summaries stand for several frames).
                       frame_count 0 is NOT an error: proto3 older agents leave it unset,
                       and it counts as 1 frame.
4. CAPTURED_IN_FUTURE  captured_at_ms more than ``future_skew_ms`` ahead of this clock
5. MALFORMED           captured before ``now - retention``: it would be deleted at once
                       (and its dedupe key may be gone, so it could be counted twice)
6. per detection, in order:
   MALFORMED           no box; crop_jpeg that is not a JPEG (no FF D8 FF start)
   BOX_OUTSIDE_IMAGE   not within [0, width] x [0, height] with 0.5 px tolerance, x2 < x1,
                       y2 < y1, or a coordinate that is not finite
   SCORE_OUT_OF_RANGE  score not within [0, 1] (NaN included)
   UNKNOWN_CLASS       with ``known_classes`` for this model: class_id out of range or
                       class_name not the name at class_id; otherwise (any model not
                       listed): class_name empty, over 64 characters or with control
                       characters, or class_id < 0
   CROP_TOO_LARGE      crop_jpeg over ``max_crop_bytes``
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from services.aggregator.settings import AggregatorSettings
from slimspect.v1 import inspection_pb2

R = inspection_pb2.RejectReason
BOX_TOLERANCE_PX = 0.5
MAX_ID_CHARS = 128
MAX_CLASS_CHARS = 64
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class Rejection:
    """Why one event is refused: a RejectReason value and a one-line message."""

    reason: int
    message: str

    @property
    def reason_name(self) -> str:
        return R.Name(self.reason)


@dataclass(frozen=True)
class Limits:
    """What :func:`validate_event` enforces (see the module docstring)."""

    max_crop_bytes: int = 256 * 1024
    max_detections: int = 1000
    future_skew_ms: int = 5 * 60 * 1000
    retention_ms: int = 30 * 86_400_000
    known_classes: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: AggregatorSettings) -> Limits:
        return cls(
            max_crop_bytes=settings.max_crop_bytes,
            max_detections=settings.max_detections,
            future_skew_ms=settings.future_skew_ms,
            retention_ms=settings.retention_ms,
            known_classes={k: tuple(v) for k, v in (settings.known_classes or {}).items()},
        )


def _printable(text: str) -> bool:
    return text.isprintable()  # every character printable ("" too), in C


def validate_event(
    event: inspection_pb2.InspectionEvent, *, station: str, now_ms: int, limits: Limits
) -> Rejection | None:
    """None when ``event`` may be stored for ``station`` at ``now_ms``, else why not."""
    if not event.event_id or not event.station or not event.camera:
        missing = [n for n in ("event_id", "station", "camera") if not getattr(event, n)]
        return Rejection(R.MISSING_ID, f"empty {', '.join(missing)}")
    if event.station != station:
        return Rejection(
            R.STATION_MISMATCH,
            f"event station {event.station!r} but the stream authenticated as {station!r}",
        )
    if problem := _event_problem(event, limits):
        return Rejection(R.MALFORMED, problem)
    if event.captured_at_ms > now_ms + limits.future_skew_ms:
        ahead = (event.captured_at_ms - now_ms) / 1000
        return Rejection(
            R.CAPTURED_IN_FUTURE,
            f"captured_at_ms is {ahead:.1f} s ahead of the server clock "
            f"(allowed {limits.future_skew_ms / 1000:g} s)",
        )
    if event.captured_at_ms < now_ms - limits.retention_ms:
        return Rejection(
            R.MALFORMED,
            f"captured before the retention window ({limits.retention_ms / 86_400_000:g} days)",
        )
    for i, det in enumerate(event.detections):
        if rejection := _detection_rejection(i, det, event, limits):
            return rejection
    return None


def _event_problem(event: inspection_pb2.InspectionEvent, limits: Limits) -> str | None:
    if len(event.event_id) > MAX_ID_CHARS or not _printable(event.event_id):
        return f"event_id must be at most {MAX_ID_CHARS} printable characters"
    if len(event.camera) > MAX_ID_CHARS or not _printable(event.camera):
        return f"camera must be at most {MAX_ID_CHARS} printable characters"
    if not event.model_name or not event.model_version:
        return "empty model_name or model_version"
    if event.image_width == 0 or event.image_height == 0:
        return f"image size {event.image_width}x{event.image_height}"
    if event.captured_at_ms <= 0:
        return f"captured_at_ms {event.captured_at_ms} is not a unix time in milliseconds"
    if not math.isfinite(event.inference_ms) or event.inference_ms < 0:
        return f"inference_ms {event.inference_ms}"
    if len(event.detections) > limits.max_detections:
        return f"{len(event.detections)} detections (at most {limits.max_detections})"
    if event.frame_count > 1 and event.detections:
        return f"frame_count {event.frame_count} with detections (only clean summaries count >1)"
    return None


def _detection_rejection(
    i: int,
    det: inspection_pb2.Detection,
    event: inspection_pb2.InspectionEvent,
    limits: Limits,
) -> Rejection | None:
    if not det.HasField("box"):
        return Rejection(R.MALFORMED, f"detection {i}: no box")
    if det.crop_jpeg and not det.crop_jpeg.startswith(JPEG_MAGIC):
        return Rejection(R.MALFORMED, f"detection {i}: crop_jpeg is not a JPEG")
    b, w, h, tol = det.box, event.image_width, event.image_height, BOX_TOLERANCE_PX
    x1, y1, x2, y2 = b.x1, b.y1, b.x2, b.y2
    finite = math.isfinite
    inside = (
        finite(x1)
        and finite(y1)
        and finite(x2)
        and finite(y2)
        and -tol <= x1 <= x2 <= w + tol
        and -tol <= y1 <= y2 <= h + tol
    )
    if not inside:
        return Rejection(
            R.BOX_OUTSIDE_IMAGE,
            f"detection {i}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) not within the {w}x{h} image",
        )
    if not 0.0 <= det.score <= 1.0:  # False for NaN too
        return Rejection(R.SCORE_OUT_OF_RANGE, f"detection {i}: score {det.score:g}")
    if problem := _class_problem(det, event.model_name, limits):
        return Rejection(R.UNKNOWN_CLASS, f"detection {i}: {problem}")
    if len(det.crop_jpeg) > limits.max_crop_bytes:
        return Rejection(
            R.CROP_TOO_LARGE,
            f"detection {i}: crop_jpeg {len(det.crop_jpeg)} bytes (at most {limits.max_crop_bytes})",
        )
    return None


def _class_problem(det: inspection_pb2.Detection, model: str, limits: Limits) -> str | None:
    names = limits.known_classes.get(model)
    if names is not None:
        if not 0 <= det.class_id < len(names) or names[det.class_id] != det.class_name:
            return f"class {det.class_id}:{det.class_name!r} is not a class of model {model!r}"
        return None
    name = det.class_name
    if not name or len(name) > MAX_CLASS_CHARS or not _printable(name) or det.class_id < 0:
        return f"class {det.class_id}:{name!r} (need a printable name of 1-64 chars, id >= 0)"
    return None
