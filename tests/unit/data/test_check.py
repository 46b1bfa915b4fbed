"""The checker finds every seeded fault, at the right file and line, and the CLI exits 1."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from trainer.data.check import check
from trainer.data.cli import data
from trainer.data.synth import synthesize


@pytest.fixture
def yolo(tmp_path) -> Path:
    return synthesize(tmp_path / "yolo", 12, size=64, seed=2, fmt="yolo").root


def _found(problems, file: Path, line: int, kind: str) -> bool:
    return any(p.file == file and p.line == line and p.kind == kind for p in problems)


def _append(label: Path, *lines: str) -> list[int]:
    """Append lines to a label file; their line numbers."""
    old = label.read_text().splitlines()
    label.write_text("\n".join(old + list(lines)) + "\n")
    return list(range(len(old) + 1, len(old) + 1 + len(lines)))


def test_clean_synthetic_data_has_no_problems(yolo):
    assert check(yolo) == []


def test_yolo_faults_are_all_reported(yolo):
    images = sorted((yolo / "images/train").glob("*.png"))
    labels = yolo / "labels/train"
    outside, empty, unknown, short, words = _append(
        labels / f"{images[0].stem}.txt",
        "0 1.5 0.5 0.2 0.2",  # centre right of the image
        "1 0.5 0.5 0 0.1",  # no width
        "9 0.5 0.5 0.1 0.1",  # six classes only
        "0 0.5 0.5",  # too few fields
        "a b c d e",  # not numbers
    )
    images[1].write_bytes(b"this is not a PNG")
    ghost = labels / "ghost.txt"
    ghost.write_text("0 0.5 0.5 0.1 0.1\n")
    twin = images[2].with_suffix(".jpg")
    shutil.copyfile(images[2], twin)  # two images, one label file

    problems = check(yolo)
    label = labels / f"{images[0].stem}.txt"
    assert _found(problems, label, outside, "box-outside")
    assert _found(problems, label, empty, "empty-box")
    assert _found(problems, label, unknown, "unknown-class")
    assert _found(problems, label, short, "malformed-line")
    assert _found(problems, label, words, "malformed-line")
    assert _found(problems, images[1], 0, "unreadable-image")
    assert _found(problems, ghost, 0, "orphan-label")
    assert any(p.kind == "duplicate-id" and p.file in (images[2], twin) for p in problems)
    assert len(problems) == 8, "\n".join(map(str, problems))


def test_voc_faults_are_all_reported(tmp_path):
    root = synthesize(tmp_path / "voc", 12, size=64, seed=2, fmt="voc").root
    xmls = sorted((root / "Annotations").glob("*.xml"))
    train_list = root / "ImageSets/Main/train.txt"
    ids = train_list.read_text().split()

    # missing image: reported at the <filename> line of its annotation
    missing = root / "Annotations" / f"{ids[0]}.xml"
    next(p for p in (root / "JPEGImages").glob(f"{ids[0]}.*")).unlink()
    filename_line = _line_of(missing, "<filename>")
    # malformed XML
    broken = root / "Annotations" / f"{ids[1]}.xml"
    broken.write_text(broken.read_text()[:120])
    # unknown class: reported at the <name> line
    renamed = root / "Annotations" / f"{ids[2]}.xml"
    renamed.write_text(
        re.sub(r"<name>[^<]*</name>", "<name>rust</name>", renamed.read_text(), count=1)
    )
    name_line = _line_of(renamed, "<name>rust</name>")
    # duplicate id in the split list
    train_list.write_text(train_list.read_text() + f"{ids[3]}\n")
    duplicate_line = len(ids) + 1

    problems = check(root)
    assert _found(problems, missing, filename_line, "missing-image")
    assert any(p.file == broken and p.kind == "malformed-xml" and p.line > 0 for p in problems)
    assert _found(problems, renamed, name_line, "unknown-class")
    assert _found(problems, train_list, duplicate_line, "duplicate-id")
    assert len(problems) == 4, "\n".join(map(str, problems))
    assert len(xmls) == 12


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_coco_faults_are_all_reported(tmp_path):
    root = synthesize(tmp_path / "coco", 20, size=64, seed=2, fmt="coco").root
    train = root / "annotations/instances_train.json"
    val = root / "annotations/instances_val.json"
    train.write_text(train.read_text().replace('"images": [', '"images": [ oops', 1))
    # Our writer puts one record a line: line 1 info, line 2 '"images": [', then the images.
    lines = val.read_text().splitlines()
    missing = json.loads(lines[4].strip().rstrip(","))
    (root / "images/val" / missing["file_name"]).unlink()
    lines.insert(3, lines[2])  # the first image record twice: now on lines 3 and 4
    val.write_text("\n".join(lines) + "\n")

    problems = check(root)
    assert _found(problems, train, 2, "malformed-json")
    assert _found(problems, val, 4, "duplicate-id")
    assert _found(problems, val, 6, "missing-image")
    assert len(problems) == 3, "\n".join(map(str, problems))


def test_cli_lists_problems_and_exits_1(yolo):
    runner = CliRunner()
    clean = runner.invoke(data, ["check", str(yolo)])
    assert clean.exit_code == 0, clean.output
    assert clean.output.strip().startswith("OK: 12 images, ")

    label = min((yolo / "labels/train").glob("*.txt"))
    (line,) = _append(label, "0 0.5")
    result = runner.invoke(data, ["check", str(yolo)])
    assert result.exit_code == 1
    assert f"{label}:{line}: malformed-line: " in result.output


def test_a_folder_of_something_else_is_one_problem(tmp_path):
    (problem,) = check(tmp_path)
    assert problem.kind == "bad-layout" and "cannot tell the format" in problem.message
