"""Fixtures of the agent tests: a tiny real model (exported once per session), published
versions of it (good, tampered, badly signed, unloadable, failing the smoke test), the
shared Redis with a key namespace per test, and the real aggregator and fleet server.

The aggregator helpers are the aggregator tests' own (aggregator_harness.py), imported
from their folder: grpc.aio binds to ONE event loop per process, so every test that runs
gRPC in this process must use the same loop (``run_async``), whichever folder it is in.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.rollout.keys import FleetKeys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services"))  # aggregator_harness

from agent_models import TinyModel, build_tiny_model
from aggregator_harness import Namespace, cleanup, new_namespace, redis_or_fail


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """yolov4-n at 64 px, 1 channel, exported to ONNX, with its golden image and detections."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis_or_fail()
    yield c
    c.close()


@pytest.fixture
def ns(client: redis.Redis) -> Iterator[Namespace]:
    """A key namespace on the shared Redis: aggregator stations, tokens and fleet keys."""
    namespace = new_namespace()
    yield namespace
    cleanup(client, namespace)
    doomed = list(client.scan_iter(match=FleetKeys(namespace.prefix).pattern, count=1000))
    if doomed:
        client.delete(*doomed)
