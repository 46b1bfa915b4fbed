"""The station's model cache: verified model versions on disk, and which one runs.

Layout under ``<state_dir>/models/``::

    <name>/<version>/manifest.json   as ModelStore.fetch installs a version (one rename)
    <name>/<version>/manifest.sig
    <name>/<version>/model.onnx
    <name>/<version>/golden.png      when the manifest has a golden image
    current.json                     {"current": {"name", "version"}, "previous": ... | null}

A copy is verified again every time it is loaded (manifest signature under the trusted
keys, then the sha256 and size of every file against the signed manifest), so a station
restarted without its store runs only what still verifies, and a copy damaged on disk is
refused like a tampered download. ``current.json`` is replaced atomically (write, fsync,
rename), so after any crash it names either the old or the new model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.errors import ModelLoadError
from slimspect.errors import ManifestInvalidError, ModelIntegrityError, SlimspectError
from slimspect.manifest import ModelManifest, check_name, check_version, sha256_file
from slimspect.signing import verify
from slimspect.store import (
    GOLDEN_OBJECT,
    MANIFEST_OBJECT,
    MODEL_OBJECT,
    SIGNATURE_OBJECT,
    FetchedModel,
    ModelStore,
)

CURRENT_FILE = "current.json"


@dataclass(frozen=True, order=True)
class ModelRef:
    """A model version by name."""

    name: str
    version: str

    def __post_init__(self) -> None:
        check_name(self.name)
        check_version(self.version)

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


def verify_directory(directory: Path, trusted_keys: list[Ed25519PublicKey]) -> FetchedModel:
    """Verifies a local copy of a version (the layout ModelStore.fetch writes).

    Raises :class:`ModelLoadError` for a missing file, and the store's own errors
    (:class:`~slimspect.errors.ManifestSignatureError`, ``UnknownSigningKeyError``,
    ``ModelIntegrityError``, ``ManifestInvalidError``) for what does not verify.
    """
    manifest_path = directory / MANIFEST_OBJECT
    signature_path = directory / SIGNATURE_OBJECT
    model_path = directory / MODEL_OBJECT
    try:
        manifest_bytes = manifest_path.read_bytes()
        signature = signature_path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(
            f"{directory} is not a model copy: cannot read {exc.filename} ({exc.strerror})"
        ) from None
    signer = verify(manifest_bytes, signature, trusted_keys, subject=str(manifest_path))
    manifest = ModelManifest.from_json(manifest_bytes, source=str(manifest_path))
    _check_file(model_path, manifest.model.sha256, manifest.model.size_bytes, "tampered model")
    golden_path = None
    if manifest.golden is not None:
        golden_path = directory / GOLDEN_OBJECT
        _check_file(golden_path, manifest.golden.sha256, None, "tampered golden image")
    return FetchedModel(
        manifest=manifest,
        key_id=signer,
        directory=directory,
        model_path=model_path,
        manifest_path=manifest_path,
        signature_path=signature_path,
        golden_path=golden_path,
    )


def _check_file(path: Path, sha256: str, size: int | None, what: str) -> None:
    try:
        actual, actual_size = sha256_file(path)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc.strerror}") from None
    if actual != sha256 or (size is not None and actual_size != size):
        raise ModelIntegrityError(
            f"{what}: {path} has sha256 {actual[:12]}... ({actual_size} bytes), "
            f"the signed manifest says {sha256[:12]}..."
        )


class ModelCache:
    """Verified model versions under ``root``, and the pointer to the one that runs."""

    def __init__(self, root: Path, trusted_keys: list[Ed25519PublicKey]) -> None:
        self.root = Path(root)
        self.trusted_keys = trusted_keys

    def directory(self, ref: ModelRef) -> Path:
        return self.root / ref.name / ref.version

    def has(self, ref: ModelRef) -> bool:
        return (self.directory(ref) / SIGNATURE_OBJECT).is_file()

    def verified(self, ref: ModelRef) -> FetchedModel:
        """The cached copy of ``ref``, verified; see :func:`verify_directory` for errors."""
        fetched = verify_directory(self.directory(ref), self.trusted_keys)
        if (fetched.manifest.name, fetched.manifest.version) != (ref.name, ref.version):
            raise ManifestInvalidError(
                f"{fetched.manifest_path} describes {fetched.manifest.key}, not {ref}"
            )
        return fetched

    def get(self, ref: ModelRef, store: ModelStore | None) -> FetchedModel:
        """The cached copy when it verifies, else a fresh download (verified by the store).

        A cached copy that no longer verifies is replaced by the download; without a
        store its error is raised.
        """
        if self.has(ref):
            try:
                return self.verified(ref)
            except (SlimspectError, ModelLoadError):
                if store is None:
                    raise
        if store is None:
            raise ModelLoadError(f"{ref} is not in the model cache {self.root} and no store is set")
        return store.fetch(ref.name, ref.version, self.root)

    def import_directory(self, source: Path) -> FetchedModel:
        """Verifies a copy made elsewhere (``model.path``) and installs it into the cache."""
        fetched = verify_directory(source, self.trusted_keys)
        ref = ModelRef(fetched.manifest.name, fetched.manifest.version)
        if self.has(ref):
            return self.verified(ref)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".import-{ref.name}-", dir=self.root))
        try:
            for path in (fetched.manifest_path, fetched.signature_path, fetched.model_path):
                shutil.copy2(path, tmp / path.name)
            if fetched.golden_path is not None:
                shutil.copy2(fetched.golden_path, tmp / fetched.golden_path.name)
            self.directory(ref).parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, self.directory(ref))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.verified(ref)

    # --- which model runs -----------------------------------------------------------------

    def read_current(self) -> tuple[ModelRef | None, ModelRef | None]:
        """(current, previous) from ``current.json``; (None, None) when absent or unreadable."""
        try:
            data = json.loads((self.root / CURRENT_FILE).read_text())
            current = _ref(data.get("current"))
            previous = _ref(data.get("previous"))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None, None
        return current, previous

    def write_current(self, current: ModelRef, previous: ModelRef | None) -> None:
        """Replaces ``current.json`` atomically (write, fsync, rename, fsync the folder)."""
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"current": current.to_dict(), "previous": previous.to_dict() if previous else None}
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{CURRENT_FILE}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / CURRENT_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def prune(self, keep: set[ModelRef]) -> list[ModelRef]:
        """Removes cached versions not in ``keep``; returns what it removed."""
        removed = []
        for version_dir in sorted(self.root.glob("*/*")):
            if not version_dir.is_dir() or version_dir.name.startswith("."):
                continue
            try:
                ref = ModelRef(version_dir.parent.name, version_dir.name)
            except ValueError:
                continue
            if ref not in keep:
                shutil.rmtree(version_dir, ignore_errors=True)
                removed.append(ref)
        return removed


def _ref(value: object) -> ModelRef | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError("not a model reference")
    return ModelRef(str(value["name"]), str(value["version"]))
