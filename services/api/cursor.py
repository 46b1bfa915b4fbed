"""Positions in the defect list and the opaque cursors that carry them between pages.

The list is in ONE total order, newest first: ``(captured_at_ms, station, event_id)``
descending. A :class:`Position` is a point in that order; a cursor is the position of the
last event a page examined, and the next page holds what comes strictly after it. Since
the order is total and the position is a value (not an offset), paging never repeats nor
skips an event, whatever is written meanwhile: an event inserted behind the cursor appears
on a later page, one inserted ahead of it is simply not part of this walk.

A cursor is ``base64url(JSON [version, captured_at_ms, station, event_id])``. It is
opaque to clients (the encoding may change with the version), but not secret.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from services.aggregator.schema import STATION_RE
from services.aggregator.validate import MAX_ID_CHARS

_VERSION = 1
# The longest cursor an accepted event can give: JSON in UTF-8 (up to 4 bytes a character of
# the event id; escapes of printable characters take 2), station up to 64 characters, the
# time up to 16 digits, plus brackets, quotes and commas; then base64 (4 chars per 3 bytes).
_MAX_CURSOR_CHARS = 4 * -(-(4 * MAX_ID_CHARS + 64 + 16 + 32) // 3)


class CursorError(ValueError):
    """A cursor this API did not issue (or one damaged on the way)."""


@dataclass(frozen=True, order=True)
class Position:
    """One event's place in the list; compared ascending (the list runs descending)."""

    captured_at_ms: int
    station: str
    event_id: str


def encode_cursor(position: Position) -> str:
    raw = json.dumps(
        [_VERSION, position.captured_at_ms, position.station, position.event_id],
        separators=(",", ":"),
        ensure_ascii=False,  # UTF-8: a non-ASCII id costs 4 bytes a character, not 12
    ).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor carries; :class:`CursorError` for anything else."""
    bad = CursorError("cursor is not one this API issued (pass next_cursor back unchanged)")
    if len(cursor) > _MAX_CURSOR_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad from None
    if not (isinstance(data, list) and len(data) == 4 and data[0] == _VERSION):
        raise bad
    _, ts, station, event_id = data
    if (
        not isinstance(ts, int)
        or isinstance(ts, bool)
        or not 0 <= ts < 2**53
        or not isinstance(station, str)
        or not STATION_RE.fullmatch(station)
        or not isinstance(event_id, str)
        or not event_id
    ):
        raise bad
    return Position(ts, station, event_id)
