"""Completion records of the pipeline's stages and the rule that decides what runs.

A stage's folder in the store (``runs/<run_id>/<stage>/``) holds ``started.json`` from
the moment it starts and ``done.json`` when, and only when, it finished: its settings, an
id, the ids of the upstream records it was built from, its outputs (paths relative to the
run folder), start/finish times and seconds, and what it found. The rule
(:func:`decide`), the same as ``slimspect compress``'s:

* once a stage runs, every later stage runs too;
* a finished stage with the same settings, whose inputs are the upstream records it was
  built from and whose outputs exist, is skipped;
* a finished stage with OTHER settings is an error (:class:`PipelineError`): a changed
  config never silently overwrites a run's results;
* a stage that started but did not finish is redone; when its ``started.json`` has the
  same settings and inputs, the attempt id is kept, so a training stage resumes from the
  checkpoints that attempt left in the store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from trainer.compress.chain import settings_diff

__all__ = [
    "DONE",
    "STARTED",
    "Decision",
    "PipelineError",
    "decide",
    "done_record",
    "plain",
    "started_record",
]

DONE = "done.json"
STARTED = "started.json"


class PipelineError(RuntimeError):
    """A problem the user can fix (a changed rerun, a missing input, a failed stage)."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def plain(value: Any) -> Any:
    """JSON round trip: what a record will hold once stored (tuples -> lists, paths -> str)."""
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class Decision:
    """Whether a stage runs, why, and the attempt id it runs under."""

    run: bool
    reason: str
    attempt: str


def decide(
    stage: str,
    *,
    done: Mapping[str, Any] | None,
    started: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    inputs: Mapping[str, str],
    earlier_ran: bool,
    outputs_exist: bool = True,
) -> Decision:
    """What to do with ``stage`` (see the module docstring).

    Args:
        done, started: the stage's stored records (None when absent).
        settings: what the stage would run with now (plain JSON values).
        inputs: ``upstream stage -> record id`` of the records it would be built from.
        earlier_ran: an earlier stage runs in this call.
        outputs_exist: the outputs ``done`` lists are all in the store.
    Raises:
        PipelineError: ``done`` was finished with other settings.
    """
    settings, inputs = plain(settings), plain(inputs)
    if done is not None:
        changed = settings_diff(done.get("settings") or {}, settings)
        if changed:
            raise PipelineError(
                f"stage {stage} of this run finished with other settings ({'; '.join(changed)}): "
                "use another run id, or delete the stage's folder in the store to redo it "
                "and the stages after it"
            )
    fresh = uuid.uuid4().hex[:12]
    if earlier_ran:
        return Decision(True, "an earlier stage ran", fresh)
    if done is not None:
        if dict(done.get("inputs") or {}) != inputs:
            return Decision(True, "it was built from other upstream results", fresh)
        if not outputs_exist:
            return Decision(True, "an output of it is missing", fresh)
        return Decision(False, f"finished {done.get('finished_at')}", str(done.get("attempt")))
    if (
        started is not None
        and started.get("settings") == settings
        and dict(started.get("inputs") or {}) == inputs
        and started.get("attempt")
    ):
        return Decision(True, "it started but did not finish: resuming", str(started["attempt"]))
    return Decision(True, "not run yet" if started is None else "it did not finish", fresh)


def started_record(settings: Mapping[str, Any], inputs: Mapping[str, str], attempt: str) -> dict:
    return plain({"settings": settings, "inputs": inputs, "attempt": attempt, "at": now()})


def done_record(
    stage: str,
    *,
    settings: Mapping[str, Any],
    inputs: Mapping[str, str],
    attempt: str,
    outputs: Mapping[str, str],
    started_at: str,
    seconds: float,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``done.json`` of a finished stage (the keys ``slimspect compress`` writes too)."""
    return plain(
        {
            "stage": stage,
            "id": uuid.uuid4().hex,
            "attempt": attempt,
            "settings": settings,
            "inputs": inputs,
            "outputs": outputs,
            "started_at": started_at,
            "finished_at": now(),
            "seconds": seconds,
            **(info or {}),
        }
    )
