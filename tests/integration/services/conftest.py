"""Fixtures of the aggregator tests: the shared Redis and a key namespace per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from aggregator_harness import Namespace, cleanup, new_namespace, redis_or_fail


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis_or_fail()
    yield c
    c.close()


@pytest.fixture
def ns(client: redis.Redis) -> Iterator[Namespace]:
    namespace = new_namespace()
    yield namespace
    cleanup(client, namespace)
