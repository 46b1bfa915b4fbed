"""The model store: signed, immutable model versions in an S3 bucket (minio client).

Layout of one version::

    models/<name>/<version>/model.onnx      the model
    models/<name>/<version>/golden.png      optional smoke-test image (manifest.golden)
    models/<name>/<version>/manifest.json   ModelManifest.canonical_json()
    models/<name>/<version>/manifest.sig    Ed25519 signature document over manifest.json

``publish`` uploads in that order: the signature is the commit marker, so a version without
``manifest.sig`` is incomplete and invisible to ``list`` and ``latest``. ``fetch`` trusts
nothing it downloads until the signature verifies under a trusted key and every file matches
the sha256 and size the signed manifest records; only then does the version appear, by one
rename, in ``dest_dir/<name>/<version>/``.

Publishing checks and then writes, as S3 offers no portable "create if absent": two
publishers racing on one version are not excluded, one publisher per model is assumed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import urllib3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from slimspect.errors import (
    ManifestInvalidError,
    ModelIntegrityError,
    ModelNotFoundError,
    StoreError,
    StoreUnreachableError,
    VersionExistsError,
)
from slimspect.manifest import (
    ModelFile,
    ModelManifest,
    check_name,
    check_version,
    sha256_file,
    version_sort_key,
)
from slimspect.settings import StoreSettings
from slimspect.signing import key_id, load_private_key, load_public_key, sign, verify

log = logging.getLogger(__name__)

MODELS_PREFIX = "models/"
MODEL_OBJECT = "model.onnx"
GOLDEN_OBJECT = "golden.png"
MANIFEST_OBJECT = "manifest.json"
SIGNATURE_OBJECT = "manifest.sig"

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0
_MAX_SMALL_OBJECT = 1 << 20  # manifest.json and manifest.sig are a few KiB
_CHUNK = 1 << 20
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "ResourceNotFound", "NoSuchObject"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}


def make_client(settings: StoreSettings) -> Minio:
    """A minio client that fails fast: 3 s to connect, no connect retries, few 5xx retries."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        retries=urllib3.Retry(
            total=2, connect=0, read=0, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)
        ),
    )
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value() if settings.secret_key else None,
        secure=settings.secure,
        region=settings.region,
        http_client=http,
    )


@dataclass(frozen=True)
class ModelVersionInfo:
    """One complete (signed) version, as ``list`` and ``latest`` report it (not verified)."""

    name: str
    version: str
    created_at: datetime
    format: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class PublishedModel:
    """What ``publish`` wrote."""

    name: str
    version: str
    prefix: str
    key_id: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class FetchedModel:
    """A verified local copy: ``directory`` is ``dest_dir/<name>/<version>``."""

    manifest: ModelManifest
    key_id: str
    directory: Path
    model_path: Path
    manifest_path: Path
    signature_path: Path
    golden_path: Path | None


@dataclass(frozen=True)
class _SignedManifest:
    manifest: ModelManifest
    manifest_bytes: bytes
    signature_bytes: bytes
    key_id: str


def version_prefix(name: str, version: str) -> str:
    """``models/<name>/<version>/`` after checking both are valid path parts."""
    return f"{MODELS_PREFIX}{check_name(name)}/{check_version(version)}/"


class ModelStore:
    """Publishes, lists and fetches signed model versions in one bucket.

    Args:
        client: a minio client (see :func:`make_client` for one that fails fast).
        bucket: the bucket holding ``models/``.
        signing_key: private key (or the path of ``signing.key``) used by ``publish``.
        trusted_keys: public keys (or paths of ``.pub`` files) a fetched manifest may be signed by.
        url: the endpoint URL, used in messages.

    Key paths are loaded on first use, so a consumer whose settings name a signing key it
    does not have can still fetch.
    """

    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        signing_key: Ed25519PrivateKey | Path | None = None,
        trusted_keys: Sequence[Ed25519PublicKey | Path] = (),
        url: str = "the S3 store",
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.url = url
        self._signing_key = signing_key
        self._trusted_keys = list(trusted_keys)

    @classmethod
    def from_settings(cls, settings: StoreSettings, *, client: Minio | None = None) -> ModelStore:
        """The store the settings describe; ``client`` replaces the one they would build."""
        return cls(
            client or make_client(settings),
            settings.bucket,
            signing_key=settings.signing_key,
            trusted_keys=settings.trusted_keys,
            url=settings.url,
        )

    # --- keys -------------------------------------------------------------------------------

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        if self._signing_key is None:
            raise StoreError(
                "publishing needs a signing key: set SLIMSPECT_STORE_SIGNING_KEY "
                "(create one with 'slimspect keys generate')"
            )
        if isinstance(self._signing_key, Path):
            self._signing_key = load_private_key(self._signing_key)
        return self._signing_key

    @property
    def trusted_keys(self) -> list[Ed25519PublicKey]:
        keys = [load_public_key(k) if isinstance(k, Path) else k for k in self._trusted_keys]
        self._trusted_keys = list(keys)
        return keys

    # --- publish ----------------------------------------------------------------------------

    def publish(
        self,
        onnx_path: str | Path,
        manifest: ModelManifest,
        *,
        golden_png: str | Path | None = None,
    ) -> PublishedModel:
        """Uploads a new version: model (and golden image), manifest.json, then manifest.sig.

        ``manifest.model`` must be the sha256/size of ``onnx_path`` (make the manifest with
        :func:`slimspect.manifest.manifest_for_file`), and ``manifest.golden.sha256`` that of
        ``golden_png``; the files are hashed again here and a mismatch raises
        :class:`ModelIntegrityError` before anything is uploaded.

        Raises:
            VersionExistsError: any object already exists under the version's prefix.
            ModelIntegrityError: a file does not match the manifest.
            ManifestInvalidError: golden image and manifest.golden do not go together.
        """
        onnx_path = Path(onnx_path)
        prefix = version_prefix(manifest.name, manifest.version)
        signing_key = self.signing_key
        actual = ModelFile.from_path(onnx_path)
        if actual != manifest.model:
            raise ModelIntegrityError(
                f"{onnx_path} does not match its manifest {manifest.key}: file sha256 "
                f"{actual.sha256[:12]}... ({actual.size_bytes} bytes), manifest sha256 "
                f"{manifest.model.sha256[:12]}... ({manifest.model.size_bytes} bytes)"
            )
        golden_path = self._check_golden(manifest, golden_png)

        manifest_bytes = manifest.canonical_json()
        signature = sign(manifest_bytes, signing_key)
        uploads: list[tuple[str, Path | bytes, str]] = [
            (MODEL_OBJECT, onnx_path, "application/octet-stream")
        ]
        if golden_path is not None:
            uploads.append((GOLDEN_OBJECT, golden_path, "image/png"))
        uploads.append((MANIFEST_OBJECT, manifest_bytes, "application/json"))
        uploads.append((SIGNATURE_OBJECT, signature, "application/json"))  # last: the commit marker

        with self._errors(f"publishing {self._where(prefix)}"):
            self.ensure_bucket()
            if self._has_objects(prefix):
                raise VersionExistsError(
                    f"{self._where(prefix)} already exists: versions are immutable, publish a new version"
                )
            attempted: list[str] = []
            try:
                for obj, source, content_type in uploads:
                    attempted.append(prefix + obj)
                    self._put(prefix + obj, source, content_type)
            except BaseException:
                # Newest first, so a signature is never left without its manifest.
                self._remove_quietly(reversed(attempted))
                raise
        signer = key_id(signing_key.public_key())
        log.info("published %s (key %s)", self._where(prefix), signer)
        return PublishedModel(
            name=manifest.name,
            version=manifest.version,
            prefix=prefix,
            key_id=signer,
            sha256=actual.sha256,
            size_bytes=actual.size_bytes,
        )

    def _check_golden(self, manifest: ModelManifest, golden_png: str | Path | None) -> Path | None:
        if manifest.golden is None:
            if golden_png is not None:
                raise ManifestInvalidError(
                    f"a golden image was given but manifest {manifest.key} has no 'golden' section"
                )
            return None
        if golden_png is None:
            raise ManifestInvalidError(
                f"manifest {manifest.key} declares golden.png but no golden image was given"
            )
        golden_png = Path(golden_png)
        sha256, _ = sha256_file(golden_png)
        if sha256 != manifest.golden.sha256:
            raise ModelIntegrityError(
                f"{golden_png} does not match manifest {manifest.key}: file sha256 {sha256[:12]}..., "
                f"manifest golden.sha256 {manifest.golden.sha256[:12]}..."
            )
        return golden_png

    def ensure_bucket(self) -> None:
        """Creates the bucket if it does not exist."""
        with self._errors(f"creating bucket {self.bucket}"):
            if self.client.bucket_exists(self.bucket):
                return
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    # --- read -------------------------------------------------------------------------------

    def manifest(self, name: str, version: str) -> ModelManifest:
        """The verified manifest of a complete version."""
        return self._signed_manifest(name, version).manifest

    def latest(self, name: str) -> ModelVersionInfo:
        """The newest complete version of ``name``: by created_at, ties by version order."""
        versions = self.list(name)
        if not versions:
            raise ModelNotFoundError(
                f"no published version of model {name!r} in {self._where(MODELS_PREFIX)}"
            )
        return max(versions, key=lambda v: (v.created_at, version_sort_key(v.version)))

    def fetch(self, name: str, version: str, dest_dir: str | Path) -> FetchedModel:
        """Downloads, verifies and installs a version as ``dest_dir/<name>/<version>/``.

        Files are downloaded into a temporary folder inside ``dest_dir``; after the signature
        (trusted key) and every sha256/size check pass it is renamed into place in one step,
        replacing an older copy of the same version. ``dest_dir`` is only created once the
        signed manifest has verified; on any failure the temporary folder is removed and
        nothing new remains in ``dest_dir``.

        Raises:
            ModelNotFoundError, UnknownSigningKeyError, ManifestSignatureError,
            ManifestInvalidError, ModelIntegrityError, StoreUnreachableError.
        """
        prefix = version_prefix(name, version)
        signed = self._signed_manifest(name, version)  # before touching dest_dir at all
        manifest = signed.manifest
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        final = dest_dir / name / version
        tmp = Path(
            tempfile.mkdtemp(prefix=f".fetch-{name}-{version}-", suffix=".partial", dir=dest_dir)
        )
        try:
            _write_synced(tmp / MANIFEST_OBJECT, signed.manifest_bytes)
            _write_synced(tmp / SIGNATURE_OBJECT, signed.signature_bytes)
            self._download_checked(
                prefix + MODEL_OBJECT,
                tmp / MODEL_OBJECT,
                manifest.model.sha256,
                manifest.model.size_bytes,
            )
            if manifest.golden is not None:
                self._download_checked(
                    prefix + GOLDEN_OBJECT, tmp / GOLDEN_OBJECT, manifest.golden.sha256
                )
            final.parent.mkdir(exist_ok=True)
            _replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return FetchedModel(
            manifest=manifest,
            key_id=signed.key_id,
            directory=final,
            model_path=final / MODEL_OBJECT,
            manifest_path=final / MANIFEST_OBJECT,
            signature_path=final / SIGNATURE_OBJECT,
            golden_path=final / GOLDEN_OBJECT if manifest.golden is not None else None,
        )

    def _signed_manifest(self, name: str, version: str) -> _SignedManifest:
        prefix = version_prefix(name, version)
        manifest_key = prefix + MANIFEST_OBJECT
        trusted = self.trusted_keys  # a bad key file is reported before any download
        with self._errors(f"reading {self._where(prefix)}"):
            try:
                signature = self._get_small(prefix + SIGNATURE_OBJECT)
            except ModelNotFoundError:
                if self._has_objects(prefix):
                    raise ModelNotFoundError(
                        f"{self._where(prefix)} is incomplete: no {SIGNATURE_OBJECT} "
                        "(still being published, or a publish failed)"
                    ) from None
                raise ModelNotFoundError(
                    f"model {name}/{version} not found: nothing at {self._where(prefix)}"
                ) from None
            manifest_bytes = self._get_small(manifest_key)
        signer = verify(manifest_bytes, signature, trusted, subject=self._where(manifest_key))
        manifest = ModelManifest.from_json(manifest_bytes, source=self._where(manifest_key))
        if (manifest.name, manifest.version) != (name, version):
            raise ManifestInvalidError(
                f"{self._where(manifest_key)} describes {manifest.key}, not {name}/{version} "
                "(a signed manifest copied to another version)"
            )
        return _SignedManifest(manifest, manifest_bytes, signature, signer)

    def _download_checked(self, key: str, path: Path, sha256: str, size: int | None = None) -> None:
        digest = hashlib.sha256()
        written = 0
        with self._errors(f"downloading {self._where(key)}"):
            response = self.client.get_object(self.bucket, key)
            try:
                with open(path, "wb") as f:
                    for chunk in response.stream(_CHUNK):
                        written += len(chunk)
                        if size is not None and written > size:
                            break  # larger than the manifest says: do not fill the disk
                        digest.update(chunk)
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                response.close()
                response.release_conn()
        actual = digest.hexdigest()
        if actual != sha256 or (size is not None and written != size):
            what = "tampered model" if key.endswith(MODEL_OBJECT) else "tampered file"
            got = f"{written}+ bytes" if size is not None and written > size else f"{written} bytes"
            raise ModelIntegrityError(
                f"{what}: {self._where(key)} has sha256 {actual[:12]}... ({got}), "
                f"the signed manifest says {sha256[:12]}...{f' ({size} bytes)' if size else ''}"
            )

    # --- S3 plumbing ------------------------------------------------------------------------

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turns client and transport errors into StoreError subclasses naming ``doing``."""
        try:
            yield
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                raise ModelNotFoundError(
                    f"{doing}: bucket {self.bucket!r} does not exist at {self.url}"
                ) from exc
            if exc.code in _NOT_FOUND:
                raise ModelNotFoundError(f"{doing}: does not exist ({exc.code})") from exc
            if exc.code in _DENIED:
                raise StoreError(
                    f"{doing}: {self.url} refused the credentials ({exc.code}); "
                    "check SLIMSPECT_STORE_ACCESS_KEY / SLIMSPECT_STORE_SECRET_KEY"
                ) from exc
            raise StoreError(f"{doing}: {exc.code}: {exc.message}") from exc
        except (ServerError, InvalidResponseError) as exc:
            raise StoreError(f"{doing}: {self.url} answered with an error: {exc}") from exc
        except urllib3.exceptions.HTTPError as exc:
            reason = str(getattr(exc, "reason", None) or exc)
            reason = reason.split("): ", 1)[-1].split(">: ", 1)[-1]  # drop the connection repr
            raise StoreUnreachableError(
                f"cannot reach the S3 store at {self.url} ({doing}): {reason}"
            ) from exc

    def _has_objects(self, prefix: str) -> bool:
        return any(
            True for _ in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        )

    def _get_small(self, key: str) -> bytes:
        with self._errors(f"reading {self._where(key)}"):
            response = self.client.get_object(self.bucket, key)
            try:
                data = response.read(_MAX_SMALL_OBJECT + 1)
            finally:
                response.close()
                response.release_conn()
        if len(data) > _MAX_SMALL_OBJECT:
            raise ManifestInvalidError(
                f"{self._where(key)} is larger than {_MAX_SMALL_OBJECT} bytes"
            )
        return data

    def _put(self, key: str, source: Path | bytes, content_type: str) -> None:
        if isinstance(source, Path):
            self.client.fput_object(self.bucket, key, str(source), content_type=content_type)
        else:
            self.client.put_object(
                self.bucket, key, io.BytesIO(source), len(source), content_type=content_type
            )

    def _remove_quietly(self, keys: Iterator[str]) -> None:
        for key in keys:
            try:
                self.client.remove_object(self.bucket, key)
            except Exception as exc:  # noqa: BLE001 (best effort: an unsigned version is invisible)
                log.warning("could not remove %s after a failed publish: %s", self._where(key), exc)

    # Defined last: inside the class body, later annotations would otherwise see this method.
    def list(self, name: str | None = None) -> list[ModelVersionInfo]:
        """Complete versions (with manifest.sig), sorted by name, created_at and version.

        Manifests are parsed, not verified (listing needs no trusted key); ``manifest`` and
        ``fetch`` verify. A version whose manifest does not parse is skipped with a warning.
        """
        prefix = MODELS_PREFIX if name is None else f"{MODELS_PREFIX}{check_name(name)}/"
        found: dict[tuple[str, str], set[str]] = {}
        with self._errors(f"listing {self._where(prefix)}"):
            for obj in self.client.list_objects(self.bucket, prefix=prefix, recursive=True):
                parts = obj.object_name[len(MODELS_PREFIX) :].split("/")
                if len(parts) == 3:
                    found.setdefault((parts[0], parts[1]), set()).add(parts[2])
        required = {MODEL_OBJECT, MANIFEST_OBJECT, SIGNATURE_OBJECT}
        versions = []
        for (model, version), objects in found.items():
            if not required <= objects:
                continue
            key = f"{MODELS_PREFIX}{model}/{version}/{MANIFEST_OBJECT}"
            try:
                manifest = ModelManifest.from_json(self._get_small(key), source=self._where(key))
            except (ManifestInvalidError, ModelNotFoundError) as exc:
                log.warning("skipping %s/%s: %s", model, version, exc)
                continue
            versions.append(
                ModelVersionInfo(
                    name=manifest.name,
                    version=manifest.version,
                    created_at=manifest.created_at,
                    format=manifest.format,
                    size_bytes=manifest.model.size_bytes,
                    sha256=manifest.model.sha256,
                )
            )
        versions.sort(key=lambda v: (v.name, v.created_at, version_sort_key(v.version)))
        return versions


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace_dir(src: Path, dst: Path) -> None:
    """Renames ``src`` to ``dst``; an existing ``dst`` is moved aside first and removed after."""
    try:
        os.rename(src, dst)
    except OSError:
        if not dst.exists():
            raise
        old = dst.with_name(f".{dst.name}.old-{secrets.token_hex(4)}")
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dst.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
