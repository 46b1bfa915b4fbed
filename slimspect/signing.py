"""Ed25519 signatures over manifest bytes.

A publisher holds ``signing.key`` (PKCS8 PEM, mode 0600); every consumer holds the public
``signing.pub`` (SubjectPublicKeyInfo PEM) of the publishers it trusts. A signature document
is small JSON stored as ``manifest.sig``::

    {"alg":"ed25519","key_id":"<16 hex>","signature":"<base64>"}

``key_id`` is the first 16 hex digits of the sha256 of the raw 32-byte public key; it tells a
verifier which trusted key to use, and a key that is not trusted is a different error
(:class:`UnknownSigningKeyError`, "wrong key") from a signature that does not verify
(:class:`ManifestSignatureError`, "tampered manifest").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from slimspect.errors import KeyFileError, ManifestSignatureError, UnknownSigningKeyError

ALGORITHM = "ed25519"
PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"


@dataclass(frozen=True)
class KeyPairFiles:
    """Where :func:`generate_keypair` wrote the keys, and the key id."""

    private_key: Path
    public_key: Path
    key_id: str


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw public key bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(directory: str | Path, *, force: bool = False) -> KeyPairFiles:
    """Writes a new ``signing.key`` (0600) and ``signing.pub`` into ``directory``.

    Refuses (:class:`KeyFileError`) to replace an existing key file unless ``force``: losing a
    signing key means every consumer has to be told to trust a new one.
    """
    directory = Path(directory)
    private_path = directory / PRIVATE_KEY_FILE
    public_path = directory / PUBLIC_KEY_FILE
    existing = [p for p in (private_path, public_path) if p.exists()]
    if existing and not force:
        raise KeyFileError(
            f"{', '.join(str(p) for p in existing)} already exist(s); "
            "refusing to overwrite a signing key (use force/--force to replace it)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, mode=0o600)
    _write_new(public_path, public_pem, mode=0o644)
    return KeyPairFiles(private_path, public_path, key_id(private_key.public_key()))


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    # Created with its final mode (never briefly world-readable), replacing any old file.
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have removed bits we asked for


def _read_pem(path: str | Path, what: str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} file {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} file {path}: {exc.strerror}") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Loads an unencrypted PKCS8 PEM Ed25519 private key; :class:`KeyFileError` otherwise."""
    data = _read_pem(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        hint = " (this looks like a public key: pass signing.key)" if b"PUBLIC KEY" in data else ""
        raise KeyFileError(f"{path} is not an unencrypted PEM private key{hint}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Loads a SubjectPublicKeyInfo PEM Ed25519 public key; :class:`KeyFileError` otherwise."""
    data = _read_pem(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        hint = (
            " (this looks like a private key: pass signing.pub)" if b"PRIVATE KEY" in data else ""
        )
        raise KeyFileError(f"{path} is not a PEM public key{hint}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_public_keys(paths: Iterable[str | Path]) -> list[Ed25519PublicKey]:
    """Loads every trusted public key; the first bad file raises :class:`KeyFileError`."""
    return [load_public_key(p) for p in paths]


def sign(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> bytes:
    """The signature document (compact JSON bytes) for ``manifest_bytes``."""
    doc = {
        "alg": ALGORITHM,
        "key_id": key_id(private_key.public_key()),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def verify(
    manifest_bytes: bytes,
    sig_doc_bytes: bytes,
    trusted_public_keys: Iterable[Ed25519PublicKey],
    *,
    subject: str = "manifest",
) -> str:
    """Verifies a signature document against the trusted keys; returns the signer's key id.

    Raises:
        UnknownSigningKeyError: the document names a key that is not trusted (wrong key).
        ManifestSignatureError: the document is malformed, or the signature does not verify
            under the trusted key it names (the manifest or signature was altered).
    """
    alg, signer, signature = _parse_signature_doc(sig_doc_bytes, subject)
    if alg != ALGORITHM:
        raise ManifestSignatureError(f"{subject}: unsupported signature algorithm {alg!r}")
    trusted = {key_id(k): k for k in trusted_public_keys}
    if signer not in trusted:
        known = ", ".join(sorted(trusted)) or "none configured"
        raise UnknownSigningKeyError(
            f"{subject} is signed by key {signer}, which is not trusted (trusted keys: {known})"
        )
    try:
        trusted[signer].verify(signature, manifest_bytes)
    except InvalidSignature:
        raise ManifestSignatureError(
            f"{subject}: signature by trusted key {signer} does not verify "
            "(the manifest or its signature was modified)"
        ) from None
    return signer


def _parse_signature_doc(data: bytes, subject: str) -> tuple[str, str, bytes]:
    try:
        doc = json.loads(data)
        alg, signer, encoded = doc["alg"], doc["key_id"], doc["signature"]
        if not all(isinstance(v, str) for v in (alg, signer, encoded)):
            raise TypeError("fields must be strings")
        signature = base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ManifestSignatureError(f"{subject}: malformed signature document ({exc})") from None
    return alg, signer, signature
