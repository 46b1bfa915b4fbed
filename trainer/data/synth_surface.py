"""Steel-like background for synthetic images: texture, rolling streaks, lighting, sensor.

Everything is drawn with the rolling direction along x; ``trainer.data.synth`` turns the
finished image afterwards. Texture comes from a bank of noise tiles made once per image
size (fixed seed: the bank is part of the generator) and cropped at random offsets, so an
image costs a few array additions instead of fresh noise synthesis.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

BANK_SEED = 20240253  # the paper's article number; any constant does
OCTAVES = (2, 4, 8, 16, 32, 64)  # features across one image width, one tile per octave
STREAKS = ((60, 3), (140, 6))  # (features across the height, across the width): along x


@dataclass(frozen=True)
class NoiseBank:
    """Unit-variance noise tiles, twice the image size, and coordinate grids in [-1, 1]."""

    size: int
    octaves: tuple[np.ndarray, ...]  # smooth noise, features OCTAVES[k] across an image
    streaks: tuple[np.ndarray, ...]  # smooth noise stretched along x
    white: np.ndarray  # independent pixels: sensor noise
    xx: np.ndarray
    yy: np.ndarray

    def crop(
        self, tile: np.ndarray, rng: np.random.Generator, h: int | None = None, w: int | None = None
    ) -> np.ndarray:
        """A random ``h`` x ``w`` window (default the image size) of ``tile`` (a view)."""
        h = h or self.size
        w = w or self.size
        y = int(rng.integers(0, tile.shape[0] - h + 1))
        x = int(rng.integers(0, tile.shape[1] - w + 1))
        return tile[y : y + h, x : x + w]


@functools.lru_cache(maxsize=2)
def noise_bank(size: int) -> NoiseBank:
    rng = np.random.default_rng(BANK_SEED)
    tile = 2 * size

    def smooth(rows: int, cols: int) -> np.ndarray:
        grid = rng.standard_normal((rows + 3, cols + 3)).astype(np.float32)
        up = cv2.resize(grid, (tile, tile), interpolation=cv2.INTER_CUBIC)
        up -= up.mean()
        up /= up.std() + 1e-6
        return up

    octaves = tuple(smooth(2 * n, 2 * n) for n in OCTAVES)
    streaks = tuple(smooth(2 * rows, 2 * cols) for rows, cols in STREAKS)
    white = rng.standard_normal((tile, tile), dtype=np.float32)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    xx, yy = np.meshgrid(axis, axis)
    return NoiseBank(size, octaves, streaks, white, xx, yy)


def texture(rng: np.random.Generator, bank: NoiseBank) -> tuple[np.ndarray, float]:
    """Grey steel texture (float32, grey levels) and its standard deviation.

    Fractional Brownian motion over the octave tiles (random roughness), plus streaks and a
    row profile along the rolling direction.
    """
    size = bank.size
    level = rng.uniform(70, 175)
    std = rng.uniform(3.0, 10.0)
    persistence = rng.uniform(0.5, 0.85)
    weights = persistence ** np.arange(len(OCTAVES))
    weights *= std / np.sqrt((weights**2).sum())
    image = np.full((size, size), level, np.float32)
    for weight, tile in zip(weights, bank.octaves):
        cv2.scaleAdd(bank.crop(tile, rng), float(weight), image, image)
    for tile in bank.streaks:
        cv2.scaleAdd(bank.crop(tile, rng), std * rng.uniform(0.1, 0.6), image, image)
    rows = rng.standard_normal(size + 2).astype(np.float32)
    rows = np.convolve(rows, np.full(3, 1 / 3, np.float32), mode="valid")
    image += (np.float32(std * rng.uniform(0.0, 0.5)) * rows)[:, None]
    return image, float(std)


def light(image: np.ndarray, rng: np.random.Generator, bank: NoiseBank) -> np.ndarray:
    """Multiply by an illumination field: a linear gradient and a soft hot spot or shadow.

    The field is smooth, so it is computed on a 16 x 16 grid and scaled up.
    """
    axis = (np.arange(16) + 0.5) / 16 * 2 - 1
    xx, yy = np.meshgrid(axis, axis)
    gx, gy = rng.uniform(-0.18, 0.18, 2)
    gain = 1 + gx * xx + gy * yy
    if rng.random() < 0.5:
        cx, cy = rng.uniform(-1, 1, 2)
        radius = rng.uniform(0.5, 1.5)
        gain += rng.uniform(-0.2, 0.2) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / radius**2)
    size = bank.size
    image *= cv2.resize(gain.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    return image


def sensor(image: np.ndarray, rng: np.random.Generator, bank: NoiseBank) -> np.ndarray:
    """Optics blur, sensor noise and 8-bit quantisation: the finished uint8 image."""
    sigma = rng.uniform(0.0, 1.1)
    if sigma > 0.35:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    cv2.scaleAdd(bank.crop(bank.white, rng), rng.uniform(1.5, 6.0), image, image)
    return cv2.convertScaleAbs(np.maximum(image, 0, out=image))  # rounds and saturates


def clutter(image: np.ndarray, rng: np.random.Generator, bank: NoiseBank, std: float) -> None:
    """Unlabelled distractors, in place: stray specks, a faint roll mark, a faint stain."""
    size = bank.size
    u = size / 200
    if rng.random() < 0.5:
        canvas = np.zeros((size, size), np.uint8)
        for x, y in rng.uniform(0, size, (int(rng.integers(1, 7)), 2)):
            radius = round(rng.uniform(0.5, 1.5) * u * 4)
            cv2.circle(canvas, (int(x * 4), int(y * 4)), radius, 255, -1, cv2.LINE_AA, 2)
        sign = -1 if rng.random() < 0.7 else 1
        image += np.float32(sign * std * rng.uniform(1.0, 3.0) / 255) * canvas
    if rng.random() < 0.3:
        row = int(rng.integers(0, size))
        image[row, :] += np.float32(rng.choice([-1, 1]) * std * rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        stain = np.maximum(bank.crop(bank.octaves[0], rng), 0)
        cv2.scaleAdd(stain, rng.choice([-1, 1]) * std * rng.uniform(0.4, 1.0), image, image)
