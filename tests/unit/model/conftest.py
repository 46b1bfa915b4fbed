"""Shared small specs: the tests build the n variant at 64 px unless they need more."""

from __future__ import annotations

import pytest
import torch

from trainer.model import build, get_spec


@pytest.fixture
def small_spec():
    return get_spec("yolov4-n", input_size=64)


@pytest.fixture
def meta_build():
    """Build on the meta device: shapes and counts without allocating weights."""

    def _build(spec):
        with torch.device("meta"):
            return build(spec)

    return _build
