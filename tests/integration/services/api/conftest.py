"""Fixtures of the API tests: a private redis-server, one data set loaded through the real
aggregator (shared read-only by the query tests), and the API app with viewer and operator
keys. Tests that write use a database of their own (``scratch_url``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from aggregator_harness import new_namespace, run_async
from api_harness import (
    DATABASES,
    Api,
    Dataset,
    RedisServer,
    make_api,
    make_dataset,
    send_through_aggregator,
)

# Database 0 holds the shared data set; each scratch_url gets the next database.
_scratch_dbs = itertools.count(1)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("api-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dataset(redis_server: RedisServer) -> Dataset:
    data = make_dataset(new_namespace())
    run_async(send_through_aggregator(redis_server.url(0), data.ns, data.events))
    return data


@pytest.fixture(scope="session")
def api(redis_server: RedisServer, dataset: Dataset) -> Api:
    return run_async(make_api(redis_server.url(0)))


def new_scratch_url(redis_server: RedisServer) -> str:
    """A fresh, empty database of the private server (flushed by whoever asked for it)."""
    db = next(_scratch_dbs)
    if db >= DATABASES:
        pytest.fail("more scratch databases than the test redis-server has; raise DATABASES")
    return redis_server.url(db)


def flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()  # a database of the tests' own redis-server, never the shared one
    client.close()


@pytest.fixture
def scratch_url(redis_server: RedisServer) -> Iterator[str]:
    url = new_scratch_url(redis_server)
    yield url
    flush(url)


@pytest.fixture(scope="module")
def module_scratch_url(redis_server: RedisServer) -> Iterator[str]:
    url = new_scratch_url(redis_server)
    yield url
    flush(url)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tests leave files to look at (screenshots), printed by the tests that write."""
    root = Path(__file__).resolve().parents[4] / "test-artifacts"
    root.mkdir(exist_ok=True)
    return root
