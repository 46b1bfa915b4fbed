"""Ray worker processes' logging for the pipeline: a warning once, not every two seconds.

Without Ray's dashboard (``ray[default]`` not installed, or ``--include-dashboard=false``,
as the embedded stack's head runs) Ray's state API is off, and Ray Train's
PlacementGroupCleaner actor warns every check (2 s) for as long as a training stage runs
that the state API "may be temporarily unavailable": hundreds of lines that bury the
stage's own progress. :func:`setup_worker_logging` runs in every worker process of the
pipeline's Ray job (``runtime_env`` ``worker_process_setup_hook``, :data:`RUNTIME_ENV`)
and lets each distinct message of that logger through once. It also raises Ray Train's
per-report logger (named by its file's path) to WARNING: "Reporting training result N:
TrainingReport(...)" at every epoch repeats what the stage's own progress shows.
"""

from __future__ import annotations

import logging
import os

__all__ = ["CLEANER_LOGGER", "RUNTIME_ENV", "OncePerMessage", "setup_worker_logging"]

CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
REPORT_MODULE = ("train", "v2", "_internal", "execution", "context.py")
RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.setup_worker_logging"}


class OncePerMessage(logging.Filter):
    """Passes a record whose message was not seen before; drops repeats."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True


def report_logger_name() -> str:
    """The name of Ray Train's report logger: ``logging.getLogger(__file__)`` of its module."""
    import ray

    return os.path.join(os.path.dirname(ray.__file__), *REPORT_MODULE)


def setup_worker_logging() -> None:
    logger = logging.getLogger(CLEANER_LOGGER)
    if not any(isinstance(f, OncePerMessage) for f in logger.filters):
        logger.addFilter(OncePerMessage())
    logging.getLogger(report_logger_name()).setLevel(logging.WARNING)
