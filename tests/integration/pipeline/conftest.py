"""One local Ray for the pipeline tests (Ray 2.60 takes seconds and ~700 MB to start)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs for the whole session, shut down at the end."""
    import ray

    from trainer.pipeline.ray_logging import RUNTIME_ENV

    if ray.is_initialized():  # someone else's: use it, leave it running
        yield
        return
    # address="local": a Ray of its own, even when a `ray start` cluster runs on the machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,
             runtime_env=RUNTIME_ENV)  # fmt: skip
    try:
        yield
    finally:
        ray.shutdown()
