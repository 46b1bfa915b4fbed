"""The synthetic generator: deterministic by seed, tight boxes, all classes, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.data import synth
from trainer.data.dataset import NEU_DET_CLASSES
from trainer.data.problems import DatasetError
from trainer.data.synth import render, synthesize, val_indices

SIZE = 64


def _files(root: Path) -> dict[str, bytes]:
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    # data.yaml names its own absolute folder (Ultralytics needs that); nothing else may differ.
    files["data.yaml"] = b"\n".join(
        line for line in files["data.yaml"].splitlines() if not line.startswith(b"path:")
    )
    return files


def test_same_seed_gives_byte_identical_files(tmp_path):
    synthesize(tmp_path / "a", 12, size=SIZE, seed=5)
    synthesize(tmp_path / "b", 12, size=SIZE, seed=5, workers=2)
    synthesize(tmp_path / "c", 12, size=SIZE, seed=6)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 12 + 12 + 1  # images, labels, data.yaml
    assert a == b
    assert a != c


def test_an_image_depends_on_seed_and_index_only():
    later = render(3, 7, SIZE)
    for index in range(5):
        render(3, index, SIZE)
    again = render(3, 7, SIZE)
    assert np.array_equal(later.image, again.image)
    assert np.array_equal(later.boxes, again.boxes)
    assert not np.array_equal(render(3, 8, SIZE).image, later.image)


def test_boxes_lie_inside_the_image_with_classes_in_range():
    for index in range(40):
        drawn = render(1, index, SIZE)
        assert drawn.image.shape == (SIZE, SIZE) and drawn.image.dtype == np.uint8
        assert 1 <= len(drawn.boxes) <= 4
        x1, y1, x2, y2 = drawn.boxes.T
        assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= SIZE).all() and (y2 <= SIZE).all()
        assert (x2 - x1 >= synth.MIN_SIDE).all() and (y2 - y1 >= synth.MIN_SIDE).all()
        assert ((drawn.classes >= 0) & (drawn.classes < 6)).all()


@pytest.fixture
def flat_steel(monkeypatch):
    """Defects on a flat grey plate without light, blur or noise: what was drawn is visible."""
    monkeypatch.setattr(
        synth, "texture", lambda rng, bank: (np.full((bank.size,) * 2, 128, np.float32), 5.0)
    )
    monkeypatch.setattr(synth, "clutter", lambda image, rng, bank, std: None)
    monkeypatch.setattr(synth, "light", lambda image, rng, bank: image)
    monkeypatch.setattr(
        synth, "sensor", lambda image, rng, bank: np.clip(image + 0.5, 0, 255).astype(np.uint8)
    )


@pytest.mark.parametrize("size", [64, 96])
def test_boxes_enclose_what_was_drawn_tightly(flat_steel, size):
    for index in range(30):
        drawn = render(2, index, size)
        diff = np.abs(drawn.image.astype(np.int32) - 128)
        inside = np.zeros(diff.shape, bool)
        strongest = 0
        for x1, y1, x2, y2 in drawn.boxes.astype(int):
            box = diff[y1:y2, x1:x2]
            inside[y1:y2, x1:x2] = True
            strongest = max(strongest, int(box.max()))
            # tight: every edge row and column of the box shows the defect
            for edge in (box[0], box[-1], box[:, 0], box[:, -1]):
                assert edge.max() >= 2, (index, (x1, y1, x2, y2))
        # enclosing: outside the boxes only the faint fringe below the box threshold remains
        assert diff[~inside].max(initial=0) <= 0.12 * strongest + 2, index


def test_every_class_appears():
    classes = np.concatenate([render(4, i, SIZE).classes for i in range(60)])
    assert set(classes.tolist()) == set(range(len(NEU_DET_CLASSES)))


def test_split_sizes(tmp_path):
    ds = synthesize(tmp_path / "ds", 20, size=SIZE, seed=0, fmt="coco", val_fraction=0.2)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 16, "val": 4}
    assert ds.names == list(NEU_DET_CLASSES)
    only = synthesize(tmp_path / "only", 5, size=SIZE, val_fraction=0.0)
    assert list(only.splits) == ["train"]
    assert len(val_indices(1, 0.2, 0)) == 0
    assert len(val_indices(2, 0.2, 0)) == 1
    assert len(val_indices(10, 0.99, 0)) == 9


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(DatasetError, match="not an empty folder"):
        synthesize(tmp_path, 2, size=SIZE)
    with pytest.raises(DatasetError, match="cannot write format"):
        synthesize(tmp_path / "new", 2, size=SIZE, fmt="neu")


def test_contrast_scales_the_defects_only():
    """contrast 1 is the default; a higher one changes the defects' pixels, not the rest."""
    for index in range(6):
        plain, same = render(4, index, SIZE), render(4, index, SIZE, contrast=1.0)
        assert np.array_equal(plain.image, same.image)
        strong = render(4, index, SIZE, contrast=3.0)
        changed = np.abs(strong.image.astype(int) - plain.image.astype(int)) > 2
        inside = np.zeros_like(changed)
        for x1, y1, x2, y2 in np.vstack([plain.boxes, strong.boxes]).astype(int):
            inside[max(y1 - 4, 0) : y2 + 4, max(x1 - 4, 0) : x2 + 4] = True
        assert changed.any()
        # blur and light spread a defect a little beyond its box; the texture is unchanged
        assert changed[~inside].mean() < 0.01
        np.testing.assert_array_equal(strong.classes, plain.classes)


def test_contrast_out_of_range_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="contrast"):
        synthesize(tmp_path / "x", 4, size=SIZE, contrast=0)
