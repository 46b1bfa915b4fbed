"""The API's cursor codec and time parameters, without Redis."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi import HTTPException
from hypothesis import given
from hypothesis import strategies as st

from services.api.cursor import CursorError, Position, decode_cursor, encode_cursor
from services.api.params import parse_time, parse_window

stations = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
ids = st.text(min_size=1, max_size=128).filter(str.isprintable)


def test_the_longest_cursor_decodes() -> None:
    worst = Position(2**53 - 1, "s" * 64, "\U0001d400" * 128)  # 128 astral characters
    assert decode_cursor(encode_cursor(worst)) == worst


@given(st.integers(0, 2**53 - 1), stations, ids)
def test_cursor_round_trips(ts: int, station: str, event_id: str) -> None:
    position = Position(ts, station, event_id)
    cursor = encode_cursor(position)
    assert cursor.isascii() and "=" not in cursor
    assert decode_cursor(cursor) == position


def _b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!",
        "x" * 600,
        _b64({"a": 1}),
        _b64([1, 5, "st"]),
        _b64([2, 5, "st", "e"]),  # another version
        _b64([1, -5, "st", "e"]),
        _b64([1, True, "st", "e"]),
        _b64([1, 5, "bad station", "e"]),
        _b64([1, 5, "st", ""]),
    ],
)
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(CursorError, match="not one this API issued"):
        decode_cursor(cursor)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1714564800000", 1714564800000),
        ("0", 0),
        ("2024-05-01T12:00:00Z", 1714564800000),
        ("2024-05-01T14:00:00+02:00", 1714564800000),
        ("2024-05-01T12:00:00", 1714564800000),  # no offset: UTC
        ("2024-05-01T12:00:00.250Z", 1714564800250),
        ("2024-05-01", 1714521600000),
        (" 2024-05-01T12:00:00Z ", 1714564800000),
    ],
)
def test_times_parse(text: str, ms: int) -> None:
    assert parse_time("from", text) == ms


@pytest.mark.parametrize(
    "text", ["", "yesterday", "-5", "1e12", "2024-13-01", "99999999999999999", "１２３"]
)
def test_bad_times_name_the_parameter(text: str) -> None:
    with pytest.raises(HTTPException) as info:
        parse_time("to", text)
    assert info.value.status_code == 422
    assert str(info.value.detail).startswith("to: ")


def test_window_refuses_from_after_to() -> None:
    assert parse_window(None, None) == (None, None)
    assert parse_window("5", "5") == (5, 5)
    with pytest.raises(HTTPException, match="after"):
        parse_window("6", "5")
