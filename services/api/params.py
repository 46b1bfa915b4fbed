"""Query parameters that a plain type cannot check: times and time windows.

A time is unix milliseconds (digits) or ISO-8601 (``2024-05-01T12:00:00Z``, an offset, or
none: then UTC; a date alone means its midnight UTC). A window is ``[from, to)``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from services.aggregator.schema import STATION_RE
from services.api.errors import BadRequest

MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
TIME_HELP = "unix milliseconds or ISO-8601 (UTC when no offset is given)"
# STATION_RE as an anchored pattern for Path()/Query(): declared in OpenAPI, checked by pydantic.
STATION_PATTERN = f"^{STATION_RE.pattern}$"


def parse_time(param: str, value: str | None) -> int | None:
    """Unix ms of ``value``; 422 naming ``param`` when it is neither form."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        ms = int(text)
    else:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise BadRequest(param, f"{value!r} is not {TIME_HELP}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            ms = int(parsed.timestamp() * 1000)
        except (OverflowError, OSError, ValueError):
            raise BadRequest(param, f"{value!r} is out of range") from None
    if not 0 <= ms <= MAX_MS:
        raise BadRequest(param, f"{value!r} is out of range (1970 to 9999)")
    return ms


def parse_window(from_: str | None, to: str | None) -> tuple[int | None, int | None]:
    start, end = parse_time("from", from_), parse_time("to", to)
    if start is not None and end is not None and start > end:
        raise BadRequest("from", f"from ({from_}) is after to ({to})")
    return start, end
