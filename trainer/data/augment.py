"""Training augmentation as in YOLOv4: mosaic, random affine, colour, flips, mixup.

A sample is ``(image, boxes, classes)``: ``image`` uint8, ``HxW`` (gray) or ``HxWx3``;
``boxes`` float32 ``(N, 4)`` ``x1, y1, x2, y2`` in pixels (origin at the top-left corner of
the top-left pixel, the convention of :mod:`slimspect.detection`); ``classes`` int64 ``(N,)``.
Every output is ``output_size x output_size``; a 1-channel input comes back as ``HxW``.

Order, per sample (each step drawn with its own probability):

1. **mosaic**: the sample and three random others, each resized to a longest side of
   ``output_size``, are placed around a random centre on a ``2 * output_size`` canvas; a
   random ``output_size`` window that contains the centre is cut out. Without mosaic the
   sample is letterboxed (scaled to fit, centred, padded with ``fill``) by
   :func:`slimspect.detection.letterbox`, the letterbox of inference.
2. **affine**: rotation (small), translation, isotropic scale, shear (albumentations
   ``Affine``; a rotated box becomes the enclosing box of its four transformed corners).
3. **mixup**: blended with a second sample made by steps 1-2, ``r ~ Beta(alpha, alpha)``;
   the boxes of both are kept.
4. **flips** (horizontal, vertical: steel has no up or down) and **colour**: brightness,
   contrast and HSV gains. On a 1-channel image only brightness, contrast and the value
   gain apply; hue and saturation need colour.

Box rule, the same after every geometric step that can cut boxes (mosaic window, affine):
a box is clipped to the image, then dropped when its clipped area is under
``min_area_frac`` of its area before clipping (the fraction still visible), or when the
clipped box is narrower or shorter than ``min_box_px``. Letterboxing cuts nothing, so only
the side limit applies there; flips and colour leave boxes as they are. Every output box
is therefore inside the image and at least ``min_box_px`` on a side. Albumentations applies
the same rule through
``BboxParams(min_visibility=min_area_frac, min_width=min_box_px, min_height=min_box_px)``.

Randomness comes only from the ``numpy.random.Generator`` of each call (albumentations is
reseeded from it), so a sample is a pure function of the provider, the index and the
generator's state; :meth:`Augmenter.rng_for` gives a generator per ``(seed, epoch, index)``
for callers, such as Ray Data workers, that process samples in no fixed order.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import albumentations as A
import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimspect.detection import letterbox

# image, boxes (N, 4) float32, classes (N,) int64
Sample = tuple[np.ndarray, np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Config


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MosaicConfig(_Frozen):
    """Four images on a 2x canvas, a random window cut back to the output size."""

    p: float = Field(0.5, ge=0.0, le=1.0)


class AffineConfig(_Frozen):
    """Random affine: rotation in +-``degrees``, translation in +-``translate`` of the side,
    isotropic scale drawn from ``scale``, shear in +-``shear`` degrees."""

    p: float = Field(0.5, ge=0.0, le=1.0)
    degrees: float = Field(5.0, ge=0.0, le=45.0)
    translate: float = Field(0.1, ge=0.0, le=0.5)
    scale: tuple[float, float] = (0.75, 1.25)
    shear: float = Field(2.0, ge=0.0, le=30.0)

    @model_validator(mode="after")
    def _scale_range(self) -> AffineConfig:
        lo, hi = self.scale
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale must be a range 0 < lo <= hi, got {self.scale}")
        return self


class ColourConfig(_Frozen):
    """Photometric jitter, applied with probability ``p``: brightness and contrast shifts
    (fractions of the full range), then YOLO-style HSV gains: hue in +-``hue`` of the hue
    circle, saturation and value multiplied by a factor in ``1 +- saturation`` / ``1 +- value``.
    Hue and saturation apply to colour images only."""

    p: float = Field(0.5, ge=0.0, le=1.0)
    brightness: float = Field(0.2, ge=0.0, le=1.0)
    contrast: float = Field(0.2, ge=0.0, le=1.0)
    hue: float = Field(0.015, ge=0.0, le=0.5)
    saturation: float = Field(0.5, ge=0.0, le=1.0)
    value: float = Field(0.3, ge=0.0, le=1.0)


class MixupConfig(_Frozen):
    """Blend with a second augmented sample, ``r ~ Beta(alpha, alpha)``; boxes of both kept."""

    p: float = Field(0.1, ge=0.0, le=1.0)
    alpha: float = Field(8.0, gt=0.0)


class AugmentConfig(_Frozen):
    """Probability and strength of each training augmentation.

    Defaults suit steel-surface defects (NEU-DET, GC10-DET): gray textures with no up or
    down, so both flips are on; rotation stays small because scratches and seams follow the
    rolling direction; mixup is rare because blended textures blur the defect boundary.
    """

    mosaic: MosaicConfig = MosaicConfig()
    affine: AffineConfig = AffineConfig()
    colour: ColourConfig = ColourConfig()
    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    vflip_p: float = Field(0.5, ge=0.0, le=1.0)
    mixup: MixupConfig = MixupConfig()
    min_area_frac: float = Field(0.1, ge=0.0, le=1.0)
    min_box_px: float = Field(2.0, ge=0.0)
    fill: int = Field(114, ge=0, le=255)

    def without_mosaic(self) -> AugmentConfig:
        """The same transforms on whole images: mosaic and mixup off (``close_mosaic``)."""
        off = {"p": 0.0}
        return self.model_copy(
            update={
                "mosaic": self.mosaic.model_copy(update=off),
                "mixup": self.mixup.model_copy(update=off),
            }
        )

    @classmethod
    def none(cls) -> AugmentConfig:
        """The identity: letterbox only, every random transform off."""
        return cls(
            mosaic=MosaicConfig(p=0.0),
            affine=AffineConfig(p=0.0),
            colour=ColourConfig(p=0.0),
            hflip_p=0.0,
            vflip_p=0.0,
            mixup=MixupConfig(p=0.0),
        )


# ---------------------------------------------------------------------------------------------
# Samples


@runtime_checkable
class SampleProvider(Protocol):
    """What the augmenter reads: indexable samples (mosaic and mixup draw extra ones)."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Sample: ...


def _check_sample(sample: Sample) -> Sample:
    """Validate a loaded sample; 1-channel images become ``HxW``."""
    image, boxes, classes = sample
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be HxW or HxWx3, got shape {image.shape}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if len(boxes) != len(classes):
        raise ValueError(f"{len(boxes)} boxes but {len(classes)} classes")
    return image, boxes, classes


def _match_channels(image: np.ndarray, gray: bool) -> np.ndarray:
    if gray and image.ndim == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if not gray and image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image


# ---------------------------------------------------------------------------------------------
# Geometry written here: what albumentations lacks (mosaic, mixup)


def clip_and_filter(
    boxes: np.ndarray,
    classes: np.ndarray,
    width: int,
    height: int,
    min_area_frac: float,
    min_box_px: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The box rule: clip to ``width x height``; drop a box whose clipped area is under
    ``min_area_frac`` of its unclipped area, or whose clipped side is under ``min_box_px``."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w = clipped[:, 2] - clipped[:, 0]
    h = clipped[:, 3] - clipped[:, 1]
    keep = (
        (area > 0)
        & (w * h >= min_area_frac * area)
        & (w >= max(min_box_px, 1e-6))
        & (h >= max(min_box_px, 1e-6))
    )
    return clipped[keep], classes[keep]


def _resize_long(image: np.ndarray, size: int) -> tuple[np.ndarray, float, float]:
    """Resize so the longer side is ``size``; returns the image and the x, y scale factors."""
    h, w = image.shape[:2]
    r = size / max(h, w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    if (nw, nh) == (w, h):
        return image, 1.0, 1.0
    # INTER_LINEAR both ways, as slimspect.detection.letterbox resizes camera frames.
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR), nw / w, nh / h


def _mosaic(samples: list[Sample], centre: tuple[int, int], size: int, fill: int) -> Sample:
    """Place four samples around ``centre`` on a ``2 * size`` canvas (the YOLOv4 / YOLOv5
    layout: top-left, top-right, bottom-left, bottom-right, each image's corner on the
    centre). Returns the canvas and the boxes shifted onto it, not yet clipped."""
    xc, yc = centre
    s2 = 2 * size
    gray = samples[0][0].ndim == 2
    canvas = np.full((s2, s2) if gray else (s2, s2, 3), fill, dtype=np.uint8)
    all_boxes, all_classes = [], []
    for i, (image, boxes, classes) in enumerate(samples):
        image, sx, sy = _resize_long(_match_channels(image, gray), size)
        h, w = image.shape[:2]
        if i == 0:  # top-left: the image's bottom-right corner sits on the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
        elif i == 1:  # top-right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s2), yc
            x1b, y1b = 0, h - (y2a - y1a)
        elif i == 2:  # bottom-left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(yc + h, s2)
            x1b, y1b = w - (x2a - x1a), 0
        else:  # bottom-right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s2), min(yc + h, s2)
            x1b, y1b = 0, 0
        canvas[y1a:y2a, x1a:x2a] = image[y1b : y1b + (y2a - y1a), x1b : x1b + (x2a - x1a)]
        shifted = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
        shifted += np.array([x1a - x1b, y1a - y1b] * 2, dtype=np.float32)
        all_boxes.append(shifted)
        all_classes.append(classes)
    # Each tile ends at the centre lines, so its boxes can only run off the canvas edge, never
    # into a neighbour; left unclipped, the window cut applies the box rule to them once.
    return canvas, np.concatenate(all_boxes), np.concatenate(all_classes)


def _mixup(a: Sample, b: Sample, r: float) -> Sample:
    """``r * a + (1 - r) * b``; the boxes of both."""
    blend = a[0].astype(np.float32) * r + b[0].astype(np.float32) * (1.0 - r)
    image = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return image, np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]])


# ---------------------------------------------------------------------------------------------
# Albumentations: affine, flips, colour


def _bbox_params(config: AugmentConfig, cuts: bool) -> A.BboxParams:
    """Box handling of a pipeline; the box rule only where the pipeline can cut boxes."""
    rule = (config.min_area_frac, config.min_box_px) if cuts else (0.0, 0.0)
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["classes"],
        min_visibility=rule[0],
        min_width=rule[1],
        min_height=rule[1],
        clip=True,
    )


def _affine_transforms(config: AugmentConfig) -> list[A.BasicTransform]:
    c = config.affine
    if c.p == 0:
        return []
    return [
        A.Affine(
            scale=c.scale,
            keep_ratio=True,
            translate_percent=(-c.translate, c.translate),
            rotate=(-c.degrees, c.degrees),
            shear=(-c.shear, c.shear),
            interpolation=cv2.INTER_LINEAR,
            rotate_method="largest_box",
            border_mode=cv2.BORDER_CONSTANT,
            fill=config.fill,
            p=c.p,
        )
    ]


def _flip_transforms(config: AugmentConfig) -> list[A.BasicTransform]:
    out: list[A.BasicTransform] = []
    if config.hflip_p > 0:
        out.append(A.HorizontalFlip(p=config.hflip_p))
    if config.vflip_p > 0:
        out.append(A.VerticalFlip(p=config.vflip_p))
    return out


def _colour_transforms(config: AugmentConfig, gray: bool) -> list[A.BasicTransform]:
    c = config.colour
    if c.p == 0:
        return []
    # ColorJitter's factors are YOLO's HSV gains: value (= brightness factor) and saturation
    # in 1 +- gain, hue in +- fraction of the circle. It reads RGB; on BGR input a hue shift
    # turns the other way, which a symmetric range does not notice.
    jitter = A.ColorJitter(
        brightness=c.value,
        contrast=0.0,
        saturation=0.0 if gray else c.saturation,
        hue=0.0 if gray else c.hue,
        p=1.0,
    )
    shift = A.RandomBrightnessContrast(
        brightness_limit=c.brightness, contrast_limit=c.contrast, p=1.0
    )
    return [A.Sequential([shift, jitter], p=c.p)]


def _compose(
    transforms: list[A.BasicTransform], bbox_params: A.BboxParams | None
) -> A.Compose | None:
    if not transforms:
        return None
    return A.Compose(transforms, bbox_params=bbox_params, seed=0)


def _run(compose: A.Compose | None, sample: Sample, rng: np.random.Generator) -> Sample:
    """Apply an albumentations pipeline, reseeded from ``rng``."""
    if compose is None:
        return sample
    compose.set_random_seed(int(rng.integers(2**31)))
    image, boxes, classes = sample
    if "bboxes" not in compose.processors:  # photometric only: boxes stay as they are
        return np.ascontiguousarray(compose(image=image)["image"]), boxes, classes
    out = compose(image=image, bboxes=boxes, classes=classes)
    return (
        np.ascontiguousarray(out["image"]),
        np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
        np.asarray(out["classes"], dtype=np.int64).reshape(-1),
    )


# ---------------------------------------------------------------------------------------------
# The augmenter


class Augmenter:
    """YOLOv4 training augmentation of one sample to ``output_size x output_size``.

    Args:
        config: what to apply and how strongly.
        output_size: side of the square output image, in pixels.
        seed: seeds the generator used when a call passes none, and :meth:`rng_for`.

    Picklable (config, sizes and albumentations pipelines), so it can be shipped to Ray
    Data workers; one instance is not meant to be shared between threads.
    """

    def __init__(self, config: AugmentConfig, output_size: int, seed: int = 0):
        if output_size < 8:
            raise ValueError(f"output_size must be at least 8 px, got {output_size}")
        self.config = config
        self.output_size = int(output_size)
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._affine = _compose(_affine_transforms(config), _bbox_params(config, cuts=True))
        self._flip = _compose(_flip_transforms(config), _bbox_params(config, cuts=False))
        self._colour = {
            gray: _compose(_colour_transforms(config, gray), None) for gray in (True, False)
        }

    def rng_for(self, index: int, epoch: int = 0) -> np.random.Generator:
        """A generator that depends only on ``(seed, epoch, index)``: the same augmentation of
        a sample whatever worker or order processes it."""
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def __call__(
        self, samples: SampleProvider, index: int, rng: np.random.Generator | None = None
    ) -> Sample:
        """Augment sample ``index`` of ``samples``; mosaic and mixup draw others at random.

        Returns ``(image, boxes, classes)``: ``image`` uint8 ``S x S`` (gray) or
        ``S x S x 3``, ``boxes`` float32 ``(N, 4)`` inside the image, ``classes`` int64 ``(N,)``.
        """
        rng = self._rng if rng is None else rng
        cfg = self.config
        sample = self._placed(samples, index, rng)
        if cfg.mixup.p > 0 and rng.random() < cfg.mixup.p:
            other = self._placed(samples, int(rng.integers(len(samples))), rng)
            other = (_match_channels(other[0], sample[0].ndim == 2), other[1], other[2])
            sample = _mixup(sample, other, float(rng.beta(cfg.mixup.alpha, cfg.mixup.alpha)))
        sample = _run(self._flip, sample, rng)
        return _run(self._colour[sample[0].ndim == 2], sample, rng)

    def _load(self, samples: SampleProvider, index: int) -> Sample:
        image, boxes, classes = _check_sample(samples.load(index))
        h, w = image.shape[:2]
        # Source labels are only clipped to their image: the box rule is for what we cut.
        boxes, classes = clip_and_filter(boxes, classes, w, h, 0.0, 0.0)
        return image, boxes, classes

    def _placed(self, samples: SampleProvider, index: int, rng: np.random.Generator) -> Sample:
        """Mosaic or letterbox, then the affine: one ``S x S`` sample before mixup."""
        cfg, s = self.config, self.output_size
        if cfg.mosaic.p > 0 and rng.random() < cfg.mosaic.p:
            others = rng.integers(len(samples), size=3)
            tiles = [self._load(samples, i) for i in (index, *others)]
            xc, yc = (int(v) for v in rng.integers(s // 2, s + s // 2 + 1, size=2))
            canvas, boxes, classes = _mosaic(tiles, (xc, yc), s, cfg.fill)
            # A window of side s around the centre, where the four tiles meet.
            ox = int(rng.integers(max(0, xc - s), min(s, xc) + 1))
            oy = int(rng.integers(max(0, yc - s), min(s, yc) + 1))
            image = canvas[oy : oy + s, ox : ox + s].copy()
            boxes = boxes - np.array([ox, oy, ox, oy], dtype=np.float32)
            boxes, classes = clip_and_filter(
                boxes, classes, s, s, cfg.min_area_frac, cfg.min_box_px
            )
        else:
            image, boxes, classes = self._load(samples, index)
            # The letterbox of inference: the model trains on what stations feed it.
            image, info = letterbox(image, s, cfg.fill)
            boxes = info.to_input(boxes).astype(np.float32)
            boxes, classes = clip_and_filter(boxes, classes, s, s, 0.0, cfg.min_box_px)
        return _run(self._affine, (image, boxes, classes), rng)
