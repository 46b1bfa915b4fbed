"""freeze_startup_objects: start-up objects leave the collector's reach, later cycles do not."""

from __future__ import annotations

import gc
import weakref

from services.heap import freeze_startup_objects


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_startup_objects_are_frozen_and_later_cycles_still_collected():
    before = _Node()
    before.other = before  # a cycle alive at start-up: frozen, so kept
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 1000
        later = _Node()
        later.other = later
        ref = weakref.ref(later)
        del later
        gc.collect()
        assert ref() is None  # a cycle made after the freeze is still found
        assert before.other is before
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
