"""The on-device outbox: every inspection event is in this SQLite file before it counts as
produced, and leaves it only when the aggregator has acknowledged it.

Durability. The database runs in WAL mode with ``synchronous=FULL`` by default: each
commit (one per frame) is fsynced before :meth:`Spool.append` returns, so an event the
agent reported as produced survives a kill -9 *and* a power loss. ``NORMAL`` survives a
kill -9 of the agent as well (the WAL is in the OS page cache), but a power loss may roll
back the last commits, losing events that were produced but not yet sent; it saves one
fsync per frame and is offered for stations on flash media that cannot take that write
rate. Acked events are never at risk either way: they are already in Redis, and an ack
whose deletion was rolled back only makes the aggregator see a duplicate.

Resuming sources. A camera that can resume (a video file, a watched folder) gives each
frame a position; the position is written in the SAME transaction as the frame's event,
so after a crash the camera restarts right after the last frame whose event is stored:
no frame is inspected twice and none is skipped.

Bounded size, and what gives way first. The spool holds at most ``max_bytes`` of event
payload (the SQLite file adds page overhead on top; it is not shrunk when rows go):

1. Below ``summarize_above`` x max_bytes every frame is its own event.
2. Above it, a clean frame (no detections) is folded into a summary: the newest clean
   event of its camera and model that was never sent, captured in the same UTC hour and
   at most ``summary_window`` earlier, gets ``frame_count + 1`` instead of a new row. The
   aggregator's frame counters stay exact while clean frames stop using space.
3. At max_bytes, a defect event makes room by evicting the oldest clean events; if even
   that is not enough, the new defect event is dropped. A clean frame that cannot be
   folded is dropped.

Every eviction and drop is counted (events and the frames they stood for) and reported
in the heartbeat and the metrics. An event that was sent once is never folded into again
(``attempted``): the aggregator may have stored it already, and a resend with a larger
frame_count would be taken as a duplicate, losing the frames added since.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from slimspect.v1 import inspection_pb2

HOUR_MS = 3_600_000
_MAX_PARAMS = 500  # ids per DELETE/UPDATE statement (SQLite allows 999 on old builds)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    camera          TEXT    NOT NULL,
    model           TEXT    NOT NULL,           -- name/version: a summary spans one model
    captured_at_ms  INTEGER NOT NULL,
    defect          INTEGER NOT NULL,           -- 1: has detections
    frame_count     INTEGER NOT NULL DEFAULT 1, -- overrides the payload's (summaries grow)
    attempted       INTEGER NOT NULL DEFAULT 0, -- sent at least once: never folded into
    size            INTEGER NOT NULL,           -- len(payload), what max_bytes bounds
    payload         BLOB    NOT NULL            -- InspectionEvent, serialized
);
CREATE INDEX IF NOT EXISTS events_fold ON events (camera, defect, attempted, id);
CREATE TABLE IF NOT EXISTS cursors (
    camera    TEXT PRIMARY KEY,
    position  TEXT NOT NULL
);
"""


class Outcome(enum.Enum):
    """What :meth:`Spool.append` did with an event."""

    STORED = "stored"  # a new row
    SUMMARISED = "summarised"  # folded into a clean-frame summary
    DROPPED = "dropped"  # no room (counted)


@dataclass(frozen=True)
class SpooledEvent:
    """One row on its way to the aggregator: ``event.frame_count`` is the row's."""

    id: int
    event: inspection_pb2.InspectionEvent
    size: int


@dataclass(frozen=True)
class SpoolStats:
    depth: int  # events waiting for an ack
    bytes: int  # their payload bytes
    dropped_events: int  # evicted or refused since this spool was opened
    dropped_frames: int  # frames those events stood for


@dataclass(frozen=True)
class _Evicted:
    events: int
    bytes: int
    frames: int


class Spool:
    """The SQLite outbox. Thread-safe: one connection behind a lock (calls are short)."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int,
        summarize_above: float = 0.5,
        summary_window_s: float = 60.0,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.summarize_at = int(self.max_bytes * summarize_above)
        self.summary_window_ms = int(summary_window_s * 1000)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit; every write below is one explicit transaction.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode})")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        depth, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events"
        ).fetchone()
        self._depth, self._bytes = int(depth), int(size)
        self._dropped_events = 0
        self._dropped_frames = 0
        self._closed = False

    # --- producing ------------------------------------------------------------------------

    def append(
        self, event: inspection_pb2.InspectionEvent, *, position: str | None = None
    ) -> Outcome:
        """Stores ``event`` (or folds or drops it, see the module docstring) durably.

        ``position`` is the camera's resume position after this frame; it is committed in
        the same transaction, whatever the outcome.
        """
        payload = event.SerializeToString()
        frames = max(1, event.frame_count)
        defect = 1 if len(event.detections) else 0
        model = f"{event.model_name}/{event.model_version}"
        with self._lock:
            with self._transaction():
                if position is not None:
                    self._db.execute(
                        "INSERT INTO cursors (camera, position) VALUES (?, ?) "
                        "ON CONFLICT (camera) DO UPDATE SET position = excluded.position",
                        (event.camera, position),
                    )
                evicted: _Evicted | None = None
                if not defect and self._bytes > self.summarize_at and self._fold(event, model):
                    outcome = Outcome.SUMMARISED
                elif self._bytes + len(payload) <= self.max_bytes or (
                    defect
                    and (evicted := self._evict_clean(self._bytes + len(payload) - self.max_bytes))
                ):
                    self._db.execute(
                        "INSERT INTO events (camera, model, captured_at_ms, defect, frame_count, "
                        "size, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            event.camera,
                            model,
                            event.captured_at_ms,
                            defect,
                            frames,
                            len(payload),
                            payload,
                        ),
                    )
                    outcome = Outcome.STORED
                else:
                    outcome = Outcome.DROPPED
            # Committed: only now do the in-memory totals follow.
            if evicted is not None:
                self._depth -= evicted.events
                self._bytes -= evicted.bytes
                self._dropped_events += evicted.events
                self._dropped_frames += evicted.frames
            if outcome is Outcome.STORED:
                self._depth += 1
                self._bytes += len(payload)
            elif outcome is Outcome.DROPPED:
                self._dropped_events += 1
                self._dropped_frames += frames
            return outcome

    def _fold(self, event: inspection_pb2.InspectionEvent, model: str) -> bool:
        """Adds the clean frame to a summary row; False when there is none to add to."""
        row = self._db.execute(
            "SELECT id, captured_at_ms, model FROM events WHERE camera = ? AND defect = 0 "
            "AND attempted = 0 ORDER BY id DESC LIMIT 1",
            (event.camera,),
        ).fetchone()
        if row is None:
            return False
        row_id, first_ms, row_model = row
        captured = event.captured_at_ms
        if (
            row_model != model
            or captured // HOUR_MS != first_ms // HOUR_MS
            or not 0 <= captured - first_ms <= self.summary_window_ms
        ):
            return False
        self._db.execute(
            "UPDATE events SET frame_count = frame_count + ? WHERE id = ?",
            (max(1, event.frame_count), row_id),
        )
        return True

    def _evict_clean(self, needed: int) -> _Evicted | None:
        """Deletes the oldest clean events until ``needed`` bytes are free; None if it cannot."""
        rows = self._db.execute(
            "SELECT id, size, frame_count FROM events WHERE defect = 0 ORDER BY id"
        )
        doomed: list[int] = []
        freed = frames = 0
        for row_id, size, count in rows:
            if freed >= needed:
                break
            doomed.append(row_id)
            freed += size
            frames += count
        rows.close()
        if freed < needed:
            return None
        self._delete(doomed)
        return _Evicted(events=len(doomed), bytes=freed, frames=frames)

    # --- sending --------------------------------------------------------------------------

    def take(self, *, after_id: int, max_events: int, max_bytes: int) -> list[SpooledEvent]:
        """The oldest events with ``id > after_id`` (at least one, then up to the limits).

        Marks them attempted first (committed), so none is folded into once it was sent.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, frame_count, attempted, size, payload FROM events WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (after_id, max_events),
            ).fetchall()
            out: list[SpooledEvent] = []
            fresh: list[int] = []
            total = 0
            for row_id, count, attempted, size, payload in rows:
                if out and total + size > max_bytes:
                    break
                event = inspection_pb2.InspectionEvent.FromString(payload)
                event.frame_count = count
                out.append(SpooledEvent(row_id, event, size))
                total += size
                if not attempted:
                    fresh.append(row_id)
            if fresh:
                with self._transaction():
                    for chunk in _chunks(fresh):
                        marks = ",".join("?" * len(chunk))
                        self._db.execute(
                            f"UPDATE events SET attempted = 1 WHERE id IN ({marks})", chunk
                        )
            return out

    def backlog(self, *, after_id: int = 0) -> int:
        """Events with ``id > after_id`` (not yet on the current stream)."""
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM events WHERE id > ?", (after_id,)
                ).fetchone()[0]
            )

    def remove(self, ids: Iterable[int]) -> int:
        """Deletes acknowledged events; returns how many were still there."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            freed = removed = 0
            with self._transaction():
                for chunk in _chunks(ids):
                    marks = ",".join("?" * len(chunk))
                    n, size = self._db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE id IN ({marks})",
                        chunk,
                    ).fetchone()
                    self._db.execute(f"DELETE FROM events WHERE id IN ({marks})", chunk)
                    removed += n
                    freed += size
            self._depth -= removed
            self._bytes -= freed
            return removed

    # --- state ----------------------------------------------------------------------------

    def cursor(self, camera: str) -> str | None:
        """The resume position committed with ``camera``'s last event, None if none."""
        with self._lock:
            row = self._db.execute(
                "SELECT position FROM cursors WHERE camera = ?", (camera,)
            ).fetchone()
        return None if row is None else str(row[0])

    def stats(self) -> SpoolStats:
        return SpoolStats(self._depth, self._bytes, self._dropped_events, self._dropped_frames)

    @property
    def under_pressure(self) -> bool:
        """Clean frames are being summarised (above ``summarize_above``)."""
        return self._bytes > self.summarize_at

    def close(self) -> None:
        """Checkpoints the WAL into the database file and closes it (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.close()

    # --- plumbing -------------------------------------------------------------------------

    def _delete(self, ids: Sequence[int]) -> None:
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            self._db.execute(f"DELETE FROM events WHERE id IN ({marks})", chunk)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), _MAX_PARAMS):
        yield list(ids[i : i + _MAX_PARAMS])
