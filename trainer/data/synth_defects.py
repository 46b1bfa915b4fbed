"""The six NEU-DET defect shapes, drawn as masks for synthetic images.

Each painter draws one defect, centred near ``(cx, cy)`` in an image of ``bank.size``
pixels with the rolling direction along x, and returns a :class:`Mask`: float32 values in
[0, 1] (how much of the defect's contrast each pixel gets) over the window of the image
the defect touches, or None when that window is empty. ``u`` is the pixel scale: sizes
are designed for 200-pixel images and scale with the image. Shapes are drawn with OpenCV
primitives (anti-aliased, quarter-pixel precision) into the window only, then softened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from trainer.data.synth_surface import OCTAVES, NoiseBank

SHIFT = 2  # OpenCV fixed-point bits: coordinates in quarter pixels
ONE = 1 << SHIFT
AA = cv2.LINE_AA


@dataclass(frozen=True)
class Mask:
    values: np.ndarray  # float32 (h, w) in [0, 1]
    x0: int  # where the window's top-left pixel sits in the image
    y0: int


Painter = Callable[[np.random.Generator, NoiseBank, float, float, float], Mask | None]


class _Canvas:
    """A uint8 window of the image around some points; draws in image coordinates."""

    def __init__(self, size: int, points: np.ndarray, pad: float):
        points = np.asarray(points, np.float64).reshape(-1, 2)
        self.x0 = max(int(np.floor(points[:, 0].min() - pad)), 0)
        self.y0 = max(int(np.floor(points[:, 1].min() - pad)), 0)
        x1 = min(int(np.ceil(points[:, 0].max() + pad)) + 1, size)
        y1 = min(int(np.ceil(points[:, 1].max() + pad)) + 1, size)
        self.empty = x1 <= self.x0 or y1 <= self.y0
        self.pixels = np.zeros((max(y1 - self.y0, 0), max(x1 - self.x0, 0)), np.uint8)

    def fixed(self, points: np.ndarray) -> np.ndarray:
        """Image coordinates -> OpenCV fixed-point coordinates in this window."""
        return np.round((np.asarray(points) - (self.x0, self.y0)) * ONE).astype(np.int32)

    def finish(self, sigma: float) -> Mask | None:
        if self.empty:
            return None
        values = self.pixels.astype(np.float32) * np.float32(1 / 255)
        if sigma > 0.3:
            values = cv2.GaussianBlur(values, (0, 0), sigma)
        return Mask(values, self.x0, self.y0)


def crazing(rng, bank, cx, cy, u):
    """A network of fine, short, nearly parallel cracks; half branch off the others."""
    rx = bank.size * rng.uniform(0.07, 0.3)
    ry = rx * rng.uniform(0.5, 1.6)
    count = int(np.clip(rx * ry / (35 * u * u), 8, 150))
    steps = int(rng.integers(3, 7))
    theta0 = rng.uniform(0, np.pi)
    free = count // 2 + 1
    starts = np.stack([cx + rx * rng.uniform(-1, 1, free), cy + ry * rng.uniform(-1, 1, free)], 1)
    cracks = _walks(rng, starts, theta0, steps, u)
    branch_starts = cracks.reshape(-1, 2)[rng.integers(0, free * (steps + 1), count - free)]
    cracks = np.concatenate([cracks, _walks(rng, branch_starts, theta0 + np.pi / 2, steps, u)])
    sigma = 0.4 * u
    canvas = _Canvas(bank.size, cracks, 2 + 3 * sigma)
    if canvas.empty:
        return None
    strong = rng.random(len(cracks)) < 0.5
    cv2.polylines(canvas.pixels, list(canvas.fixed(cracks[strong])), False, 255, 1, AA, SHIFT)
    cv2.polylines(canvas.pixels, list(canvas.fixed(cracks[~strong])), False, 130, 1, AA, SHIFT)
    return canvas.finish(sigma)


def _walks(rng, starts: np.ndarray, theta0: float, steps: int, u: float) -> np.ndarray:
    """Random walks (N, steps + 1, 2) from ``starts``, heading near ``theta0``."""
    n = len(starts)
    heading = theta0 + rng.normal(0, 0.3, (n, 1)) + np.cumsum(rng.normal(0, 0.25, (n, steps)), 1)
    length = rng.uniform(1.5, 3.5, (n, steps)) * u
    moves = np.stack([np.cos(heading) * length, np.sin(heading) * length], 2)
    return np.concatenate([starts[:, None, :], starts[:, None, :] + np.cumsum(moves, 1)], 1)


def inclusion(rng, bank, cx, cy, u):
    """A stringer of 1-4 thin ellipses strung along the rolling direction."""
    n = int(rng.integers(1, 5))
    length = bank.size * rng.uniform(0.05, 0.32)
    angle = rng.normal(0, 6)
    direction = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    centres = (
        np.array([cx, cy])
        + np.sort(rng.uniform(-0.5, 0.5, n))[:, None] * length * direction
        + np.stack([np.zeros(n), rng.normal(0, 0.8 * u, n)], 1)
    )
    half_lengths = np.maximum(2 * u, length / (2 * n) * rng.uniform(0.5, 1.0, n))
    half_widths = np.maximum(0.8, rng.uniform(0.8, 3.0, n) * u)
    tilts = angle + rng.normal(0, 4, n)
    shades = rng.uniform(150, 255, n)
    sigma = 0.7 * u
    canvas = _Canvas(bank.size, centres, half_lengths.max() + 2 + 3 * sigma)
    if canvas.empty:
        return None
    axes = np.round(np.stack([half_lengths, half_widths], 1) * ONE).astype(np.int32)
    for centre, axis, tilt, shade in zip(canvas.fixed(centres), axes, tilts, shades):
        cv2.ellipse(
            canvas.pixels,
            tuple(centre.tolist()),
            tuple(axis.tolist()),
            float(tilt),
            0,
            360,
            int(shade),
            -1,
            AA,
            SHIFT,
        )
    return canvas.finish(sigma)


def patches(rng, bank, cx, cy, u):
    """A blotchy region: low-frequency noise thresholded inside a soft ellipse."""
    size = bank.size
    rx = size * rng.uniform(0.06, 0.3)
    ry = rx * rng.uniform(0.6, 1.6)
    sigma = 1.2 * u
    pad = 3 * sigma
    x0, x1 = int(max(cx - rx - pad, 0)), int(min(cx + rx + pad + 1, size))
    y0, y1 = int(max(cy - ry - pad, 0)), int(min(cy + ry + pad + 1, size))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    features = size / max(rx, 1.0)  # blobs about half the region across
    octave = int(np.argmin([abs(n - features) for n in OCTAVES]))
    noise = bank.crop(bank.octaves[octave], rng, y1 - y0, x1 - x0)
    ex = (bank.xx[y0:y1, x0:x1] - np.float32(2 * cx / size - 1)) * np.float32(size / (2 * rx))
    ey = (bank.yy[y0:y1, x0:x1] - np.float32(2 * cy / size - 1)) * np.float32(size / (2 * ry))
    field = 1 - ex * ex - ey * ey + np.float32(rng.uniform(0.4, 0.9)) * noise
    soft = np.clip((field - np.float32(rng.uniform(0.1, 0.5))) * np.float32(2.5), 0, 1)
    return Mask(cv2.GaussianBlur(soft, (0, 0), sigma), x0, y0)


def pitted_surface(rng, bank, cx, cy, u):
    """A cluster of small round pits."""
    radius = bank.size * rng.uniform(0.04, 0.2)
    n = int(np.clip(radius / u * rng.uniform(0.5, 1.2), 6, 60))
    spread = radius / 2 * rng.uniform(0.7, 1.4, 2)
    centres = np.array([cx, cy]) + rng.normal(0, 1, (n, 2)) * spread
    radii = rng.uniform(0.6, 2.2, n) * u
    shades = rng.uniform(110, 255, n)
    sigma = 0.5 * u
    canvas = _Canvas(bank.size, centres, radii.max() + 2 + 3 * sigma)
    if canvas.empty:
        return None
    radii_fixed = np.round(radii * ONE).astype(np.int32).tolist()
    for centre, r, shade in zip(canvas.fixed(centres).tolist(), radii_fixed, shades.tolist()):
        cv2.circle(canvas.pixels, tuple(centre), r, int(shade), -1, AA, SHIFT)
    return canvas.finish(sigma)


def rolled_in_scale(rng, bank, cx, cy, u):
    """Irregular flakes of scale scattered in a band along the rolling direction."""
    length = bank.size * rng.uniform(0.1, 0.45)
    height = max(4 * u, length * rng.uniform(0.12, 0.4))
    n = int(np.clip(length / (6 * u) * rng.uniform(0.5, 1.2), 3, 30))
    corners = 7
    centres = np.stack(
        [cx + length / 2 * rng.uniform(-1, 1, n), cy + height / 2 * rng.uniform(-1, 1, n)], 1
    )
    a = rng.uniform(2.0, 7.0, (n, 1)) * u
    b = a * rng.uniform(0.3, 0.7, (n, 1))
    angles = np.sort(rng.uniform(0, 2 * np.pi, (n, corners)), 1)
    reach = rng.uniform(0.55, 1.25, (n, corners))
    flakes = centres[:, None, :] + np.stack(
        [a * reach * np.cos(angles), b * reach * np.sin(angles)], 2
    )
    shades = rng.uniform(130, 255, n)
    sigma = 0.5 * u
    canvas = _Canvas(bank.size, flakes, 2 + 3 * sigma)
    if canvas.empty:
        return None
    for flake, shade in zip(canvas.fixed(flakes), shades.tolist()):
        cv2.fillPoly(canvas.pixels, [flake], int(shade), AA, SHIFT)
    return canvas.finish(sigma)


def scratches(rng, bank, cx, cy, u):
    """One long thin line, straight or gently curved, fading in places; sometimes a twin."""
    length = bank.size * rng.uniform(0.25, 1.1)
    theta = rng.uniform(0, np.pi)
    along = np.array([np.cos(theta), np.sin(theta)])
    across = np.array([-along[1], along[0]])
    centre = np.array([cx, cy])
    t = np.linspace(0, 1, 24)[:, None]
    p0, p2 = centre - along * length / 2, centre + along * length / 2
    p1 = centre + across * rng.normal(0, 0.16) * length
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    thickness = int(max(1, round(rng.uniform(0.8, 2.4) * u)))
    twin = curve + across * rng.uniform(2, 5) * u if rng.random() < 0.3 else None
    sigma = 0.35 * u
    canvas = _Canvas(
        bank.size,
        curve if twin is None else np.concatenate([curve, twin]),
        thickness + 2 + 3 * sigma,
    )
    if canvas.empty:
        return None
    cv2.polylines(canvas.pixels, [canvas.fixed(curve)], False, 255, thickness, AA, SHIFT)
    if twin is not None:
        cv2.polylines(canvas.pixels, [canvas.fixed(twin)], False, 140, 1, AA, SHIFT)
    mask = canvas.finish(sigma)
    h, w = mask.values.shape
    fade = bank.crop(bank.octaves[1], rng, h, w)
    mask.values[:] *= np.clip(0.65 + 0.45 * fade, 0.15, 1)
    return mask


# In NEU-DET's class order; each with how often it is darker than the steel around it.
PAINTERS: tuple[tuple[Painter, float], ...] = (
    (crazing, 0.9),
    (inclusion, 0.85),
    (patches, 0.75),
    (pitted_surface, 0.9),
    (rolled_in_scale, 0.85),
    (scratches, 0.45),
)
