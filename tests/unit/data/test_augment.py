"""Augmentation: boxes move exactly with the pixels, stay inside, follow the box rule.

Most checks draw a filled rectangle where a box is, augment, and recompute the tight box
from the pixels: a box that agrees with its pixels after the transform moved with them.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from trainer.data.augment import (
    AffineConfig,
    AugmentConfig,
    Augmenter,
    ColourConfig,
    MixupConfig,
    MosaicConfig,
    SampleProvider,
    clip_and_filter,
)

FAST = settings(max_examples=30, deadline=None)


class ListProvider:
    """The smallest sample provider: a list of ``(image, boxes, classes)``."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def load(self, index):
        image, boxes, classes = self.samples[index]
        return image.copy(), boxes.copy(), classes.copy()


def drawn(h, w, boxes, values, colour=False, bg=0):
    """An ``h x w`` image with each integer box filled with its value."""
    image = np.full((h, w), bg, dtype=np.uint8)
    for (x1, y1, x2, y2), v in zip(boxes.astype(int), values):
        image[y1:y2, x1:x2] = v
    return np.repeat(image[:, :, None], 3, axis=2) if colour else image


def tight_box(mask):
    """The pixel-edge box ``x1, y1, x2, y2`` around the true pixels of ``mask``."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def gray_of(image):
    return image if image.ndim == 2 else image[:, :, 0]


def only(**kwargs) -> AugmentConfig:
    """The identity config with some fields replaced."""
    return AugmentConfig.none().model_copy(update=kwargs)


@st.composite
def int_box(draw, size, min_side=1):
    x1 = draw(st.integers(0, size - min_side))
    y1 = draw(st.integers(0, size - min_side))
    x2 = draw(st.integers(x1 + min_side, size))
    y2 = draw(st.integers(y1 + min_side, size))
    return np.array([x1, y1, x2, y2], dtype=np.float32)


@st.composite
def float_boxes(draw, h, w, max_n=5):
    n = draw(st.integers(0, max_n))
    boxes = []
    for _ in range(n):
        xs = sorted(draw(st.lists(st.floats(0, w), min_size=2, max_size=2)))
        ys = sorted(draw(st.lists(st.floats(0, h), min_size=2, max_size=2)))
        boxes.append([xs[0], ys[0], xs[1] + 0.5, ys[1] + 0.5])  # may poke out: gets clipped
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


unit = st.floats(0.0, 1.0)
configs = st.builds(
    AugmentConfig,
    mosaic=st.builds(MosaicConfig, p=unit),
    affine=st.builds(
        AffineConfig,
        p=unit,
        degrees=st.floats(0, 15),
        translate=st.floats(0, 0.3),
        scale=st.tuples(st.floats(0.5, 1.0), st.floats(1.0, 1.5)),
        shear=st.floats(0, 5),
    ),
    colour=st.builds(ColourConfig, p=unit),
    hflip_p=unit,
    vflip_p=unit,
    mixup=st.builds(MixupConfig, p=unit, alpha=st.floats(0.5, 32)),
    min_area_frac=st.floats(0.0, 0.5),
    min_box_px=st.floats(0.0, 4.0),
)


# --- config ----------------------------------------------------------------------------------


def test_none_turns_every_transform_off():
    cfg = AugmentConfig.none()
    assert cfg.mosaic.p == cfg.affine.p == cfg.colour.p == cfg.mixup.p == 0
    assert cfg.hflip_p == cfg.vflip_p == 0
    assert AugmentConfig().vflip_p > 0  # steel has no up or down


def test_config_is_validated():
    with pytest.raises(ValidationError):
        AffineConfig(scale=(1.2, 0.8))
    with pytest.raises(ValidationError):
        AugmentConfig(hflip_p=1.5)
    with pytest.raises(ValidationError):
        AugmentConfig(mosiac={"p": 1.0})  # a typo is an error, not a silent default


def test_provider_protocol():
    assert isinstance(ListProvider([]), SampleProvider)


# --- identity and letterbox ------------------------------------------------------------------


@FAST
@given(size=st.integers(32, 96), colour=st.booleans(), data=st.data())
def test_identity_preserves_image_and_boxes_exactly(size, colour, data):
    rng = np.random.default_rng(size)
    image = rng.integers(0, 256, (size, size, 3) if colour else (size, size), dtype=np.uint8)
    boxes = data.draw(float_boxes(size, size)).clip(0, size)
    classes = np.arange(len(boxes))
    out, out_boxes, out_classes = Augmenter(AugmentConfig.none(), size)(
        ListProvider([(image, boxes, classes)]), 0
    )
    np.testing.assert_array_equal(out, image)
    big = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)  # min_box_px
    np.testing.assert_array_equal(out_boxes, boxes[big])
    np.testing.assert_array_equal(out_classes, classes[big])


@FAST
@given(h=st.integers(32, 96), w=st.integers(32, 96), size=st.integers(32, 96), data=st.data())
def test_letterbox_moves_boxes_with_pixels(h, w, size, data):
    box = data.draw(int_box(min(h, w), min_side=8))
    image = drawn(h, w, box[None], [255])
    out, boxes, _ = Augmenter(AugmentConfig.none(), size)(
        ListProvider([(image, box[None], [0])]), 0
    )
    assert out.shape == (size, size)
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], tight_box(out > 127), atol=1.0)


# --- flips: exact ----------------------------------------------------------------------------


@FAST
@given(
    size=st.integers(32, 96),
    axis=st.sampled_from(["h", "v"]),
    colour=st.booleans(),
    data=st.data(),
)
def test_flip_maps_box_to_mirrored_box_exactly(size, axis, colour, data):
    box = data.draw(int_box(size, min_side=2))
    image = drawn(size, size, box[None], [255], colour=colour)
    cfg = only(hflip_p=1.0) if axis == "h" else only(vflip_p=1.0)
    out, boxes, classes = Augmenter(cfg, size)(ListProvider([(image, box[None], [3])]), 0)
    x1, y1, x2, y2 = box
    mirrored = [size - x2, y1, size - x1, y2] if axis == "h" else [x1, size - y2, x2, size - y1]
    np.testing.assert_allclose(boxes[0], mirrored, atol=1e-3)
    np.testing.assert_allclose(boxes[0], tight_box(gray_of(out) > 0), atol=1e-3)
    assert classes.tolist() == [3]


# --- affine: box encloses the transformed pixels ---------------------------------------------


@FAST
@given(size=st.integers(48, 96), seed=st.integers(0, 2**16), data=st.data())
def test_affine_box_encloses_transformed_pixels(size, seed, data):
    box = data.draw(int_box(size, min_side=10))
    image = drawn(size, size, box[None], [255])
    cfg = only(
        affine=AffineConfig(p=1.0, degrees=15, translate=0.2, scale=(0.7, 1.3), shear=5),
        fill=0,
        min_area_frac=0.0,
        min_box_px=0.0,
    )
    out, boxes, _ = Augmenter(cfg, size, seed=seed)(ListProvider([(image, box[None], [0])]), 0)
    inside = out > 127
    assert len(boxes) <= 1
    assert ((boxes >= 0) & (boxes <= size)).all()
    if not inside.any():  # moved out of the image, or a sliver of edge pixels left
        return
    assert len(boxes) == 1
    box, pixels = boxes[0], tight_box(inside)
    # The box covers the transformed pixels, up to a pixel or two of interpolation.
    assert (box[:2] <= pixels[:2] + 2).all() and (box[2:] >= pixels[2:] - 2).all()
    if (box[:2] > 1).all() and (box[2:] < size - 1).all():
        # Not cut by the border: the enclosing box of the rotated or sheared corners is the
        # tight box of the filled pixels.
        np.testing.assert_allclose(box, pixels, atol=2.0)


# --- the box rule ----------------------------------------------------------------------------


def test_clip_and_filter_rule():
    boxes = np.array(
        [
            [10, 10, 20, 20],  # inside: kept as is
            [-5, 10, 5, 20],  # half outside: kept, clipped
            [-19, 10, 1, 20],  # 1 px remnant, 5% visible: dropped
            [-50, 10, -40, 20],  # outside: dropped
            [30, 30, 31, 40],  # 1 px wide: dropped by min_box_px
            [-10, 0, 10, 40],  # 50% visible: kept
        ],
        dtype=np.float32,
    )
    kept, classes = clip_and_filter(boxes, np.arange(6), 32, 32, 0.1, 2.0)
    assert classes.tolist() == [0, 1, 5]
    np.testing.assert_array_equal(kept, [[10, 10, 20, 20], [0, 10, 5, 20], [0, 0, 10, 32]])
    _, classes = clip_and_filter(boxes, np.arange(6), 32, 32, 0.6, 2.0)
    assert classes.tolist() == [0]


def test_affine_drops_tiny_remnants():
    # A fixed 2x zoom about the centre: x -> 2x - 32 on a 64 px image.
    zoom = AffineConfig(p=1.0, degrees=0, translate=0, scale=(2.0, 2.0), shear=0)
    boxes = np.array(
        [
            [20, 20, 30, 30],  # -> 8, 8, 28, 28
            [0, 20, 30, 40],  # -> -32..28: 47% visible, kept
            [0, 20, 17, 40],  # -> -32..2: 6% visible, dropped
            [0, 0, 8, 8],  # -> outside, dropped
        ],
        dtype=np.float32,
    )
    image = np.zeros((64, 64), np.uint8)
    _, kept, classes = Augmenter(only(affine=zoom), 64)(
        ListProvider([(image, boxes, np.arange(4))]), 0
    )
    assert classes.tolist() == [0, 1]
    np.testing.assert_allclose(kept, [[8, 8, 28, 28], [0, 8, 28, 48]], atol=1e-3)
    # A half-size zoom-out makes a 3 px wide box 1.5 px wide: under min_box_px (2).
    shrink = zoom.model_copy(update={"scale": (0.5, 0.5)})
    thin = np.array([[30, 20, 33, 40], [20, 20, 30, 40]], dtype=np.float32)
    _, kept, classes = Augmenter(only(affine=shrink), 64)(
        ListProvider([(image, thin, np.arange(2))]), 0
    )
    assert classes.tolist() == [1]


# --- every config: boxes inside --------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    cfg=configs,
    size=st.integers(32, 96),
    colour=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_boxes_stay_inside_for_any_config(cfg, size, colour, seed, data):
    samples = []
    for _ in range(3):
        h, w = data.draw(st.integers(32, 96)), data.draw(st.integers(32, 96))
        boxes = data.draw(float_boxes(h, w))
        image = np.random.default_rng(h * w).integers(0, 256, (h, w), dtype=np.uint8)
        image = np.repeat(image[:, :, None], 3, axis=2) if colour else image
        samples.append((image, boxes, np.arange(len(boxes))))
    out, boxes, classes = Augmenter(cfg, size, seed=seed)(ListProvider(samples), 0)
    assert out.dtype == np.uint8
    assert out.shape == ((size, size, 3) if colour else (size, size))
    assert boxes.dtype == np.float32 and boxes.shape == (len(classes), 4)
    assert (boxes >= 0).all() and (boxes <= size).all()
    assert (boxes[:, 2] - boxes[:, 0] >= cfg.min_box_px - 1e-3).all()
    assert (boxes[:, 3] - boxes[:, 1] >= cfg.min_box_px - 1e-3).all()


# --- mosaic and mixup ------------------------------------------------------------------------


def _one_box_samples(size, n=5, colour=False):
    """Sample i: one rectangle of intensity 40 * (i + 1), class i."""
    rng = np.random.default_rng(size)
    samples = []
    for i in range(n):
        x1, y1 = rng.integers(0, size // 2, size=2)
        x2, y2 = x1 + rng.integers(6, size // 2), y1 + rng.integers(6, size // 2)
        box = np.array([[x1, y1, x2, y2]], dtype=np.float32)
        samples.append((drawn(size, size, box, [40 * (i + 1)], colour=colour), box, np.array([i])))
    return samples


@FAST
@given(size=st.integers(32, 96), seed=st.integers(0, 2**16))
def test_mosaic_boxes_are_exactly_their_pixels(size, seed):
    # Tiles of the output size are not resized, so every box is exact: the pixels of a
    # class are precisely the union of that class's boxes.
    cfg = only(mosaic=MosaicConfig(p=1.0), min_area_frac=0.0, min_box_px=0.0)
    out, boxes, classes = Augmenter(cfg, size, seed=seed)(ListProvider(_one_box_samples(size)), 0)
    assert out.shape == (size, size)
    assert ((boxes >= 0) & (boxes <= size)).all()
    np.testing.assert_array_equal(boxes, np.round(boxes))
    for k in range(5):
        union = np.zeros_like(out, dtype=bool)
        for x1, y1, x2, y2 in boxes[classes == k].astype(int):
            union[y1:y2, x1:x2] = True
        np.testing.assert_array_equal(out == 40 * (k + 1), union)


@FAST
@given(size=st.integers(32, 96), seed=st.integers(0, 2**16), tile=st.integers(24, 120))
def test_mosaic_resized_tiles_keep_boxes_on_pixels(size, seed, tile):
    cfg = only(mosaic=MosaicConfig(p=1.0))
    out, boxes, classes = Augmenter(cfg, size, seed=seed)(ListProvider(_one_box_samples(tile)), 0)
    assert out.shape == (size, size)
    assert ((boxes >= 0) & (boxes <= size)).all()
    # Resizing blurs a rectangle's edge over about half the zoom factor on each side.
    m = int(np.ceil(size / tile / 2)) + 1
    for (x1, y1, x2, y2), k in zip(boxes, classes):
        top, bottom = int(np.ceil(y1)) + m, int(y2) - m
        left, right = int(np.ceil(x1)) + m, int(x2) - m
        core = out[top:bottom, left:right] if bottom > top and right > left else out[:0]
        if core.size:  # the box's inside, away from interpolated edges, is its rectangle
            assert (np.abs(core.astype(int) - 40 * (k + 1)) <= 2).all()


@FAST
@given(size=st.integers(32, 96), seed=st.integers(0, 2**16), colour=st.booleans())
def test_mixup_keeps_boxes_of_both(size, seed, colour):
    samples = _one_box_samples(size, colour=colour)
    cfg = only(mixup=MixupConfig(p=1.0, alpha=8.0))
    out, boxes, classes = Augmenter(cfg, size, seed=seed)(ListProvider(samples), 2)
    assert out.shape == samples[0][0].shape
    assert len(boxes) == 2
    np.testing.assert_array_equal(boxes[0], samples[2][1][0])
    assert classes[0] == 2
    other = samples[classes[1]]
    np.testing.assert_array_equal(boxes[1], other[1][0])
    # Where only the first rectangle is, the pixel is a blend of it with the background.
    ours = np.zeros((size, size), bool)
    x1, y1, x2, y2 = boxes[0].astype(int)
    ours[y1:y2, x1:x2] = True
    x1, y1, x2, y2 = boxes[1].astype(int)
    ours[y1:y2, x1:x2] = False
    if ours.any() and classes[1] != 2:
        values = gray_of(out)[ours]
        assert (values > 0).all() and (values < 40 * 3).all()


# --- gray, determinism, pickling -------------------------------------------------------------

EVERYTHING = AugmentConfig(
    mosaic=MosaicConfig(p=1.0),
    affine=AffineConfig(p=1.0),
    colour=ColourConfig(p=1.0),
    hflip_p=1.0,
    vflip_p=1.0,
    mixup=MixupConfig(p=1.0),
)


@pytest.mark.filterwarnings("error")  # albumentations warns when it meets hue on gray
def test_gray_stays_gray_under_every_transform():
    samples = _one_box_samples(48)
    for seed in range(5):
        out, _, _ = Augmenter(EVERYTHING, 64, seed=seed)(ListProvider(samples), seed)
        assert out.shape == (64, 64)
    # HxWx1 is gray too; colour stays colour.
    hw1 = [(im[:, :, None], b, c) for im, b, c in samples]
    assert Augmenter(EVERYTHING, 64)(ListProvider(hw1), 0)[0].shape == (64, 64)
    rgb = _one_box_samples(48, colour=True)
    assert Augmenter(EVERYTHING, 64)(ListProvider(rgb), 0)[0].shape == (64, 64, 3)


def test_colour_jitter_changes_pixels_but_not_boxes():
    samples = _one_box_samples(64, colour=True)
    cfg = only(colour=ColourConfig(p=1.0, brightness=0.3, contrast=0.3))
    out, boxes, _ = Augmenter(cfg, 64, seed=1)(ListProvider(samples), 0)
    assert not np.array_equal(out, samples[0][0])
    np.testing.assert_array_equal(boxes, samples[0][1])


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def test_deterministic_by_seed_and_picklable():
    provider = ListProvider(_one_box_samples(48, colour=True))
    runs = [[Augmenter(EVERYTHING, 64, seed=7)(provider, i) for i in range(4)] for _ in range(2)]
    assert all(_same(a, b) for a, b in zip(*runs))
    other = [Augmenter(EVERYTHING, 64, seed=8)(provider, i) for i in range(4)]
    assert not all(_same(a, b) for a, b in zip(runs[0], other))
    # Per-sample generators: the same result whatever order or process handles the sample.
    aug = Augmenter(EVERYTHING, 64, seed=7)
    clone = pickle.loads(pickle.dumps(aug))
    forward = [aug(provider, i, aug.rng_for(i, epoch=1)) for i in range(4)]
    backward = [clone(provider, i, clone.rng_for(i, epoch=1)) for i in reversed(range(4))]
    assert all(_same(a, b) for a, b in zip(forward, reversed(backward)))
    assert not _same(forward[0], aug(provider, 0, aug.rng_for(0, epoch=2)))


def test_rejects_non_uint8_images():
    image = np.zeros((32, 32), np.float32)
    with pytest.raises(TypeError, match="uint8"):
        Augmenter(AugmentConfig.none(), 32)(ListProvider([(image, np.zeros((0, 4)), [])]), 0)


# --- preview ---------------------------------------------------------------------------------


def test_preview_grid_from_a_provider(tmp_path):
    import cv2

    from trainer.data.preview import GAP, preview_grid

    out = preview_grid(
        ListProvider(_one_box_samples(48)), AugmentConfig(), tmp_path / "p" / "grid.png", n=5
    )
    grid = cv2.imread(str(out))
    side = 3 * 256 + 2 * GAP  # 5 tiles: a 3 x 2 grid of 256 px samples
    assert grid.shape == (2 * 256 + GAP, side, 3)


def test_preview_command_on_a_data_set(tmp_path):
    synth = pytest.importorskip("trainer.data.synth")
    from click.testing import CliRunner

    from trainer.data.preview import preview

    synth.synthesize(tmp_path / "ds", 4, size=64, seed=1)
    out = tmp_path / "grid.png"
    args = [str(tmp_path / "ds"), "--out", str(out), "--n", "4", "--imgsz", "64"]
    result = CliRunner().invoke(preview, args)
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(preview, [str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")])
    assert bad.exit_code != 0 and "Error" in bad.output
