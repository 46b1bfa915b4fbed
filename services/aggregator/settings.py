"""Settings of the aggregator, read once from the environment (``SLIMSPECT_AGGREGATOR_*``).

``slimspect aggregator`` builds one :class:`AggregatorSettings` at the edge (its options
override fields) and passes the typed object in; no other module reads the environment.

=========================================  ========================================================
variable                                   meaning
=========================================  ========================================================
SLIMSPECT_AGGREGATOR_HOST                  gRPC listen address, default 127.0.0.1 (0.0.0.0 in a container)
SLIMSPECT_AGGREGATOR_PORT                  gRPC port, default 50051 (0: any free port)
SLIMSPECT_AGGREGATOR_REDIS_URL             redis://host:port/db (rediss:// for TLS)
SLIMSPECT_AGGREGATOR_RETENTION_DAYS        events, indexes and counters kept this long (by capture time)
SLIMSPECT_AGGREGATOR_SWEEP_INTERVAL_S      how often the retention sweep trims every station's indexes
SLIMSPECT_AGGREGATOR_MAX_CROP_BYTES        largest crop_jpeg accepted, default 256 KiB
SLIMSPECT_AGGREGATOR_MAX_DETECTIONS        most detections in one event, default 1000
SLIMSPECT_AGGREGATOR_MAX_MESSAGE_BYTES     largest ReportBatch on the wire, default 16 MiB
SLIMSPECT_AGGREGATOR_FUTURE_SKEW_MS        how far captured_at_ms may run ahead of this clock, default 5 min
SLIMSPECT_AGGREGATOR_KNOWN_CLASSES         JSON {"model name": ["class0", "class1", ...]}; unset: any class
SLIMSPECT_AGGREGATOR_TOKEN_STORE           ``redis`` (hash ``auth:tokens``) or ``file``
SLIMSPECT_AGGREGATOR_TOKEN_FILE            the JSON token file when TOKEN_STORE=file
SLIMSPECT_AGGREGATOR_TLS_CERT / _TLS_KEY   server certificate chain and key (PEM): TLS
SLIMSPECT_AGGREGATOR_TLS_CA                client CA (PEM): mutual TLS, client certificates required
SLIMSPECT_AGGREGATOR_METRICS_HOST / _PORT  Prometheus ``/metrics``, default 127.0.0.1:9464 (port 0: off)
SLIMSPECT_AGGREGATOR_GRACE_S               seconds in-flight batches get on SIGTERM, default 10
SLIMSPECT_AGGREGATOR_KEEPALIVE_*           HTTP/2 keepalive (see the fields)
SLIMSPECT_AGGREGATOR_LOG_LEVEL             DEBUG, INFO, WARNING, ERROR
=========================================  ========================================================
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.server_settings import StationServerSettings

KIB = 1024
MIB = 1024 * KIB


class AggregatorSettings(StationServerSettings):
    """Everything the aggregator daemon and its ``token`` commands need."""

    model_config = SettingsConfigDict(
        env_prefix="SLIMSPECT_AGGREGATOR_", extra="forbid", frozen=True
    )

    port: int = Field(default=50051, ge=0, le=65535)
    redis_url: str = "redis://127.0.0.1:6379/0"

    retention_days: float = Field(default=30.0, gt=0)
    sweep_interval_s: float = Field(default=600.0, gt=0, le=12 * 3600)

    max_crop_bytes: int = Field(default=256 * KIB, gt=0)
    max_detections: int = Field(default=1000, gt=0)
    max_message_bytes: int = Field(default=16 * MIB, ge=64 * KIB)
    future_skew_ms: int = Field(default=5 * 60 * 1000, ge=0)
    known_classes: dict[str, list[str]] | None = Field(
        default=None, description="class names per model name, in class-id order"
    )

    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="0: no /metrics")

    grace_s: float = Field(default=10.0, ge=0)
    keepalive_time_s: float = Field(default=30.0, gt=0, description="server pings an idle client")
    keepalive_timeout_s: float = Field(default=10.0, gt=0, description="ping answer deadline")
    keepalive_min_client_interval_s: float = Field(
        default=10.0, gt=0, description="clients may ping at most this often"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> AggregatorSettings:
        for model, names in (self.known_classes or {}).items():
            if not names or any(not n for n in names):
                raise ValueError(f"known_classes[{model!r}] must list non-empty class names")
        return self

    @property
    def retention_ms(self) -> int:
        return int(self.retention_days * 86_400_000)
