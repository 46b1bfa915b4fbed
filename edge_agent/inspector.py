"""One frame in, one spooled event out: detect, crop, build the InspectionEvent, spool it.

Runs in the agent's inference thread. The event's id is a UUIDv7 (time-ordered, random
below the millisecond), made once here: the spool keeps it across resends, and the
aggregator dedupes on it, so however often the uplink resends, the event is stored once.
"""

from __future__ import annotations

import os
import time
import uuid

import numpy as np

from edge_agent.cameras import Frame
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import Detector, Inference, jpeg_crops
from edge_agent.settings import CropSettings
from edge_agent.spool import Outcome, Spool
from slimspect.v1 import inspection_pb2


def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of unix milliseconds, version, variant, 74 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 are used
    value = (ms & (2**48 - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68) << 64  # 12 bits rand_a
    value |= 0b10 << 62
    value |= rand & (2**62 - 1)  # 62 bits rand_b
    return str(uuid.UUID(int=value))


def build_event(
    *,
    station: str,
    frame: Frame,
    detector: Detector,
    inference: Inference,
    crops: list[bytes],
) -> inspection_pb2.InspectionEvent:
    """The InspectionEvent of one inspected frame (frame_count 1)."""
    names = detector.class_names
    detections = []
    for i, (x1, y1, x2, y2, score, cid) in enumerate(np.asarray(inference.detections).tolist()):
        k = round(cid)
        detections.append(
            inspection_pb2.Detection(
                box=inspection_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2),
                score=min(max(score, 0.0), 1.0),
                class_id=k,
                class_name=names[k],
                crop_jpeg=crops[i] if i < len(crops) else b"",
            )
        )
    return inspection_pb2.InspectionEvent(
        event_id=uuid7(frame.captured_at_ms),
        station=station,
        camera=frame.camera,
        captured_at_ms=frame.captured_at_ms,
        model_name=detector.name,
        model_version=detector.version,
        image_width=inference.width,
        image_height=inference.height,
        detections=detections,
        inference_ms=inference.inference_ms,
        frame_count=1,
    )


class Inspector:
    """Inspects frames with whichever detector it is handed, and spools the result."""

    def __init__(
        self, *, station: str, spool: Spool, crops: CropSettings, metrics: AgentMetrics
    ) -> None:
        self.station = station
        self.spool = spool
        self.crops = crops
        self.metrics = metrics

    def inspect(self, detector: Detector, frame: Frame) -> Outcome:
        """Detects, spools (durably, with the frame's resume position), counts."""
        inference = detector.detect(frame.image)
        crops = (
            jpeg_crops(frame.image, inference.detections, self.crops)
            if len(inference.detections)
            else []
        )
        event = build_event(
            station=self.station, frame=frame, detector=detector, inference=inference, crops=crops
        )
        outcome = self.spool.append(event, position=frame.position)
        self.metrics.inference_seconds.observe(inference.inference_ms / 1000.0)
        self.metrics.frames.labels(frame.camera).inc()
        self.metrics.spooled.labels(outcome.value).inc()
        return outcome
