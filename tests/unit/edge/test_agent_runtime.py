"""The edge runtime's pre-processing as the manifest says: letterbox, gray or colour, and the
manifest's normalisation (the ONNX session itself runs in the integration tests)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edge_agent.runtime import Detector
from slimspect.manifest import InputSpec

PAD = 114 / 255


def tensor(image: np.ndarray, **spec) -> np.ndarray:
    """Detector.tensor of a model whose manifest input is ``spec`` (no session needed)."""
    holder = SimpleNamespace(manifest=SimpleNamespace(input=InputSpec(**spec)))
    x, _ = Detector.tensor(holder, image)  # type: ignore[arg-type]
    assert x.dtype == np.float32 and x.flags.c_contiguous
    return x


def test_a_colour_model_gets_rgb_letterboxed_from_a_bgr_frame():
    frame = np.zeros((16, 32, 3), np.uint8)
    frame[..., 0] = 255  # blue, as OpenCV orders it
    x = tensor(frame, width=32, height=32, channels=3)
    assert x.shape == (1, 3, 32, 32)
    rows = slice(8, 24)  # 16 rows of picture, 8 of padding above and below
    assert np.allclose(x[0, 2, rows], 1.0) and np.allclose(x[0, :2, rows], 0.0)  # RGB order
    assert np.allclose(x[0, :, :8], PAD) and np.allclose(x[0, :, 24:], PAD)


@pytest.mark.parametrize(
    ("frame", "channels", "value"),
    [
        (np.full((20, 20), 200, np.uint8), 3, 200 / 255),  # gray camera, colour model
        (np.full((20, 20, 3), 200, np.uint8), 1, 200 / 255),  # colour camera, gray model
        (np.full((20, 20), 50000, np.uint16), 1, 50000 / 65535),  # 16-bit line-scan frame
    ],
)
def test_gray_and_colour_frames_meet_either_kind_of_model(frame, channels, value):
    x = tensor(frame, width=20, height=20, channels=channels)
    assert x.shape == (1, channels, 20, 20)
    assert np.allclose(x, value, atol=1e-3)


def test_the_manifest_normalisation_applies_per_channel():
    frame = np.full((8, 8, 3), 255, np.uint8)
    x = tensor(
        frame,
        width=8,
        height=8,
        channels=3,
        normalize={"scale": 1 / 255, "mean": (0.5, 0.25, 0.0), "std": (0.25, 0.5, 2.0)},
    )
    assert np.allclose(x[0, :, 0, 0], [(1 - 0.5) / 0.25, (1 - 0.25) / 0.5, 1 / 2.0])
    plain = tensor(frame, width=8, height=8, channels=3)
    assert np.allclose(plain, 1.0)  # the default: pixel / 255
