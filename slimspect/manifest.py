"""ModelManifest: what a published model is.

A manifest lives next to its model in the store as ``models/<name>/<version>/manifest.json``
and is signed in ``manifest.sig`` (see :mod:`slimspect.signing`). The bytes stored are exactly
:meth:`ModelManifest.canonical_json` (sorted keys, no whitespace, UTF-8), so the signature
covers one unambiguous byte string.

The JSON schema of this model is checked in at ``slimspect/schemas/model-manifest.schema.json``;
regenerate it with ``python -m slimspect.manifest`` after changing a field (a test fails
while the file is stale).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from slimspect.detection import Detection
from slimspect.errors import ManifestInvalidError

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "model-manifest.schema.json"

# A name is a path component of the store layout: lowercase slug, never "." or "..".
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# A version is a semver-like string ("1.4.0", "v2.0.0-rc.1+int8") or any slug ("20240501-distill").
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ModelVersion = Annotated[str, StringConstraints(pattern=VERSION_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")]
Probability = Annotated[float, Field(gt=0.0, lt=1.0)]

_CHUNK = 1 << 20


class _Record(BaseModel):
    """Base of every manifest part: immutable, unknown fields are errors, no NaN/inf."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def sha256_file(path: str | Path) -> tuple[str, int]:
    """Returns ``(sha256 hex, size in bytes)`` of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class ModelFile(_Record):
    """sha256 and size of ``model.onnx``."""

    sha256: Sha256
    size_bytes: int = Field(gt=0)

    @classmethod
    def from_path(cls, path: str | Path) -> ModelFile:
        """Hashes the file at ``path``."""
        sha256, size = sha256_file(path)
        return cls(sha256=sha256, size_bytes=size)


class Normalize(_Record):
    """``(pixel * scale - mean) / std``, per channel (one value applies to every channel)."""

    scale: float = Field(default=1.0 / 255.0, gt=0.0)
    mean: tuple[float, ...] = Field(default=(0.0,), min_length=1, max_length=3)
    std: tuple[float, ...] = Field(default=(1.0,), min_length=1, max_length=3)

    @field_validator("std")
    @classmethod
    def _std_positive(cls, std: tuple[float, ...]) -> tuple[float, ...]:
        if any(s <= 0 for s in std):
            raise ValueError("every std value must be > 0")
        return std


class InputSpec(_Record):
    """The network input and the pre-processing that produces it from a source image."""

    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    channels: Literal[1, 3] = Field(description="1: grayscale, 3: RGB")
    letterbox: bool = Field(default=True, description="keep aspect ratio and pad (else stretch)")
    pad_value: int = Field(default=114, ge=0, le=255)
    normalize: Normalize = Normalize()

    @model_validator(mode="after")
    def _per_channel_lengths(self) -> InputSpec:
        for field in ("mean", "std"):
            values = getattr(self.normalize, field)
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"normalize.{field} has {len(values)} values; "
                    f"give 1 or {self.channels} (one per channel)"
                )
        return self


class Thresholds(_Record):
    """Post-processing thresholds: minimum score and NMS IoU, both in (0, 1)."""

    score: Probability = 0.25
    iou: Probability = 0.45


class Metrics(_Record):
    """Evaluation and benchmark figures; each may be unknown."""

    map50: float | None = Field(default=None, ge=0.0, le=1.0)
    map50_95: float | None = Field(default=None, ge=0.0, le=1.0)
    params: int | None = Field(default=None, ge=0)
    gflops: float | None = Field(default=None, ge=0.0)
    cpu_fps: float | None = Field(default=None, ge=0.0)


class Lineage(_Record):
    """Where the model comes from: its parent version, pipeline stage, run and data set."""

    parent_version: ModelVersion | None = None
    stage: Slug | None = None
    run_id: Slug | None = None
    dataset_hash: Slug | None = None


class GoldenTolerance(_Record):
    """How close a smoke-test detection must be to the expected one."""

    iou: Probability = 0.9
    score: float = Field(default=0.05, ge=0.0, le=1.0, description="max absolute score difference")


class Golden(_Record):
    """A golden image stored next to the model and the detections it must produce."""

    image: Literal["golden.png"] = "golden.png"
    sha256: Sha256
    expected: list[Detection]
    tolerance: GoldenTolerance = GoldenTolerance()


class ModelManifest(_Record):
    """What a published model is. Frozen; unknown fields are errors."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: ModelName
    version: ModelVersion
    created_at: AwareDatetime = Field(description="UTC; a timezone is required")
    format: Literal["onnx-fp32", "onnx-int8"]
    model: ModelFile
    input: InputSpec
    class_names: list[Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)
    thresholds: Thresholds = Thresholds()
    metrics: Metrics = Metrics()
    lineage: Lineage = Lineage()
    golden: Golden | None = None

    @field_validator("created_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @field_validator("class_names")
    @classmethod
    def _unique_names(cls, names: list[str]) -> list[str]:
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"class names must be unique; repeated: {', '.join(repeated)}")
        return names

    @model_validator(mode="after")
    def _golden_classes(self) -> ModelManifest:
        if self.golden is None:
            return self
        for i, det in enumerate(self.golden.expected):
            if (
                det.class_id >= len(self.class_names)
                or self.class_names[det.class_id] != det.class_name
            ):
                raise ValueError(
                    f"golden.expected[{i}]: class {det.class_id} {det.class_name!r} "
                    f"is not in class_names"
                )
        return self

    def canonical_json(self) -> bytes:
        """The exact bytes stored as manifest.json and signed: sorted keys, no whitespace, UTF-8."""
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes | str, *, source: str = "manifest.json") -> ModelManifest:
        """Parses and validates manifest JSON; raises :class:`ManifestInvalidError` naming ``source``."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ManifestInvalidError(
                f"{source} is not a valid model manifest: {describe_errors(exc)}"
            ) from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "manifest") -> ModelManifest:
        """Validates a mapping; raises :class:`ManifestInvalidError` naming ``source``."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ManifestInvalidError(
                f"{source} is not a valid model manifest: {describe_errors(exc)}"
            ) from exc

    @property
    def key(self) -> str:
        """``<name>/<version>``, the way people and the store name this model."""
        return f"{self.name}/{self.version}"


def manifest_for_file(onnx_path: str | Path, **fields: Any) -> ModelManifest:
    """A manifest for the model file at ``onnx_path``: its ``model`` sha256/size are computed.

    Every other field is given as a keyword (plain values or records); ``created_at`` defaults
    to now (UTC). This is how a producer (the exporter, ``slimspect models publish``) makes the
    manifest that :meth:`slimspect.store.ModelStore.publish` checks against the same file.
    """
    if "model" in fields:
        raise TypeError("manifest_for_file computes 'model' from the file; do not pass it")
    fields.setdefault("created_at", datetime.now(UTC))
    return ModelManifest.model_validate({**fields, "model": ModelFile.from_path(onnx_path)})


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace, UTF-8; NaN and infinities are refused."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def describe_errors(exc: ValidationError, *, limit: int = 5) -> str:
    """One line per pydantic error, ``field.path: message``, joined with ``; ``."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{where}: {err['msg']}")
    if exc.error_count() > limit:
        parts.append(f"... and {exc.error_count() - limit} more")
    return "; ".join(parts)


def check_name(name: str) -> str:
    """Returns ``name`` if it is a valid model name, else raises ValueError (it is a path part)."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(
            f"invalid model name {name!r}: use lowercase letters, digits and -_. (max 64)"
        )
    return name


def check_version(version: str) -> str:
    """Returns ``version`` if it is a valid version, else raises ValueError (it is a path part)."""
    if not re.fullmatch(VERSION_PATTERN, version):
        raise ValueError(
            f"invalid model version {version!r}: use letters, digits and -_.+ (max 64)"
        )
    return version


_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    return tuple(
        (0, int(t)) if t.isdigit() else (1, t) for t in re.findall(r"\d+|[^\d.+_-]+", text)
    )


def version_sort_key(version: str) -> tuple:
    """Orders versions: semver by precedence (1.0.0-rc.1 < 1.0.0 < 1.10.0), others naturally.

    Semver versions sort after non-semver ones; the string itself breaks remaining ties.
    """
    m = _SEMVER.match(version)
    if m is None:
        return (0, _natural(version), version)
    core = tuple(int(g) for g in m.group(1, 2, 3))
    pre = m.group(4)
    pre_key = (1,) if pre is None else (0, _natural(pre))
    return (1, core, pre_key, version)


def manifest_json_schema() -> dict[str, Any]:
    """The JSON schema of :class:`ModelManifest` (validation mode)."""
    return ModelManifest.model_json_schema()


def render_json_schema() -> str:
    """The checked-in text of the schema file: indented, sorted keys, trailing newline."""
    return json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n"


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    """Writes the schema file (``python -m slimspect.manifest``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_json_schema(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_json_schema())
