"""The pipeline's Ray job quietens Ray Train's placement-group cleaner in every worker."""

from __future__ import annotations

import logging

import pytest

from trainer.pipeline.ray_logging import CLEANER_LOGGER, OncePerMessage, report_logger_name

pytestmark = pytest.mark.slow


def test_workers_pass_each_cleaner_warning_once(ray_local):
    import ray

    @ray.remote(num_cpus=0)
    def passed() -> list[bool]:
        logger = logging.getLogger(CLEANER_LOGGER)
        records = [
            logger.makeRecord(CLEANER_LOGGER, logging.WARNING, __file__, 1, msg, (), None)
            for msg in ("state API unavailable", "state API unavailable", "other")
        ]
        return [logger.filter(r) for r in records]

    # the hook ran in the worker: a repeat is dropped, a new message passes
    assert ray.get(passed.remote()) == [True, False, True]


def test_workers_silence_ray_trains_per_report_info(ray_local):
    import ray

    @ray.remote(num_cpus=0)
    def levels() -> tuple[bool, bool, bool]:
        from ray.train.v2._internal.execution import context

        logger = logging.getLogger(context.__file__)  # as Ray Train names it
        return (logger.isEnabledFor(logging.INFO), logger.isEnabledFor(logging.WARNING),
                logger.name == report_logger_name())  # fmt: skip

    assert ray.get(levels.remote()) == (False, True, True)


def test_once_per_message_filter():
    f = OncePerMessage()
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "m %s", ("a",), None)
    assert f.filter(record) and not f.filter(record)
    assert f.filter(logging.LogRecord("x", logging.WARNING, __file__, 1, "m %s", ("b",), None))
