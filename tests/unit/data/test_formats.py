"""Readers and writers: round trips keep boxes within each format's rounding."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.data.convert import convert
from trainer.data.dataset import NEU_DET_CLASSES, DetectionDataset, Sample
from trainer.data.formats import detect_format, read_dataset, voc_xml, write_dataset
from trainer.data.problems import DatasetError
from trainer.data.synth import synthesize

WRITABLE = ("yolo", "voc", "coco")


def tolerance(fmt: str, sample: Sample) -> float:
    """Largest change of a box edge (px) a round trip through ``fmt`` may make."""
    float32 = 1e-4
    if fmt == "yolo":
        return 1e-6 * max(sample.width, sample.height) + float32
    return 1e-3 + float32


def by_image(ds: DetectionDataset) -> dict[tuple[str, str], Sample]:
    return {(split, sample.name): sample for split, sample in ds.samples()}


def assert_same(expected: DetectionDataset, actual: DetectionDataset, fmt: str) -> None:
    assert actual.names == expected.names
    want, got = by_image(expected), by_image(actual)
    assert got.keys() == want.keys()
    for key, sample in want.items():
        other = got[key]
        assert (other.width, other.height) == (sample.width, sample.height)
        assert other.classes.tolist() == sample.classes.tolist(), key
        np.testing.assert_allclose(other.boxes, sample.boxes, rtol=0, atol=tolerance(fmt, sample))


@st.composite
def datasets(draw, root: Path):
    names = draw(
        st.lists(
            st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=8),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    splits = {}
    counter = 0
    for split in ["train"] + (["val"] if draw(st.booleans()) else []):
        samples = []
        for _ in range(draw(st.integers(1, 3))):
            width, height = draw(st.integers(8, 80)), draw(st.integers(8, 80))
            boxes, classes = [], []
            for _ in range(draw(st.integers(0, 4))):
                x1 = draw(st.floats(0, width - 0.5))
                y1 = draw(st.floats(0, height - 0.5))
                x2 = draw(st.floats(x1 + 0.5, width))
                y2 = draw(st.floats(y1 + 0.5, height))
                if draw(st.booleans()):  # integer boxes, as annotation tools make them
                    x1, y1, x2, y2 = np.floor(x1), np.floor(y1), np.ceil(x2), np.ceil(y2)
                boxes.append((x1, y1, x2, y2))
                classes.append(draw(st.integers(0, len(names) - 1)))
            image = f"src/{split}/img{counter}.png"
            counter += 1
            (root / image).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / image), np.zeros((height, width), np.uint8))
            samples.append(Sample(image, width, height, np.array(boxes, np.float32), classes))
        splits[split] = samples
    return DetectionDataset(root, names, splits)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_datasets_round_trip_through_every_format(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = data.draw(datasets(root))
        for fmt in WRITABLE:
            write_dataset(ds, root / fmt, fmt)
            assert detect_format(root / fmt) == fmt
            assert_same(ds, read_dataset(root / fmt), fmt)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    return {fmt: synthesize(root / fmt, 12, size=64, seed=1, fmt=fmt).root for fmt in WRITABLE}


@pytest.mark.parametrize("source", WRITABLE)
def test_synthetic_data_converts_to_every_other_format(synthetic, source, tmp_path):
    original = read_dataset(synthetic[source])
    assert original.num_images == 12 and original.num_boxes > 12
    for target in WRITABLE:
        if target != source:
            converted = convert(synthetic[source], tmp_path / target, target)
            assert_same(original, converted, target)
            assert_same(original, read_dataset(tmp_path / target), target)


def test_synthetic_formats_agree(synthetic):
    yolo, voc, coco = (read_dataset(synthetic[f]) for f in WRITABLE)
    assert_same(yolo, voc, "yolo")
    assert_same(yolo, coco, "yolo")
    assert yolo.names == list(NEU_DET_CLASSES)


def _neu_files(images: Path, annotations: Path, stem: str, name: str, bndbox, with_suffix=True):
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(images / f"{stem}.jpg"), np.full((200, 200), 128, np.uint8))
    xmin, ymin, xmax, ymax = bndbox  # 1-based inclusive, as NEU-DET's files have them
    record = voc_xml.Annotation(
        f"{stem}.jpg" if with_suffix else stem,
        200,
        200,
        [voc_xml.VocObject(name, (xmin - 1, ymin - 1, xmax, ymax), 0)],
    )
    (annotations / f"{stem}.xml").write_text(voc_xml.render(record, "IMAGES", 1))


def test_reads_neu_det_flat_layout(tmp_path):
    _neu_files(
        tmp_path / "IMAGES", tmp_path / "ANNOTATIONS", "crazing_1", "crazing", (2, 2, 193, 200)
    )
    _neu_files(
        tmp_path / "IMAGES",
        tmp_path / "ANNOTATIONS",
        "scratches_7",
        "scratches",
        (10, 20, 30, 40),
        with_suffix=False,
    )  # some NEU-DET files name the image without its suffix
    assert detect_format(tmp_path) == "neu"
    ds = read_dataset(tmp_path)
    assert ds.names == list(NEU_DET_CLASSES)
    assert list(ds.splits) == ["train"]
    got = {s.name: (s.boxes.tolist(), s.classes.tolist()) for _, s in ds.samples()}
    assert got == {
        "crazing_1.jpg": ([[1, 1, 193, 200]], [0]),
        "scratches_7.jpg": ([[9, 19, 30, 40]], [5]),
    }
    (tmp_path / "val.txt").write_text("scratches_7\n")
    (tmp_path / "train.txt").write_text("crazing_1.jpg\n")
    split = read_dataset(tmp_path)
    assert {k: [s.name for s in v] for k, v in split.splits.items()} == {
        "train": ["crazing_1.jpg"],
        "val": ["scratches_7.jpg"],
    }


def test_reads_neu_det_train_validation_layout(tmp_path):
    _neu_files(
        tmp_path / "train/images/patches",
        tmp_path / "train/annotations",
        "patches_1",
        "patches",
        (5, 5, 60, 80),
    )
    _neu_files(
        tmp_path / "validation/images/inclusion",
        tmp_path / "validation/annotations",
        "inclusion_3",
        "inclusion",
        (100, 50, 120, 190),
    )
    ds = read_dataset(tmp_path)
    assert {k: [s.name for s in v] for k, v in ds.splits.items()} == {
        "train": ["patches_1.jpg"],
        "val": ["inclusion_3.jpg"],
    }
    assert ds.splits["val"][0].classes.tolist() == [1]
    assert ds.image_path(ds.splits["val"][0]).is_file()


def test_yolo_yaml_may_list_images_in_a_text_file(synthetic, tmp_path):
    ds = read_dataset(synthetic["yolo"])
    listing = synthetic["yolo"] / "train_list.txt"
    listing.write_text("".join(f"./{s.image}\n" for s in ds.splits["train"][:3]))
    config = tmp_path / "list.yaml"
    config.write_text(
        f"path: {synthetic['yolo']}\ntrain: train_list.txt\nnames: {list(NEU_DET_CLASSES)}\n"
    )
    try:
        listed = read_dataset(config)
    finally:
        listing.unlink()
    assert [s.name for s in listed.splits["train"]] == [s.name for s in ds.splits["train"][:3]]
    assert_same(
        DetectionDataset(ds.root, ds.names, {"train": ds.splits["train"][:3]}), listed, "yolo"
    )


def test_strict_reader_names_file_and_line(synthetic, tmp_path):
    convert(synthetic["yolo"], tmp_path / "ds", "yolo")
    label = min((tmp_path / "ds/labels/train").glob("*.txt"))
    lines = label.read_text().splitlines()
    label.write_text("\n".join(lines + ["0 0.5 0.5"]) + "\n")
    with pytest.raises(DatasetError, match=rf"{label.name}:{len(lines) + 1}: malformed-line"):
        read_dataset(tmp_path / "ds")


def test_unknown_layout_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot tell the format"):
        read_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "missing")
    with pytest.raises(DatasetError, match="cannot write format"):
        write_dataset(DetectionDataset(tmp_path, []), tmp_path / "out", "neu")
