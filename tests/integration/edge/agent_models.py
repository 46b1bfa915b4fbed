"""Real models for the agent tests: a tiny yolov4-n exported to ONNX, and published versions.

The golden detections are computed with the edge runtime itself (edge_agent.runtime) at a
low score threshold, so the list is not empty and a correct model passes its smoke test.
Versions are published with ModelStore.publish; the broken ones are broken the way they
would be in the field (bytes changed in the bucket, a signature by an untrusted key).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from edge_agent.runtime import Detector
from edge_agent.settings import RuntimeSettings
from slimspect.detection import Detection, to_records
from slimspect.manifest import ModelManifest, manifest_for_file, sha256_file
from slimspect.signing import generate_keypair, load_private_key, sign
from slimspect.store import (
    MANIFEST_OBJECT,
    MODEL_OBJECT,
    SIGNATURE_OBJECT,
    FetchedModel,
    ModelStore,
    version_prefix,
)

MODEL_NAME = "tiny-yolo"
CLASSES = ("scratch", "patch")
SIZE = 64
SCORE = 0.2  # low: the untrained model's boxes score about 0.25
RUNTIME = RuntimeSettings(intra_op_threads=1, inter_op_threads=1)


@dataclass(frozen=True)
class TinyModel:
    onnx: Path
    golden_png: Path
    expected: list[Detection]
    unloadable: Path  # bytes that are no ONNX model


def _manifest(
    onnx: Path, version: str, golden_png: Path, expected: list[Detection]
) -> ModelManifest:
    sha, _ = sha256_file(golden_png)
    return manifest_for_file(
        onnx,
        name=MODEL_NAME,
        version=version,
        created_at=datetime.now(UTC),
        format="onnx-fp32",
        input={"width": SIZE, "height": SIZE, "channels": 1, "letterbox": True},
        class_names=list(CLASSES),
        thresholds={"score": SCORE, "iou": 0.45},
        golden={"sha256": sha, "expected": [d.model_dump() for d in expected]},
    )


def build_tiny_model(folder: Path) -> TinyModel:
    import torch

    from trainer.export import export_onnx
    from trainer.model import build, get_spec

    torch.set_num_threads(1)
    spec = get_spec("yolov4-n", input_size=SIZE, in_channels=1, class_names=CLASSES)
    onnx = folder / "model.onnx"
    export_onnx(build(spec, seed=0), onnx, dynamic_batch=False, simplify=False)
    golden_png = folder / "golden.png"
    rng = np.random.default_rng(3)
    cv2.imwrite(str(golden_png), rng.integers(0, 256, (60, 80), dtype=np.uint8))

    draft = _manifest(onnx, "0.0.0", golden_png, [])
    local = FetchedModel(
        manifest=draft,
        key_id="",
        directory=folder,
        model_path=onnx,
        manifest_path=folder / MANIFEST_OBJECT,
        signature_path=folder / SIGNATURE_OBJECT,
        golden_path=golden_png,
    )
    found = Detector(local, RUNTIME).detect(cv2.imread(str(golden_png), cv2.IMREAD_UNCHANGED))
    expected = to_records(found.detections, CLASSES)
    assert expected, "the tiny model finds nothing in its golden image at this threshold"
    unloadable = folder / "unloadable.onnx"
    unloadable.write_bytes(b"\x08\x07 this is not an ONNX model " * 64)
    return TinyModel(onnx, golden_png, expected, unloadable)


def publish_good(store: ModelStore, model: TinyModel, version: str) -> None:
    store.publish(
        model.onnx,
        _manifest(model.onnx, version, model.golden_png, model.expected),
        golden_png=model.golden_png,
    )


def publish_failing_smoke_test(store: ModelStore, model: TinyModel, version: str) -> None:
    """A sound model whose manifest expects a detection the model does not give."""
    wrong = [Detection(x1=1, y1=1, x2=9, y2=9, score=0.95, class_id=1, class_name=CLASSES[1])]
    store.publish(
        model.onnx,
        _manifest(model.onnx, version, model.golden_png, wrong),
        golden_png=model.golden_png,
    )


def publish_unloadable(store: ModelStore, model: TinyModel, version: str) -> None:
    """Signed and intact, but model.onnx is no ONNX model."""
    manifest = _manifest(model.unloadable, version, model.golden_png, model.expected)
    store.publish(model.unloadable, manifest, golden_png=model.golden_png)


def publish_tampered(store: ModelStore, model: TinyModel, version: str) -> None:
    """Published correctly, then model.onnx is replaced in the bucket (same size, other bytes)."""
    publish_good(store, model, version)
    data = bytearray(model.onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    _put(store, version_prefix(MODEL_NAME, version) + MODEL_OBJECT, bytes(data))


def publish_badly_signed(store: ModelStore, model: TinyModel, version: str, keys_dir: Path) -> None:
    """Published correctly, then manifest.sig is replaced by a signature of an untrusted key."""
    publish_good(store, model, version)
    prefix = version_prefix(MODEL_NAME, version)
    response = store.client.get_object(store.bucket, prefix + MANIFEST_OBJECT)
    try:
        manifest_bytes = response.read()
    finally:
        response.close()
        response.release_conn()
    other = generate_keypair(keys_dir)
    _put(
        store, prefix + SIGNATURE_OBJECT, sign(manifest_bytes, load_private_key(other.private_key))
    )


def _put(store: ModelStore, key: str, data: bytes) -> None:
    store.client.put_object(store.bucket, key, io.BytesIO(data), len(data))
