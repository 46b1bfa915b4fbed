"""The spool: durable outbox, resume cursors, the size policy, and kill -9 of its writer."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from edge_agent.spool import HOUR_MS, Outcome, Spool
from slimspect.v1 import inspection_pb2 as pb

T0 = 1_750_000_000_000 - 1_750_000_000_000 % HOUR_MS + 60_000  # one minute into an hour


def event(
    i: int, *, defect: bool = False, camera: str = "cam0", at_ms: int | None = None, pad: int = 0
):
    detections = []
    if defect:
        detections.append(
            pb.Detection(
                box=pb.Box(x1=1, y1=2, x2=30, y2=40),
                score=0.9,
                class_id=0,
                class_name="scratch",
                crop_jpeg=b"\xff\xd8\xff" + b"x" * pad,
            )
        )
    return pb.InspectionEvent(
        event_id=f"e{i:06d}",
        station="st",
        camera=camera,
        captured_at_ms=T0 + i if at_ms is None else at_ms,
        model_name="m",
        model_version="1",
        image_width=64,
        image_height=48,
        detections=detections,
        frame_count=1,
    )


def test_events_leave_only_when_removed_and_survive_reopening(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1 << 20)
    for i in range(5):
        assert spool.append(event(i), position=str(i)) is Outcome.STORED
    batch = spool.take(after_id=0, max_events=3, max_bytes=1 << 20)
    assert [r.event.event_id for r in batch] == ["e000000", "e000001", "e000002"]
    assert (
        spool.take(after_id=batch[-1].id, max_events=10, max_bytes=1 << 20)[0].event.event_id
        == "e000003"
    )
    assert spool.remove([r.id for r in batch]) == 3
    assert spool.remove([batch[0].id]) == 0  # a second ack of the same events is harmless
    assert spool.stats().depth == 2
    spool.close()

    again = Spool(tmp_path / "s.sqlite", max_bytes=1 << 20)
    assert [r.event.event_id for r in again.take(after_id=0, max_events=10, max_bytes=1 << 20)] == [
        "e000003",
        "e000004",
    ]
    assert again.stats().depth == 2 and again.stats().bytes > 0
    assert again.cursor("cam0") == "4"
    assert again.cursor("other") is None
    assert again.backlog(after_id=0) == 2
    again.close()


def test_take_stops_at_max_bytes_but_always_gives_one(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", max_bytes=1 << 20)
    for i in range(3):
        spool.append(event(i, defect=True, pad=1000))
    assert len(spool.take(after_id=0, max_events=10, max_bytes=10)) == 1
    assert len(spool.take(after_id=0, max_events=10, max_bytes=2500)) == 2


def test_clean_frames_are_summarised_under_pressure_and_counts_stay_exact(tmp_path):
    probe = len(event(0).SerializeToString())
    spool = Spool(tmp_path / "s.sqlite", max_bytes=64 * 1024, summarize_above=0.5)
    spool.summarize_at = probe * 3  # pressure after three events, to keep the test small
    outcomes = [spool.append(event(i)) for i in range(10)]
    assert outcomes[:4] == [Outcome.STORED] * 4
    assert set(outcomes[4:]) == {Outcome.SUMMARISED}
    rows = spool.take(after_id=0, max_events=100, max_bytes=1 << 20)
    assert [r.event.frame_count for r in rows] == [1, 1, 1, 7]
    assert sum(r.event.frame_count for r in rows) == 10
    # Once sent, a summary is never folded into again (its frames may already be counted).
    assert spool.append(event(10)) is Outcome.STORED
    assert (
        spool.take(after_id=rows[-1].id, max_events=10, max_bytes=1 << 20)[0].event.frame_count == 1
    )


def test_a_summary_spans_one_hour_one_model_one_camera(tmp_path):
    spool = Spool(tmp_path / "s.sqlite", max_bytes=64 * 1024)
    spool.summarize_at = 0
    hour = T0 - T0 % HOUR_MS + HOUR_MS  # the start of the next hour
    assert spool.append(event(0, at_ms=hour - 10)) is Outcome.STORED
    assert spool.append(event(1, at_ms=hour - 5)) is Outcome.SUMMARISED
    assert spool.append(event(2, at_ms=hour + 5)) is Outcome.STORED  # next hour
    assert spool.append(event(3, at_ms=hour + 6, camera="cam1")) is Outcome.STORED
    other_model = event(4, at_ms=hour + 7)
    other_model.model_version = "2"
    assert spool.append(other_model) is Outcome.STORED
    assert spool.append(event(5, defect=True)) is Outcome.STORED  # defects are never folded


def test_full_spool_evicts_clean_events_for_defects_and_counts_every_drop(tmp_path):
    clean = len(event(0).SerializeToString())
    defect = len(event(0, defect=True, pad=60).SerializeToString())
    spool = Spool(tmp_path / "s.sqlite", max_bytes=64 * 1024, summarize_above=1.0)
    spool.max_bytes = clean * 8 + 2  # eight clean events fill it
    assert defect < spool.max_bytes
    for i in range(8):
        assert spool.append(event(i)) is Outcome.STORED
    assert spool.append(event(8)) is Outcome.DROPPED  # clean, no room, nothing to fold into
    assert spool.append(event(9, defect=True, pad=60)) is Outcome.STORED
    stats = spool.stats()
    evicted = -(-(defect + clean * 8 - spool.max_bytes) // clean)  # the oldest clean ones
    assert evicted >= 1
    assert stats.depth == 8 - evicted + 1
    assert stats.dropped_events == 1 + evicted
    assert stats.bytes <= spool.max_bytes
    kept = [r.event.event_id for r in spool.take(after_id=0, max_events=20, max_bytes=1 << 20)]
    assert kept[-1] == "e000009" and "e000000" not in kept and "e000007" in kept
    # Full of defects: a new defect event cannot make room and is dropped (and counted).
    spool.max_bytes = defect + 2
    spool.remove([r.id for r in spool.take(after_id=0, max_events=20, max_bytes=1 << 20)][:-1])
    assert spool.append(event(10, defect=True, pad=60)) is Outcome.DROPPED
    assert spool.stats().dropped_events == stats.dropped_events + 1


def test_synchronous_mode_is_validated(tmp_path):
    with pytest.raises(ValueError, match="FULL or NORMAL"):
        Spool(tmp_path / "s.sqlite", max_bytes=1 << 20, synchronous="OFF")
    spool = Spool(tmp_path / "n.sqlite", max_bytes=1 << 20, synchronous="NORMAL")
    assert spool.append(event(0)) is Outcome.STORED


WRITER = textwrap.dedent(
    """
    import sys
    from edge_agent.spool import Spool
    from slimspect.v1 import inspection_pb2 as pb
    spool = Spool(sys.argv[1], max_bytes=1 << 30)
    i = 0
    while True:
        e = pb.InspectionEvent(event_id=f"e{i}", station="st", camera="cam0",
                               captured_at_ms=1_750_000_000_000 + i, model_name="m",
                               model_version="1", image_width=8, image_height=8, frame_count=1)
        spool.append(e, position=str(i))
        print(i, flush=True)  # only after append returned: the event counts as produced
        i += 1
    """
)


def test_every_event_reported_as_spooled_survives_kill_9_of_the_writer(tmp_path):
    path = tmp_path / "s.sqlite"
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    reported = []
    deadline = time.monotonic() + 60
    while len(reported) < 150 and time.monotonic() < deadline:
        reported.append(int(child.stdout.readline()))
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(reported) >= 150
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    spool = Spool(path, max_bytes=1 << 30)
    ids = {r.event.event_id for r in spool.take(after_id=0, max_events=100_000, max_bytes=1 << 30)}
    assert {f"e{i}" for i in reported} <= ids
    assert int(spool.cursor("cam0")) >= reported[-1]  # the cursor committed with its event
    assert len(ids) == spool.stats().depth
