"""ModelStore and `slimspect keys|models` against a real SeaweedFS S3 store."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import SecretStr, ValidationError

from slimspect.cli import cli
from slimspect.embedded.s3 import SeaweedS3
from slimspect.errors import (
    ManifestInvalidError,
    ManifestSignatureError,
    ModelIntegrityError,
    ModelNotFoundError,
    StoreError,
    StoreUnreachableError,
    UnknownSigningKeyError,
    VersionExistsError,
)
from slimspect.manifest import ModelManifest
from slimspect.settings import StoreSettings
from slimspect.signing import generate_keypair
from slimspect.store import ModelStore, version_prefix

pytestmark = pytest.mark.s3


def _put(store: ModelStore, key: str, data: bytes) -> None:
    """Writes an object behind the store's back (what an attacker or a crash leaves)."""
    store.client.put_object(store.bucket, key, io.BytesIO(data), len(data))


def _nothing_in(dest) -> bool:
    """True when a fetch left no file behind (dest may not even have been created)."""
    return not dest.exists() or not any(dest.rglob("*"))


def _keys(store: ModelStore, prefix: str = "models/") -> list[str]:
    return sorted(
        o.object_name for o in store.client.list_objects(store.bucket, prefix, recursive=True)
    )


def _publish(store, fake_onnx, make_manifest, version="1.0.0", **overrides):
    path = fake_onnx()
    manifest = make_manifest(path, version=version, **overrides)
    store.publish(path, manifest)
    return path, manifest


def _golden(tmp_path):
    png = tmp_path / "golden.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"fake image")
    det = {
        "x1": 10,
        "y1": 12,
        "x2": 40,
        "y2": 44,
        "score": 0.9,
        "class_id": 5,
        "class_name": "scratches",
    }
    golden = {"sha256": hashlib.sha256(png.read_bytes()).hexdigest(), "expected": [det]}
    return png, golden


def test_publish_fetch_round_trip(model_store, signing_keys, fake_onnx, make_manifest, tmp_path):
    onnx = fake_onnx(200_000)
    png, golden = _golden(tmp_path)
    manifest = make_manifest(onnx, golden=golden)
    published = model_store.publish(onnx, manifest, golden_png=png)
    assert published.key_id == signing_keys.key_id
    prefix = version_prefix("steel-yolo", "1.0.0")
    assert _keys(model_store) == [
        prefix + n for n in ("golden.png", "manifest.json", "manifest.sig", "model.onnx")
    ]

    fetched = model_store.fetch("steel-yolo", "1.0.0", tmp_path / "dest")
    assert fetched.directory == tmp_path / "dest" / "steel-yolo" / "1.0.0"
    assert fetched.model_path.read_bytes() == onnx.read_bytes()
    assert fetched.golden_path is not None and fetched.golden_path.read_bytes() == png.read_bytes()
    assert fetched.manifest == manifest
    assert fetched.manifest_path.read_bytes() == manifest.canonical_json()
    assert json.loads(fetched.signature_path.read_bytes())["key_id"] == signing_keys.key_id
    assert fetched.key_id == signing_keys.key_id
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["steel-yolo"]  # no temp left
    assert model_store.manifest("steel-yolo", "1.0.0") == manifest


def test_fetch_again_replaces_the_local_copy(model_store, fake_onnx, make_manifest, tmp_path):
    _publish(model_store, fake_onnx, make_manifest)
    first = model_store.fetch("steel-yolo", "1.0.0", tmp_path / "dest")
    first.model_path.write_bytes(b"corrupted locally")
    second = model_store.fetch("steel-yolo", "1.0.0", tmp_path / "dest")
    assert (
        hashlib.sha256(second.model_path.read_bytes()).hexdigest() == second.manifest.model.sha256
    )
    assert [p.name for p in (tmp_path / "dest" / "steel-yolo").iterdir()] == ["1.0.0"]


def test_publish_refuses_a_file_that_does_not_match_the_manifest(
    model_store, fake_onnx, make_manifest
):
    onnx = fake_onnx()
    manifest = make_manifest(onnx)
    onnx.write_bytes(b"changed after the manifest was made")
    with pytest.raises(ModelIntegrityError, match="does not match its manifest steel-yolo/1.0.0"):
        model_store.publish(onnx, manifest)
    assert _keys(model_store) == []


def test_publish_needs_the_golden_image_the_manifest_declares(
    model_store, fake_onnx, make_manifest, tmp_path
):
    onnx = fake_onnx()
    png, golden = _golden(tmp_path)
    with pytest.raises(ManifestInvalidError, match="no golden image was given"):
        model_store.publish(onnx, make_manifest(onnx, golden=golden))
    with pytest.raises(ManifestInvalidError, match="no 'golden' section"):
        model_store.publish(onnx, make_manifest(onnx), golden_png=png)
    png.write_bytes(b"another image")
    with pytest.raises(ModelIntegrityError, match="golden.sha256"):
        model_store.publish(onnx, make_manifest(onnx, golden=golden), golden_png=png)
    assert _keys(model_store) == []


def test_overwrite_is_refused(model_store, fake_onnx, make_manifest):
    _, first = _publish(model_store, fake_onnx, make_manifest)
    with pytest.raises(
        VersionExistsError, match=r"s3://t-\w+/models/steel-yolo/1\.0\.0/ already exists"
    ):
        _publish(model_store, fake_onnx, make_manifest)
    assert model_store.manifest("steel-yolo", "1.0.0") == first
    # Any leftover object blocks the version too, even without a signature.
    _put(model_store, version_prefix("steel-yolo", "2.0.0") + "model.onnx", b"partial")
    with pytest.raises(VersionExistsError):
        _publish(model_store, fake_onnx, make_manifest, version="2.0.0")


def test_failed_publish_removes_what_it_uploaded(
    model_store, fake_onnx, make_manifest, monkeypatch
):
    real_put = model_store.client.put_object

    def failing_put(bucket, key, *args, **kwargs):
        if key.endswith("manifest.sig"):
            raise OSError("disk full on the way")
        return real_put(bucket, key, *args, **kwargs)

    monkeypatch.setattr(model_store.client, "put_object", failing_put)
    with pytest.raises(OSError, match="disk full"):
        _publish(model_store, fake_onnx, make_manifest)
    assert _keys(model_store) == []
    monkeypatch.undo()
    _publish(model_store, fake_onnx, make_manifest)  # the version is still free
    assert [v.version for v in model_store.list()] == ["1.0.0"]


def test_list_and_latest_show_only_complete_versions(
    model_store, fake_onnx, make_manifest, tmp_path
):
    day = lambda d: datetime(2024, 5, d, tzinfo=UTC)
    _publish(model_store, fake_onnx, make_manifest, version="1.0.0", created_at=day(1))
    _publish(model_store, fake_onnx, make_manifest, version="1.2.0", created_at=day(3))
    _publish(model_store, fake_onnx, make_manifest, version="1.10.0", created_at=day(3))  # tie
    _publish(
        model_store, fake_onnx, make_manifest, version="0.1.0", name="other", created_at=day(9)
    )
    # An incomplete version, newer than all: model and manifest, but no manifest.sig.
    onnx = fake_onnx()
    incomplete = make_manifest(onnx, version="9.0.0", created_at=day(20))
    prefix = version_prefix("steel-yolo", "9.0.0")
    _put(model_store, prefix + "model.onnx", onnx.read_bytes())
    _put(model_store, prefix + "manifest.json", incomplete.canonical_json())

    listed = model_store.list()
    assert [(v.name, v.version) for v in listed] == [
        ("other", "0.1.0"), ("steel-yolo", "1.0.0"), ("steel-yolo", "1.2.0"), ("steel-yolo", "1.10.0")
    ]  # fmt: skip
    assert [v.version for v in model_store.list("steel-yolo")] == ["1.0.0", "1.2.0", "1.10.0"]
    assert listed[1].format == "onnx-fp32" and listed[1].size_bytes == 4096
    latest = model_store.latest("steel-yolo")
    assert (latest.version, latest.created_at) == ("1.10.0", day(3))
    with pytest.raises(ModelNotFoundError, match="incomplete: no manifest.sig"):
        model_store.fetch("steel-yolo", "9.0.0", tmp_path / "dest")
    with pytest.raises(ModelNotFoundError, match="no published version of model 'nothing'"):
        model_store.latest("nothing")


def test_tampered_model_is_an_integrity_error(model_store, fake_onnx, make_manifest, tmp_path):
    _, manifest = _publish(model_store, fake_onnx, make_manifest)
    _put(model_store, version_prefix("steel-yolo", "1.0.0") + "model.onnx", b"\x00" * 4096)
    with pytest.raises(ModelIntegrityError, match="tampered model") as info:
        model_store.fetch("steel-yolo", "1.0.0", tmp_path / "dest")
    message = str(info.value)
    assert "models/steel-yolo/1.0.0/model.onnx" in message
    assert manifest.model.sha256[:12] in message
    assert hashlib.sha256(b"\x00" * 4096).hexdigest()[:12] in message
    assert _nothing_in(tmp_path / "dest")


def test_tampered_manifest_is_a_signature_error(model_store, fake_onnx, make_manifest, tmp_path):
    _, manifest = _publish(model_store, fake_onnx, make_manifest)
    lowered = manifest.model_copy(
        update={"thresholds": manifest.thresholds.model_copy(update={"score": 0.01})}
    )
    _put(
        model_store,
        version_prefix("steel-yolo", "1.0.0") + "manifest.json",
        lowered.canonical_json(),
    )
    with pytest.raises(ManifestSignatureError, match="manifest.json: signature by trusted key"):
        model_store.fetch("steel-yolo", "1.0.0", tmp_path / "dest")
    with pytest.raises(ManifestSignatureError):
        model_store.manifest("steel-yolo", "1.0.0")
    assert _nothing_in(tmp_path / "dest")


def test_signed_manifest_copied_to_another_version_is_refused(
    model_store, fake_onnx, make_manifest, tmp_path
):
    _publish(model_store, fake_onnx, make_manifest)
    for obj in ("model.onnx", "manifest.json", "manifest.sig"):
        source = model_store.client.get_object(
            model_store.bucket, version_prefix("steel-yolo", "1.0.0") + obj
        )
        _put(model_store, version_prefix("steel-yolo", "6.6.6") + obj, source.read())
        source.close()
    with pytest.raises(
        ManifestInvalidError, match="describes steel-yolo/1.0.0, not steel-yolo/6.6.6"
    ):
        model_store.fetch("steel-yolo", "6.6.6", tmp_path / "dest")


def test_wrong_key_is_an_unknown_key_error(
    model_store, store_settings, fake_onnx, make_manifest, tmp_path
):
    _publish(model_store, fake_onnx, make_manifest)
    stranger = generate_keypair(tmp_path / "stranger")
    consumer = ModelStore.from_settings(
        store_settings.model_copy(update={"trusted_keys": [stranger.public_key]})
    )
    with pytest.raises(UnknownSigningKeyError, match=stranger.key_id):
        consumer.fetch("steel-yolo", "1.0.0", tmp_path / "dest")
    assert _nothing_in(tmp_path / "dest")


def test_missing_things_are_not_found(
    model_store, store_settings, fake_onnx, make_manifest, tmp_path
):
    with pytest.raises(ModelNotFoundError, match="model steel-yolo/1.0.0 not found"):
        model_store.fetch("steel-yolo", "1.0.0", tmp_path / "dest")
    with pytest.raises(ModelNotFoundError):
        model_store.manifest("steel-yolo", "1.0.0")
    _publish(model_store, fake_onnx, make_manifest)
    model_store.client.remove_object(
        model_store.bucket, version_prefix("steel-yolo", "1.0.0") + "model.onnx"
    )
    with pytest.raises(ModelNotFoundError, match="model.onnx: does not exist"):
        model_store.fetch("steel-yolo", "1.0.0", tmp_path / "dest")
    nobucket = ModelStore.from_settings(
        store_settings.model_copy(update={"bucket": "no-such-bucket-here"})
    )
    with pytest.raises(ModelNotFoundError, match="bucket 'no-such-bucket-here' does not exist"):
        nobucket.list()
    assert _nothing_in(tmp_path / "dest")


def test_unreachable_endpoint_fails_fast(store_settings, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    store = ModelStore.from_settings(
        store_settings.model_copy(update={"endpoint": f"127.0.0.1:{closed_port}"})
    )
    for call in (store.list, lambda: store.fetch("steel-yolo", "1.0.0", tmp_path / "dest")):
        start = time.monotonic()
        with pytest.raises(
            StoreUnreachableError,
            match=f"cannot reach the S3 store at http://127.0.0.1:{closed_port}",
        ):
            call()
        assert time.monotonic() - start < 5
    assert _nothing_in(tmp_path / "dest")


def test_failed_download_leaves_no_partial_file(
    model_store, fake_onnx, make_manifest, tmp_path, monkeypatch
):
    _publish(model_store, fake_onnx, make_manifest)
    dest = tmp_path / "dest"
    real_get = model_store.client.get_object

    class Broken:
        def __init__(self, response):
            self._response = response

        def stream(self, amt):
            yield next(self._response.stream(1000))  # some bytes reach the file ...
            raise ConnectionResetError("connection lost mid-download")  # ... then the link drops

        def __getattr__(self, name):
            return getattr(self._response, name)

    def get_object(bucket, key, *args, **kwargs):
        response = real_get(bucket, key, *args, **kwargs)
        return Broken(response) if key.endswith("model.onnx") else response

    monkeypatch.setattr(model_store.client, "get_object", get_object)
    with pytest.raises(ConnectionResetError):
        model_store.fetch("steel-yolo", "1.0.0", dest)
    assert dest.is_dir() and _nothing_in(dest)  # it got as far as the model download


# --- CLI --------------------------------------------------------------------------------------


def _run(args, env=None):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def test_cli_keys_generate(tmp_path):
    out = tmp_path / "keys"
    result = _run(["keys", "generate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "key id" in result.output
    assert (out / "signing.key").exists() and (out / "signing.pub").exists()
    again = _run(["keys", "generate", "--out", str(out)])
    assert again.exit_code == 1
    assert again.output.strip().startswith("Error:") and "refusing to overwrite" in again.output
    assert len(again.output.strip().splitlines()) == 1
    assert _run(["keys", "generate", "--out", str(out), "--force"]).exit_code == 0


def test_cli_models_list_show_verify(
    model_store, store_env, signing_keys, fake_onnx, make_manifest
):
    _, manifest = _publish(model_store, fake_onnx, make_manifest)
    listed = _run(["models", "list"], env=store_env)
    assert listed.exit_code == 0, listed.output
    assert (
        "steel-yolo" in listed.output and "1.0.0" in listed.output and "onnx-fp32" in listed.output
    )

    shown = _run(["models", "show", "steel-yolo", "1.0.0"], env={**store_env, "COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "scratches" in shown.output and manifest.model.sha256 in shown.output
    as_json = _run(["models", "show", "steel-yolo", "1.0.0", "--json"], env=store_env)
    assert ModelManifest.model_validate_json(as_json.output) == manifest

    verified = _run(["models", "verify", "steel-yolo", "1.0.0"], env=store_env)
    assert verified.exit_code == 0, verified.output
    assert verified.output.startswith("OK steel-yolo/1.0.0")
    assert manifest.model.sha256 in verified.output
    assert f"signed by key {signing_keys.key_id}" in verified.output


def test_cli_verify_failure_is_one_line_exit_1(model_store, store_env, fake_onnx, make_manifest):
    _publish(model_store, fake_onnx, make_manifest)
    _put(model_store, version_prefix("steel-yolo", "1.0.0") + "model.onnx", b"evil")
    result = _run(["models", "verify", "steel-yolo", "1.0.0"], env=store_env)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: tampered model"), result.output
    missing = _run(["models", "verify", "steel-yolo", "3.0.0"], env=store_env)
    assert missing.exit_code == 1 and "not found" in missing.output
    unreachable = _run(["models", "list", "--endpoint", "127.0.0.1:1"], env=store_env)
    assert unreachable.exit_code == 1 and "cannot reach the S3 store" in unreachable.output
    bad = _run(["models", "list", "--endpoint", "http://x:1"], env=store_env)
    assert bad.exit_code == 1 and "without a scheme" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_cli_publish(model_store, store_env, fake_onnx, tmp_path):
    onnx = fake_onnx()
    manifest_json = tmp_path / "manifest.json"
    manifest_json.write_text(
        json.dumps(
            {
                "name": "steel-yolo",
                "version": "2.0.0",
                "format": "onnx-int8",
                "input": {"width": 256, "height": 256, "channels": 1},
                "class_names": ["crazing", "scratches"],
            }
        )
    )
    result = _run(["models", "publish", str(onnx), "--manifest", str(manifest_json)], env=store_env)
    assert result.exit_code == 0, result.output
    assert "published steel-yolo/2.0.0" in result.output
    assert model_store.manifest("steel-yolo", "2.0.0").model.size_bytes == onnx.stat().st_size
    again = _run(["models", "publish", str(onnx), "--manifest", str(manifest_json)], env=store_env)
    assert again.exit_code == 1 and "already exists" in again.output
    manifest_json.write_text(json.dumps({"name": "Bad Name"}))
    invalid = _run(
        ["models", "publish", str(onnx), "--manifest", str(manifest_json)], env=store_env
    )
    assert invalid.exit_code == 1 and "name:" in invalid.output


# --- settings (what the store and the CLI are configured with) --------------------------------


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMSPECT_STORE_ENDPOINT", "s3.example.com:9000")
    monkeypatch.setenv("SLIMSPECT_STORE_ACCESS_KEY", "ak")
    monkeypatch.setenv("SLIMSPECT_STORE_SECRET_KEY", "sk")
    monkeypatch.setenv("SLIMSPECT_STORE_SECURE", "true")
    monkeypatch.setenv("SLIMSPECT_STORE_TRUSTED_KEYS", f"{tmp_path}/a.pub, {tmp_path}/b.pub")
    settings = StoreSettings()
    assert settings.url == "https://s3.example.com:9000"
    assert settings.secret_key is not None and settings.secret_key.get_secret_value() == "sk"
    assert "sk" not in repr(settings)
    assert settings.trusted_keys == [tmp_path / "a.pub", tmp_path / "b.pub"]
    monkeypatch.setenv("SLIMSPECT_STORE_TRUSTED_KEYS", json.dumps([str(tmp_path / "c.pub")]))
    assert StoreSettings().trusted_keys == [tmp_path / "c.pub"]
    assert StoreSettings(bucket="override").bucket == "override"  # arguments beat the environment


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"endpoint": "http://127.0.0.1:8333"}, "without a scheme"),
        ({"endpoint": "127.0.0.1:99999"}, "not host:port"),
        ({"endpoint": "127.0.0.1:8333/path"}, "not host:port"),
        ({"bucket": "ab"}, "at least 3 characters"),
        ({"bucket": "Models_Here"}, "not a valid S3 bucket name"),
        ({"access_key": "only-half"}, "both access_key and secret_key"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_settings_errors_are_clear(monkeypatch, fields, message):
    for var in ("ACCESS_KEY", "SECRET_KEY", "ENDPOINT", "BUCKET"):
        monkeypatch.delenv(f"SLIMSPECT_STORE_{var}", raising=False)
    with pytest.raises(ValidationError, match=message):
        StoreSettings(**fields)


def test_wrong_credentials_are_reported(store_settings):
    store = ModelStore.from_settings(
        store_settings.model_copy(update={"secret_key": SecretStr("no")})
    )
    with pytest.raises(StoreError, match="refused the credentials"):
        store.list()


# --- the embedded SeaweedFS itself ------------------------------------------------------------


def test_a_second_seaweed_runs_beside_the_first_and_restarts_on_its_ports(seaweed, tmp_path):
    other = SeaweedS3(tmp_path / "other", startup_timeout_s=60)
    with other:
        assert other.running
        assert not set(other.ports.all_ports()) & set(seaweed.ports.all_ports())
        settings = other.store_settings(bucket="beside", trusted_keys=[], signing_key=None)
        ModelStore.from_settings(settings).ensure_bucket()
        first_ports, first_secret = other.ports, other.secret_key
    assert not other.running
    assert not list(Path("/tmp").glob(f"seaweedfs-*-grpc-{first_ports.s3 + 10000}.sock"))
    again = SeaweedS3(tmp_path / "other", startup_timeout_s=60)
    with again:  # same state dir: same credentials, same ports, same data
        assert (again.ports, again.secret_key) == (first_ports, first_secret)
        assert again.store_settings().endpoint == settings.endpoint
        assert [b.name for b in ModelStore.from_settings(settings).client.list_buckets()] == [
            "beside"
        ]
    assert again.log_path.read_text().count("\n=== ") == 2  # one header line per start
