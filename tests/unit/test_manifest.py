"""ModelManifest: validation, canonical bytes, schema file."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from slimspect.errors import ManifestInvalidError
from slimspect.manifest import (
    SCHEMA_PATH,
    ModelFile,
    ModelManifest,
    manifest_for_file,
    manifest_json_schema,
    render_json_schema,
    version_sort_key,
)


def _error_text(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        ModelManifest.model_validate(data)
    return str(info.value)


def test_valid_manifest_has_defaults(manifest_data):
    m = ModelManifest.model_validate(manifest_data)
    assert m.schema_version == 1
    assert m.key == "steel-yolo/1.0.0"
    assert m.input.pad_value == 114
    assert m.golden is None
    assert m.metrics.map50_95 is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("name", "Steel YOLO", "name"),
        ("name", "../etc", "name"),
        ("version", "", "version"),
        ("version", "1.0/2", "version"),
        ("format", "onnx-fp16", "format"),
        ("class_names", [], "class_names"),
        ("class_names", ["a", "b", "a"], "repeated: a"),
        ("thresholds", {"score": 1.0, "iou": 0.5}, "thresholds.score"),
        ("thresholds", {"score": 0.5, "iou": 0.0}, "thresholds.iou"),
        ("model", {"sha256": "xyz", "size_bytes": 1}, "model.sha256"),
        ("model", {"sha256": "ab" * 32, "size_bytes": 0}, "model.size_bytes"),
        ("input", {"width": 256, "height": 256, "channels": 2}, "input.channels"),
        ("metrics", {"map50": 1.5}, "metrics.map50"),
        ("created_at", "2024-05-01T12:00:00", "timezone"),
        ("surprise", 1, "surprise"),
    ],
)
def test_validation_errors_name_the_field(manifest_data, field, value, expected):
    manifest_data[field] = value
    assert expected in _error_text(manifest_data)


def test_normalize_lengths_must_fit_channels(manifest_data):
    manifest_data["input"] = {
        "width": 256, "height": 256, "channels": 1, "normalize": {"mean": [0.1, 0.2, 0.3]}
    }  # fmt: skip
    assert "normalize.mean has 3 values; give 1 or 1" in _error_text(manifest_data)


def test_golden_detections_must_use_known_classes(manifest_data):
    det = {
        "x1": 1,
        "y1": 2,
        "x2": 30,
        "y2": 40,
        "score": 0.9,
        "class_id": 1,
        "class_name": "pitted",
    }
    manifest_data["golden"] = {"sha256": "cd" * 32, "expected": [det]}
    assert "golden.expected[0]" in _error_text(manifest_data)
    det["class_name"] = "inclusion"
    m = ModelManifest.model_validate(manifest_data)
    assert m.golden is not None and m.golden.image == "golden.png"
    assert m.golden.tolerance.iou == 0.9


def test_created_at_is_stored_in_utc(manifest_data):
    manifest_data["created_at"] = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    m = ModelManifest.model_validate(manifest_data)
    assert m.created_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert m.created_at.utcoffset() == timedelta(0)
    assert b'"created_at":"2024-05-01T12:00:00Z"' in m.canonical_json()


def test_manifest_is_frozen(manifest_data):
    m = ModelManifest.model_validate(manifest_data)
    with pytest.raises(ValidationError):
        m.version = "2.0.0"


def test_canonical_json_is_sorted_compact_and_round_trips(manifest_data):
    m = ModelManifest.model_validate(manifest_data)
    data = m.canonical_json()
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert b" " not in data.replace(b"rolled-in", b"")  # no whitespace (class names have none)
    assert b"\n" not in data
    assert ModelManifest.from_json(data) == m
    assert ModelManifest.from_json(data).canonical_json() == data
    # Field order in the input does not change the bytes.
    reordered = dict(reversed(list(manifest_data.items())))
    assert ModelManifest.model_validate(reordered).canonical_json() == data


def test_canonical_json_keeps_unicode_as_utf8(manifest_data):
    manifest_data["class_names"] = ["rayure", "éraflure"]
    data = ModelManifest.model_validate(manifest_data).canonical_json()
    assert "éraflure".encode() in data


# The fixture is only read (copied), never mutated, so sharing it across examples is safe.
@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8, unique=True),
    score=st.floats(min_value=0.001, max_value=0.999),
    iou=st.floats(min_value=0.001, max_value=0.999),
    map50=st.none() | st.floats(min_value=0.0, max_value=1.0),
)
def test_canonical_json_round_trips_any_valid_manifest(manifest_data, names, score, iou, map50):
    fields = {
        **manifest_data,
        "class_names": names,
        "thresholds": {"score": score, "iou": iou},
        "metrics": {"map50": map50},
    }
    m = ModelManifest.model_validate(fields)
    data = m.canonical_json()
    again = ModelManifest.from_json(data)
    assert again == m
    assert again.canonical_json() == data


def test_from_json_raises_manifest_invalid_naming_the_source(manifest_data):
    with pytest.raises(
        ManifestInvalidError,
        match=r"s3://b/models/x/1/manifest\.json is not a valid model manifest",
    ):
        ModelManifest.from_json(b"{not json", source="s3://b/models/x/1/manifest.json")
    manifest_data["thresholds"] = {"score": 2}
    with pytest.raises(ManifestInvalidError, match=r"thresholds\.score"):
        ModelManifest.from_dict(manifest_data)


def test_manifest_for_file_hashes_the_file(tmp_path, manifest_data):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx")
    del manifest_data["model"], manifest_data["created_at"]
    m = manifest_for_file(path, **manifest_data)
    assert m.model == ModelFile.from_path(path)
    assert m.model.size_bytes == len(b"not really onnx")
    assert m.model.sha256 == hashlib.sha256(b"not really onnx").hexdigest()
    assert m.created_at.tzinfo is not None
    with pytest.raises(TypeError):
        manifest_for_file(path, model={}, **manifest_data)


def test_version_order():
    versions = ["1.10.0", "1.2.0", "1.2.0-rc.1", "1.2.0-rc.10", "1.2.0-rc.2", "v0.9.0"]
    ordered = sorted(versions, key=version_sort_key)
    assert ordered == ["v0.9.0", "1.2.0-rc.1", "1.2.0-rc.2", "1.2.0-rc.10", "1.2.0", "1.10.0"]
    assert sorted(["run-10", "run-9"], key=version_sort_key) == ["run-9", "run-10"]


def test_schema_file_is_current():
    assert SCHEMA_PATH.is_file(), "run: python -m slimspect.manifest"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_json_schema(), (
        "the checked-in schema is stale; run: python -m slimspect.manifest"
    )
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema == manifest_json_schema()
    assert schema["additionalProperties"] is False
    assert {"name", "version", "created_at", "format", "model", "input", "class_names"} <= set(
        schema["required"]
    )
