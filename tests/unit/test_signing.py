"""Ed25519 signing: key files, signature documents, the two failure kinds."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slimspect.errors import KeyFileError, ManifestSignatureError, UnknownSigningKeyError
from slimspect.signing import (
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    load_public_keys,
    sign,
    verify,
)

MANIFEST = b'{"name":"steel-yolo","version":"1.0.0"}'


@pytest.fixture
def keypair(tmp_path):
    files = generate_keypair(tmp_path / "keys")
    return files, load_private_key(files.private_key), load_public_key(files.public_key)


def test_generate_keypair_writes_pem_files_with_private_mode(keypair):
    files, private, public = keypair
    assert files.private_key.name == "signing.key" and files.public_key.name == "signing.pub"
    assert stat.S_IMODE(files.private_key.stat().st_mode) == 0o600
    assert files.private_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert files.public_key.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert files.key_id == key_id(public) == key_id(private.public_key())


def test_generate_keypair_refuses_to_overwrite_unless_forced(keypair):
    files, _, _ = keypair
    before = files.private_key.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_keypair(files.private_key.parent)
    assert files.private_key.read_bytes() == before
    again = generate_keypair(files.private_key.parent, force=True)
    assert again.key_id != files.key_id
    assert stat.S_IMODE(again.private_key.stat().st_mode) == 0o600


def test_key_id_is_16_hex_of_the_raw_public_key(keypair):
    _, _, public = keypair
    kid = key_id(public)
    assert len(kid) == 16 and int(kid, 16) >= 0


def test_sign_then_verify_returns_the_key_id(keypair):
    files, private, public = keypair
    doc = sign(MANIFEST, private)
    parsed = json.loads(doc)
    assert parsed["alg"] == "ed25519" and parsed["key_id"] == files.key_id
    assert len(base64.b64decode(parsed["signature"])) == 64
    assert verify(MANIFEST, doc, [public]) == files.key_id


def test_tampered_manifest_is_a_signature_error(keypair):
    _, private, public = keypair
    doc = sign(MANIFEST, private)
    with pytest.raises(ManifestSignatureError, match="does not verify"):
        verify(MANIFEST.replace(b"1.0.0", b"1.0.1"), doc, [public], subject="s3://b/m.json")


def test_untrusted_key_is_an_unknown_key_error(keypair):
    _, private, _ = keypair
    other = Ed25519PrivateKey.generate().public_key()
    doc = sign(MANIFEST, private)
    with pytest.raises(UnknownSigningKeyError, match=key_id(private.public_key())) as info:
        verify(MANIFEST, doc, [other])
    assert key_id(other) in str(info.value)  # the message lists what is trusted
    with pytest.raises(UnknownSigningKeyError, match="none configured"):
        verify(MANIFEST, doc, [])


def test_forged_key_id_does_not_verify(keypair):
    _, _, public = keypair
    attacker = Ed25519PrivateKey.generate()
    doc = json.loads(sign(MANIFEST, attacker))
    doc["key_id"] = key_id(public)  # claims to be the trusted key
    with pytest.raises(ManifestSignatureError):
        verify(MANIFEST, json.dumps(doc).encode(), [public])


@pytest.mark.parametrize(
    "doc",
    [
        b"",
        b"not json",
        b"[]",
        b'{"alg":"ed25519","key_id":"00"}',
        b'{"alg":"ed25519","key_id":"00","signature":"%%%"}',
        b'{"alg":"rsa","key_id":"00","signature":"AAAA"}',
    ],
)
def test_malformed_signature_documents(keypair, doc):
    _, _, public = keypair
    with pytest.raises(ManifestSignatureError):
        verify(MANIFEST, doc, [public])


def test_load_errors_are_clear(tmp_path, keypair):
    files, _, _ = keypair
    with pytest.raises(KeyFileError, match="does not exist"):
        load_private_key(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="does not exist"):
        load_public_keys([files.public_key, tmp_path / "nope.pub"])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(garbage)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_private_key(garbage)
    with pytest.raises(KeyFileError, match="looks like a public key"):
        load_private_key(files.public_key)
    with pytest.raises(KeyFileError, match="looks like a private key"):
        load_public_key(files.private_key)
    with pytest.raises(KeyFileError, match="is a directory"):
        load_public_key(tmp_path)


def test_non_ed25519_keys_are_refused(tmp_path):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "rsa.key"
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        load_private_key(path)
    pub = tmp_path / "rsa.pub"
    pub.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 public key"):
        load_public_key(pub)
