"""The model that inspects frames now, and the one before it, kept for rollback.

The inspection loop reads :attr:`ModelSlot.active` once at the start of each frame and
uses that detector for the whole frame; :meth:`ModelSlot.swap` replaces the reference.
Both run on the agent's event loop thread, so a swap falls between two frames: no frame
is dropped or inspected twice, and none sees half of each model.

A model that came in by an update and then fails ``rollback_after_errors`` frames in a row
is swapped back to the previous one (the caller reports ``UPDATE_ROLLED_BACK``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.runtime import Detector


@dataclass(frozen=True)
class Rollback:
    """A rollback that happened: from the failing detector to the previous one."""

    failed: Detector
    restored: Detector
    reason: str


class ModelSlot:
    """Holds the active and the previous :class:`Detector`."""

    def __init__(self, *, rollback_after_errors: int = 5) -> None:
        self.active: Detector | None = None
        self.previous: Detector | None = None
        self._rollback_after = rollback_after_errors
        self._errors = 0
        self._on_probation = False
        self.ready = asyncio.Event()  # set once a model is active
        self.listeners: list[Callable[[Rollback], None]] = []

    def swap(self, detector: Detector, *, probation: bool = True) -> Detector | None:
        """Makes ``detector`` active; the one it replaces becomes ``previous`` (returned).

        ``probation``: the new model is rolled back after ``rollback_after_errors``
        consecutive frame errors (an update); False for the model restored at start.
        """
        old = self.active
        if old is not None and old is not detector:
            self.previous = old
        self.active = detector
        self._errors = 0
        self._on_probation = probation and self.previous is not None
        self.ready.set()
        return old

    def frame_ok(self, detector: Detector) -> None:
        if detector is self.active:
            self._errors = 0

    def frame_failed(self, detector: Detector, error: BaseException) -> Rollback | None:
        """Counts a failed frame; rolls back (and tells the listeners) when it is time."""
        if detector is not self.active:
            return None
        self._errors += 1
        if not self._on_probation or self._errors < self._rollback_after:
            return None
        assert self.previous is not None
        rollback = Rollback(
            failed=detector,
            restored=self.previous,
            reason=f"{self._errors} frames in a row failed on {detector.manifest.key}: {error}",
        )
        self.active, self.previous = self.previous, detector
        self._errors = 0
        self._on_probation = False
        for listener in self.listeners:
            listener(rollback)
        return rollback
