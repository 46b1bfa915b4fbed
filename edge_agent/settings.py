"""Settings of the station agent: one YAML file, every key overridable by the environment.

``slimspect agent --config station.yaml`` reads the file with :func:`load_settings`. Every
key can be overridden by a variable ``SLIMSPECT_AGENT_<KEY>``, nested keys joined by
``__`` (``SLIMSPECT_AGENT_UPLINK__ENDPOINT=aggregator:50051``); a list such as
``cameras`` is replaced as a whole by JSON. The environment wins over the file, the file
over the defaults. The store section is :class:`slimspect.settings.StoreSettings`, so the
``SLIMSPECT_STORE_*`` variables the ``slimspect models`` command reads fill in whatever
the file leaves out there.

A configuration that cannot work fails at start with :class:`ConfigError`, whose message
starts with the key at fault (``cameras[1].type: ...``, ``uplink.endpoint: ...``).
Checks that need the outside world (a host name that does not resolve, a model that is
neither cached nor fetchable) run in the agent's start-up, with the same kind of message.

Example::

    station: line1-st3
    state_dir: /var/lib/slimspect-agent      # spool, model cache, current model
    token_file: /etc/slimspect/station.token
    uplink: {endpoint: "aggregator.plant:50051", tls: {ca: /etc/slimspect/ca.pem}}
    fleet: {endpoint: "api.plant:50052", tls: {ca: /etc/slimspect/ca.pem}}
    store: {endpoint: "s3.plant:9000", bucket: slimspect, trusted_keys: [/etc/slimspect/signing.pub]}
    model: {name: steel-yolo, version: 1.4.0}  # the first model; later the fleet decides
    cameras:
      - {id: top, type: device, index: 0, fps: 15}
      - {id: side, type: url, url: "rtsp://10.0.0.7/stream1", fps: 15}
      - {id: scans, type: folder, path: /srv/linescan/out}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge_agent.errors import ConfigError
from slimspect.manifest import ModelName, ModelVersion
from slimspect.settings import StoreSettings

ENV_PREFIX = "SLIMSPECT_AGENT_"
DEFAULT_STATE_DIR = Path("/var/lib/slimspect-agent")
KIB = 1024
MIB = 1024 * KIB

# The aggregator's station pattern (services.aggregator.schema.STATION_RE; the agent may
# not import services): station and camera ids end up in Redis keys and metric labels.
StationId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
CameraId = StationId


class _Section(BaseModel):
    """Base of every section: unknown keys are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_endpoint(value: str) -> str:
    value = value.strip()
    if "://" in value:
        raise ValueError(f"{value!r} must be host:port without a scheme (set tls for TLS)")
    parts = urlsplit(f"//{value}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path or parts.query or parts.username:
        raise ValueError(f"{value!r} is not host:port (for example aggregator:50051)")
    return value


Endpoint = Annotated[str, AfterValidator(_check_endpoint), Field(description="host:port")]


class TlsSettings(_Section):
    """TLS towards a gRPC server; ``cert`` + ``key`` add a client certificate (mutual TLS)."""

    ca: Path | None = Field(default=None, description="CA bundle (PEM); unset: system roots")
    cert: Path | None = Field(default=None, description="client certificate chain (PEM)")
    key: Path | None = Field(default=None, description="client private key (PEM)")
    server_name: str | None = Field(default=None, description="override the name checked")

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("set both cert and key (mutual TLS), or neither")
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{name}: {path} is not a readable file")
        return self


class UplinkSettings(_Section):
    """The ``Ingest.Report`` stream to the aggregator."""

    endpoint: Endpoint
    tls: TlsSettings | None = None
    batch_max_events: int = Field(default=64, ge=1, le=10_000)
    batch_max_bytes: ByteSize = Field(default=ByteSize(4 * MIB), ge=16 * KIB)
    batch_max_delay_s: float = Field(default=0.5, ge=0, le=60)
    max_inflight_batches: int = Field(default=4, ge=1, le=256)
    ack_timeout_s: float = Field(default=15.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # The aggregator tolerates client pings every 10 s (keepalive_min_client_interval_s);
    # pinging more often makes it close the connection (GOAWAY "too_many_pings").
    keepalive_time_s: float = Field(default=30.0, ge=10)
    keepalive_timeout_s: float = Field(default=10.0, gt=0)
    drain_s: float = Field(default=5.0, ge=0, description="on SIGTERM, wait this long for acks")

    @model_validator(mode="after")
    def _backoff(self) -> UplinkSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self


class FleetSettings(_Section):
    """``Fleet.Heartbeat`` to the API's fleet server, and model updates."""

    endpoint: Endpoint
    tls: TlsSettings | None = None
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, description="until the first reply says otherwise"
    )
    timeout_s: float = Field(default=5.0, gt=0, description="deadline of one heartbeat")
    update_retry_s: float = Field(
        default=300.0, ge=0, description="a refused version is not tried again before this"
    )
    rollback_after_errors: int = Field(
        default=5, ge=1, description="consecutive inference errors of a new model: roll back"
    )


class ModelSettings(_Section):
    """The first model: ``name`` + ``version`` from the store, or ``path`` (a fetched copy).

    After the first update the station runs what the fleet assigns; the version it runs is
    remembered in ``state_dir`` (``current.json``) and wins over this section on restart.
    With only ``name`` (or nothing) the station waits for the fleet to assign a version.
    """

    name: ModelName | None = None
    version: ModelVersion | None = None
    path: Path | None = Field(
        default=None,
        description="a directory with manifest.json, manifest.sig, model.onnx (golden.png)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSettings:
        if self.path is not None and (self.name or self.version):
            raise ValueError("give either path or name/version, not both")
        if self.version is not None and self.name is None:
            raise ValueError("version needs name")
        return self


class CropSettings(_Section):
    """JPEG crops of detected defects, sent with the event."""

    enabled: bool = True
    max_per_event: int = Field(default=8, ge=0, description="the best-scoring detections")
    margin: float = Field(default=0.1, ge=0, le=2, description="context around the box")
    max_side: int = Field(default=256, ge=8, description="longer side, pixels")
    jpeg_quality: int = Field(default=85, ge=10, le=100)
    max_bytes: ByteSize = Field(
        default=ByteSize(256 * KIB), gt=0, description="the aggregator's max_crop_bytes"
    )


class RuntimeSettings(_Section):
    """The ONNX Runtime session and what is kept of its detections."""

    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)
    intra_op_threads: int = Field(default=0, ge=0, description="0: ONNX Runtime chooses")
    inter_op_threads: int = Field(default=1, ge=0, description="0: ONNX Runtime chooses")
    max_detections: int = Field(default=100, ge=1, le=1000)
    crops: CropSettings = CropSettings()


class SpoolSettings(_Section):
    """The on-device outbox (see edge_agent/spool.py for the policy)."""

    path: Path | None = Field(default=None, description="default: <state_dir>/spool.sqlite")
    max_bytes: ByteSize = Field(default=ByteSize(256 * MIB), ge=64 * KIB)
    summarize_above: float = Field(
        default=0.5, gt=0, le=1, description="fill ratio above which clean frames are summarised"
    )
    summary_window_s: float = Field(default=60.0, gt=0, le=3600)
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class _Camera(_Section):
    id: CameraId
    fps: float | None = Field(default=None, gt=0, le=1000, description="None: as fast as it comes")
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)
    max_retries: int | None = Field(default=None, ge=0, description="None: retry forever")


class VideoCamera(_Camera):
    """A video file, played once or looped."""

    type: Literal["video"]
    path: Path
    loop: bool = False


class DeviceCamera(_Camera):
    """A local capture device (``/dev/video<index>``)."""

    type: Literal["device"]
    index: int = Field(ge=0)
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)


class UrlCamera(_Camera):
    """A network stream OpenCV opens: RTSP, HTTP(S) MJPEG, ..."""

    type: Literal["url"]
    url: str
    open_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="opening the stream takes longer: retried"
    )
    read_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="a stream silent this long is lost: retried"
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme.lower()
        if scheme not in ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp"):
            raise ValueError(f"{value!r}: expected an rtsp://, http(s)://, rtmp:// or udp:// URL")
        return value


class FolderCamera(_Camera):
    """A folder that camera software writes images into; each new file is one frame."""

    type: Literal["folder"]
    path: Path
    pattern: str = Field(default="*", description="glob of the file names to take")
    poll_s: float = Field(default=0.5, gt=0)
    settle_s: float = Field(
        default=0.2,
        gt=0,
        description="a file unchanged this long is complete (kept: see cameras.py)",
    )


class SyntheticCamera(_Camera):
    """Generated steel-like frames with occasional dark defects, for demos."""

    type: Literal["synthetic"]
    width: int = Field(default=320, ge=16, le=8192)
    height: int = Field(default=240, ge=16, le=8192)
    frames: int | None = Field(default=None, ge=1, description="None: endless")
    defect_rate: float = Field(default=0.2, ge=0, le=1)
    seed: int = 0


CameraSettings = Annotated[
    VideoCamera | DeviceCamera | UrlCamera | FolderCamera | SyntheticCamera,
    Field(discriminator="type"),
]
CAMERA_TYPES = ("video", "device", "url", "folder", "synthetic")


class MetricsSettings(_Section):
    """Prometheus ``/metrics`` and ``/healthz``."""

    host: str = "127.0.0.1"
    port: int | None = Field(
        default=9465, ge=0, le=65535, description="null: no HTTP server; 0: any free port"
    )


class AgentSettings(BaseSettings):
    """Everything one station agent needs. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    station: StationId
    state_dir: Path = DEFAULT_STATE_DIR
    token: SecretStr | None = Field(default=None, description="the station token")
    token_file: Path | None = Field(default=None, description="a file holding the token")
    uplink: UplinkSettings
    fleet: FleetSettings | None = Field(default=None, description="unset: no heartbeat/updates")
    store: StoreSettings = Field(default_factory=StoreSettings)
    model: ModelSettings = ModelSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    spool: SpoolSettings = SpoolSettings()
    cameras: list[CameraSettings] = Field(min_length=1)
    metrics: MetricsSettings = MetricsSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The init arguments are the YAML file (load_settings): the environment wins over it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _consistent(self) -> AgentSettings:
        if self.token is None and self.token_file is None:
            raise ValueError("token: set token or token_file (the station token)")
        if self.token is not None and self.token_file is not None:
            raise ValueError("token: set token or token_file, not both")
        seen: set[str] = set()
        for i, cam in enumerate(self.cameras):
            if cam.id in seen:
                raise ValueError(f"cameras[{i}].id: camera id {cam.id!r} is used twice")
            seen.add(cam.id)
        if not self.store.trusted_keys:
            raise ValueError(
                "store.trusted_keys: give at least one public key (signing.pub); the agent "
                "runs only models whose manifest signature verifies"
            )
        return self

    @property
    def spool_path(self) -> Path:
        return self.spool.path or self.state_dir / "spool.sqlite"

    @property
    def model_cache_dir(self) -> Path:
        return self.state_dir / "models"

    def read_token(self) -> str:
        """The station token (from ``token`` or ``token_file``); :class:`ConfigError` if unusable."""
        if self.token is not None:
            value = self.token.get_secret_value().strip()
            key = "token"
        else:
            assert self.token_file is not None
            key = "token_file"
            try:
                value = self.token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(key, f"cannot read {self.token_file}: {exc.strerror}") from None
        if not value or any(c.isspace() for c in value):
            raise ConfigError(key, "the station token is empty or contains whitespace")
        return value


def load_settings(path: str | Path | None, **overrides: Any) -> AgentSettings:
    """Reads the YAML file at ``path`` (None: environment only) into :class:`AgentSettings`.

    ``overrides`` (nested dicts) win over the file; the environment wins over both.
    Raises :class:`ConfigError` naming the key at fault (``config`` for the file itself).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    data = _merge(data, overrides)
    try:
        return AgentSettings(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key, message = _describe(err)
        more = exc.error_count() - 1
        if more:
            message += f" (and {more} more error{'s' if more > 1 else ''})"
        raise ConfigError(key, message) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "config", f"{path} must hold a mapping of keys, not {type(data).__name__}"
        )
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_KEYED = re.compile(r"^([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)*): ")


def _describe(err: Any) -> tuple[str, str]:
    """A pydantic error -> (``cameras[1].path``, message)."""
    loc = list(err.get("loc", ()))
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif i > 0 and isinstance(loc[i - 1], int) and part in CAMERA_TYPES:
            continue  # the discriminator's branch name, not a key
        else:
            parts.append(("." if parts else "") + str(part))
    key = "".join(parts)
    message = err.get("msg", "invalid")
    if err.get("type") == "union_tag_invalid":
        tag = (err.get("ctx") or {}).get("tag", "?")
        key += ".type"
        message = f"unknown camera type {tag!r} (known: {', '.join(CAMERA_TYPES)})"
    elif err.get("type") == "union_tag_not_found":
        key += ".type"
        message = f"missing (one of {', '.join(CAMERA_TYPES)})"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if match := _KEYED.match(message):  # a validator that names the key inside its section
        inner, message = match.group(1), message[match.end() :]
        key = f"{key}.{inner}" if key else inner
    return key, message
