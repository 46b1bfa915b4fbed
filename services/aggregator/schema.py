"""The Redis schema of slimspect: the one home of every key the aggregator writes.

Readers (the HTTP API, tests) build keys with the functions here and decode events with
:func:`decode_event`; nothing else spells a key. All keys of one station carry the hash
tag ``{st:<station>}``, so every key one event touches lives in one Redis Cluster slot and
the ingest script (``ingest.lua``) writes them atomically on a cluster as on one node.
Station names are restricted to ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}`` (:data:`STATION_RE`),
so no station can smuggle a ``{`` or ``}`` into the tag.

Keys (``S`` station, ``E`` event_id, ``C`` class name, ``i`` detection index)::

    ev:{st:S}:E             STRING  the event; ALSO ITS DEDUPE KEY (see below). A JSON
                                    array of the values of EVENT_FIELDS, in that order:
                                    event_id station camera captured_at_ms received_at_ms
                                    model_name model_version image_width image_height
                                    inference_ms frame_count n_detections detections, the
                                    last a list of {"box": [x1, y1, x2, y2], "score",
                                    "class_id", "class_name", "crop": bool}
    crop:{st:S}:E:i         STRING  the JPEG crop of detection i (bytes), only where sent
    idx:{st:S}              ZSET    time index: member E, score captured_at_ms
    idx:{st:S}:def          ZSET    defect index: events with >= 1 detection, member
                                    ``E \0 top`` (top over all its detections), score
                                    captured_at_ms. A query without a class merges one
                                    of these per station, not one per station and class
    idx:{st:S}:cls:C        ZSET    per-class time index: events with >= 1 detection of C;
                                    member ``E \0 top``, top = the highest score of a
                                    detection of C in the event (class_member), so the
                                    API's min_score filter is served by the index
    cls:{st:S}              SET     class names seen at the station (to find the class indexes)
    cnt:{st:S}:YYYYMMDDHH   HASH    hourly counters (UTC hour of captured_at_ms):
                                    frames         += frame_count (clean summaries count
                                                      every frame, so the rate is exact)
                                    defect_frames  += 1 for an event with detections
                                    defects        += number of detections
                                    defects:C      += detections of class C
    stations                SET     every station that ever reported. Global, NOT tagged:
                                    written by a plain SADD in the same pipeline as the
                                    batch's scripts (idempotent), never inside the script.
    auth:tokens             HASH    sha256(token) hex -> JSON {"station", "created_at_ms"}
                                    (owned by auth.py; global, not tagged)

Other packages' keys on the same Redis, named here so that nothing collides:
``auth:api-keys`` (HTTP API keys, services/api/keys.py) and ``{fleet}:*`` (fleet state,
rollouts and their audit log, services/rollout/keys.py).

Dedupe: the event key is the dedupe key. The script stores an event with ``SET ... NX``
(only when ``ev:{st:S}:E`` does not exist), in the same atomic step as every other write,
so a resent event is acknowledged as a duplicate and counted once.

Why one string and not a hash of fields: one ``SET NX PXAT`` is the dedupe check, the write
and the expiry in one command (a hash took EXISTS, HSET of 13 fields and PEXPIREAT), the
script gets the value as an argument it does not parse, readers fetch one value per event
(a pipeline of GETs) and decode it with one ``orjson.loads``, and no field name is stored
per event. Measured with ``benchmarks/bench_ingest.py`` and ``bench_query.py``. event_id is unique per station
(two stations may reuse an id).

Retention (``retention_days``, by capture time):
- the validator rejects (MALFORMED) an event captured before ``now - retention``: it would
  be trimmed at once, and its dedupe key could already have expired;
- the script trims the index entries it touches below ``now - retention``
  (ZREMRANGEBYSCORE) on every write, and a sweep task does the same for every station and
  class every ``sweep_interval_s`` (for classes that stopped occurring);
- the event, its crops, and an index (its newest member) expire at
  ``captured_at + retention + EXPIRY_SLACK_MS``; an hourly counter at the end of its hour
  plus the same. The slack (1 day, longer than any sweep interval) means an index entry is
  trimmed before its event expires: every index member has its event. Indexes only ever get
  a later expiry (PEXPIREAT NX then GT).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from slimspect.v1 import inspection_pb2

STATION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
EXPIRY_SLACK_MS = 86_400_000
HOUR_MS = 3_600_000
STATIONS_KEY = "stations"
TOKENS_KEY = "auth:tokens"

# Counter fields of cnt:{st:S}:YYYYMMDDHH (plus "defects:<class>").
FRAMES, DEFECT_FRAMES, DEFECTS = "frames", "defect_frames", "defects"
CLASS_COUNTER_PREFIX = "defects:"

# The fields of an event, in the order of its stored JSON array (event_value, decode_event).
EVENT_FIELDS = (
    "event_id",
    "station",
    "camera",
    "captured_at_ms",
    "received_at_ms",
    "model_name",
    "model_version",
    "image_width",
    "image_height",
    "inference_ms",
    "frame_count",
    "n_detections",
    "detections",
)


# Stored precision of the float32 wire values (about 7 significant digits): boxes to
# 1/1000 px, scores to 1e-6, the inference time to 1/1000 ms. Rounding makes them short
# decimals (0.9, not 0.8999999761581421) at half the cost of formatting each to 7
# significant digits, which was a sixth of the aggregator's time per event.
BOX_DECIMALS, SCORE_DECIMALS, MS_DECIMALS = 3, 6, 3

# Class index members: event id, NUL (never in an id: ids are printable), the top score.
# Appending a suffix that starts with the lowest character keeps the members in the order
# of their event ids, which is the order the API pages in.
CLASS_MEMBER_SEP = "\x00"


def class_member(event_id: str, top_score: float) -> str:
    """The member of an event in a class index (ingest.lua builds the same string)."""
    return f"{event_id}{CLASS_MEMBER_SEP}{score_text(top_score)}"


def class_member_parts(member: str) -> tuple[str, float | None]:
    """``(event_id, top score)`` of a class index member; the score is None for a member
    written before class members carried it (a bare event id)."""
    event_id, sep, top = member.partition(CLASS_MEMBER_SEP)
    return event_id, float(top) if sep else None


def score_text(score: float) -> str:
    """A score as stored: rounded to SCORE_DECIMALS, the shortest decimal (0.9)."""
    return repr(round(score, SCORE_DECIMALS))


def tag(station: str) -> str:
    """The hash tag of a station's keys."""
    return "{st:" + station + "}"


def event_key(station: str, event_id: str) -> str:
    return f"ev:{tag(station)}:{event_id}"


def crop_key(station: str, event_id: str, index: int) -> str:
    return f"crop:{tag(station)}:{event_id}:{index}"


def index_key(station: str) -> str:
    return f"idx:{tag(station)}"


def defect_index_key(station: str) -> str:
    return f"idx:{tag(station)}:def"


def class_index_key(station: str, class_name: str) -> str:
    return f"idx:{tag(station)}:cls:{class_name}"


def classes_key(station: str) -> str:
    return f"cls:{tag(station)}"


def hour_of(ms: int) -> str:
    """``YYYYMMDDHH`` of a unix-ms time, UTC."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y%m%d%H")


def counter_key(station: str, hour: str) -> str:
    return f"cnt:{tag(station)}:{hour}"


def _detection(d: inspection_pb2.Detection) -> dict[str, Any]:
    b = d.box
    return {
        "box": [
            round(b.x1, BOX_DECIMALS),
            round(b.y1, BOX_DECIMALS),
            round(b.x2, BOX_DECIMALS),
            round(b.y2, BOX_DECIMALS),
        ],
        "score": round(d.score, SCORE_DECIMALS),
        "class_id": d.class_id,
        "class_name": d.class_name,
        "crop": bool(d.crop_jpeg),
    }


def event_value(event: inspection_pb2.InspectionEvent, *, received_at_ms: int) -> bytes:
    """The stored value of a validated event: a JSON array in :data:`EVENT_FIELDS` order
    (crops are stored under their own keys)."""
    detections = [_detection(d) for d in event.detections]
    return orjson.dumps(
        [
            event.event_id,
            event.station,
            event.camera,
            event.captured_at_ms,
            received_at_ms,
            event.model_name,
            event.model_version,
            event.image_width,
            event.image_height,
            round(event.inference_ms, MS_DECIMALS),
            frame_count(event),
            len(detections),
            detections,
        ]
    )


def decode_event(raw: bytes | str) -> dict[str, Any]:
    """A stored event (the value of its ``ev:`` key) -> a dict keyed by EVENT_FIELDS."""
    return dict(zip(EVENT_FIELDS, orjson.loads(raw), strict=True))


def frame_count(event: inspection_pb2.InspectionEvent) -> int:
    """Frames an event stands for; 0 (unset by an older agent) means 1."""
    return event.frame_count or 1


@dataclass(frozen=True)
class IngestCall:
    """KEYS and ARGV of one ``ingest.lua`` call: a batch of validated events of ONE station.

    KEYS: 1 station index, 2 defect index, 3 class set, then H hourly counter keys (the distinct hours of
    the batch), then C class indexes (its distinct classes), then per event its event key
    followed by its crop keys.
    ARGV: 1 H, 2 C, 3 trim indexes below this score, 4 the events' bookkeeping as one JSON
    array (below), then the H counters' expire-at ms, then the C class names, then per
    event its stored value (:func:`event_value`) followed by its crops (bytes), in the
    order of their keys.
    Each event's bookkeeping: ``[event_id, captured_at_ms, expire-at ms of the event, its
    crops and the indexes it enters, hour (1-based, of KEYS' counters), frames,
    defect_frames, defects, [class (1-based), detections of it, top score of it (text), ...],
    crops, top score of all its detections (text; "" for a clean frame)]``. The script
    parses only this small array (cjson, in C); the values pass through as they are.
    """

    keys: list[str]
    args: list[str | bytes | int]


def ingest_call(
    events: Sequence[inspection_pb2.InspectionEvent], *, now_ms: int, retention_ms: int
) -> IngestCall:
    """The script call that stores ``events`` (validated, all of one station)."""
    if not events:
        raise ValueError("ingest_call needs at least one event")
    station = events[0].station
    hours: dict[int, int] = {}  # hour (ms // HOUR_MS) -> its 1-based number in KEYS
    hour_expire: list[int] = []
    class_ids: dict[str, int] = {}
    event_keys: list[str] = []
    values: list[bytes] = []  # per event: its value, then its crops
    rows: list[list[Any]] = []
    expire_slack = retention_ms + EXPIRY_SLACK_MS
    for event in events:
        if event.station != station:
            raise ValueError(f"one call stores one station: {event.station!r} != {station!r}")
        captured = event.captured_at_ms
        hour = captured // HOUR_MS
        h = hours.get(hour)
        if h is None:
            h = hours[hour] = len(hours) + 1
            hour_expire.append((hour + 1) * HOUR_MS + expire_slack)
        per_class: dict[int, list[Any]] = {}  # class -> [detections, top score]
        n_crops = 0
        event_keys.append(event_key(station, event.event_id))
        values.append(event_value(event, received_at_ms=now_ms))
        for i, d in enumerate(event.detections):
            c = class_ids.get(d.class_name)
            if c is None:
                c = class_ids[d.class_name] = len(class_ids) + 1
            seen = per_class.get(c)
            if seen is None:
                per_class[c] = [1, d.score]
            else:
                seen[0] += 1
                seen[1] = max(seen[1], d.score)
            if d.crop_jpeg:
                n_crops += 1
                event_keys.append(crop_key(station, event.event_id, i))
                values.append(d.crop_jpeg)
        n_detections = len(event.detections)
        rows.append(
            [
                event.event_id,
                captured,
                captured + expire_slack,
                h,
                frame_count(event),
                1 if n_detections else 0,
                n_detections,
                [x for c, (n, top) in per_class.items() for x in (c, n, score_text(top))],
                n_crops,
                score_text(max(top for _, top in per_class.values())) if per_class else "",
            ]
        )
    keys = [
        index_key(station),
        defect_index_key(station),
        classes_key(station),
        *(counter_key(station, hour_of(hour * HOUR_MS)) for hour in hours),
        *(class_index_key(station, name) for name in class_ids),
        *event_keys,
    ]
    args: list[str | bytes | int] = [
        len(hours),
        len(class_ids),
        now_ms - retention_ms,
        orjson.dumps(rows),
        *hour_expire,
        *class_ids,
        *values,
    ]
    return IngestCall(keys=keys, args=args)
