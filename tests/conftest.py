"""Shared fixtures: one SeaweedFS S3 store per session, a fresh bucket and key pair per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from slimspect.embedded.s3 import SeaweedS3
from slimspect.manifest import ModelManifest, manifest_for_file
from slimspect.settings import StoreSettings
from slimspect.signing import KeyPairFiles, generate_keypair
from slimspect.store import ModelStore

# Shared CI machines are noisy: a slow example is not a failing one (speed is measured in
# benchmarks/, never in tests), so property tests have no per-example deadline.
settings.register_profile("slimspect", deadline=None)
settings.load_profile("slimspect")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS (`weed mini`) on free loopback ports for the whole session."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), startup_timeout_s=60)
    server.start()
    try:
        yield server
    finally:
        server.stop(grace_s=5)  # the data is thrown away: no need to wait out a slow shutdown


@pytest.fixture(scope="session")
def s3_server(seaweed: SeaweedS3) -> StoreSettings:
    """StoreSettings for the session's S3 store (endpoint and credentials; no keys).

    Every field is given, so SLIMSPECT_STORE_* variables of the shell do not leak in; use
    ``s3_server.model_copy(update={"bucket": ...})`` for another bucket or keys.
    """
    return seaweed.store_settings(
        bucket="slimspect-test", region=None, signing_key=None, trusted_keys=[]
    )


@pytest.fixture
def signing_keys(tmp_path: Path) -> KeyPairFiles:
    """A fresh Ed25519 key pair in tmp_path/keys."""
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def store_settings(s3_server: StoreSettings, signing_keys: KeyPairFiles) -> StoreSettings:
    """Settings for a fresh, unique bucket that trusts (only) this test's key pair."""
    return s3_server.model_copy(
        update={
            "bucket": f"t-{uuid.uuid4().hex[:16]}",
            "signing_key": signing_keys.private_key,
            "trusted_keys": [signing_keys.public_key],
        }
    )


@pytest.fixture
def model_store(store_settings: StoreSettings) -> ModelStore:
    """A ModelStore on a fresh bucket (created) signing and trusting this test's key pair."""
    store = ModelStore.from_settings(store_settings)
    store.ensure_bucket()
    return store


@pytest.fixture
def store_env(store_settings: StoreSettings) -> dict[str, str]:
    """SLIMSPECT_STORE_* variables describing ``store_settings``, for CliRunner(env=...)."""
    assert store_settings.secret_key is not None
    return {
        "SLIMSPECT_STORE_ENDPOINT": store_settings.endpoint,
        "SLIMSPECT_STORE_ACCESS_KEY": store_settings.access_key or "",
        "SLIMSPECT_STORE_SECRET_KEY": store_settings.secret_key.get_secret_value(),
        "SLIMSPECT_STORE_BUCKET": store_settings.bucket,
        "SLIMSPECT_STORE_SECURE": "false",
        "SLIMSPECT_STORE_SIGNING_KEY": str(store_settings.signing_key),
        "SLIMSPECT_STORE_TRUSTED_KEYS": ",".join(str(p) for p in store_settings.trusted_keys),
    }


def manifest_fields(**overrides: Any) -> dict[str, Any]:
    """Plain fields of a small valid manifest (without ``model``), for ``manifest_for_file``."""
    fields: dict[str, Any] = {
        "name": "steel-yolo",
        "version": "1.0.0",
        "created_at": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "format": "onnx-fp32",
        "input": {"width": 256, "height": 256, "channels": 1, "letterbox": True},
        "class_names": ["crazing", "inclusion", "patches", "pitted", "rolled-in", "scratches"],
        "thresholds": {"score": 0.25, "iou": 0.45},
        "metrics": {"map50": 0.9741, "params": 3_270_000},
        "lineage": {"stage": "distill", "run_id": "run-42"},
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def fake_onnx(tmp_path: Path) -> Callable[..., Path]:
    """Writes a file of random bytes standing in for model.onnx (the store does not parse it)."""

    def make(size: int = 4096, name: str = "model.onnx") -> Path:
        path = tmp_path / "models-src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        return path

    return make


@pytest.fixture
def make_manifest() -> Callable[..., ModelManifest]:
    """``make_manifest(onnx_path, **overrides)``: a valid manifest for that file."""

    def make(onnx_path: Path, **overrides: Any) -> ModelManifest:
        return manifest_for_file(onnx_path, **manifest_fields(**overrides))

    return make


@pytest.fixture
def manifest_data() -> dict[str, Any]:
    """Plain fields of a valid manifest, ``model`` included (a made-up digest)."""
    return manifest_fields(model={"sha256": "ab" * 32, "size_bytes": 1234})


@pytest.fixture
def absent_video_index() -> int:
    """The index of a capture device this machine does not have (/dev/videoN absent)."""
    return next(i for i in range(7, 1000) if not os.path.exists(f"/dev/video{i}"))
