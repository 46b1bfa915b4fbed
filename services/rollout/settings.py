"""Settings of the fleet rollout service, read once from the environment (``SLIMSPECT_ROLLOUT_*``).

The API process builds one :class:`RolloutSettings` and passes the typed object to
:class:`~services.rollout.service.RolloutService` and
:func:`~services.rollout.fleet.build_fleet_server`; no other module of this package reads the
environment.

==========================================  =======================================================
variable                                    meaning
==========================================  =======================================================
SLIMSPECT_ROLLOUT_REDIS_URL                 redis://host:port/db (rediss:// for TLS)
SLIMSPECT_ROLLOUT_KEY_PREFIX                namespace before every fleet key (tests); default none
SLIMSPECT_ROLLOUT_HEARTBEAT_INTERVAL_S      seconds between heartbeats, told to every agent, default 10
SLIMSPECT_ROLLOUT_STALE_AFTER_S             a station is offline after this silence, default 3 x interval
SLIMSPECT_ROLLOUT_SOAK_S                    canary stations run a version this long before promotion, default 600
SLIMSPECT_ROLLOUT_MIN_FPS_RATIO             canary FPS must stay >= this x its FPS on the previous version, default 0.9
SLIMSPECT_ROLLOUT_MAX_UPDATE_FAILURES       failed updates tolerated on a canary before the automatic rollback, default 0
SLIMSPECT_ROLLOUT_MAX_UNHEALTHY_HEARTBEATS  UNHEALTHY heartbeats tolerated per canary station on the new version, default 3
SLIMSPECT_ROLLOUT_AUTO_PROMOTE              promote a canary as soon as its gate passes, default true
SLIMSPECT_ROLLOUT_DEFAULT_MODEL             model name for a station that runs none yet; unset: tell it nothing
SLIMSPECT_ROLLOUT_AUDIT_MAXLEN              audit log entries kept (approximately), default 10000
SLIMSPECT_ROLLOUT_SWEEP_INTERVAL_S          how often the fleet server evaluates every active rollout, default 30 (0: never)
SLIMSPECT_ROLLOUT_HOST / _PORT              Fleet gRPC listen address, default 127.0.0.1:50052 (port 0: any free port)
SLIMSPECT_ROLLOUT_MAX_MESSAGE_BYTES         largest HeartbeatRequest on the wire, default 1 MiB
SLIMSPECT_ROLLOUT_TOKEN_STORE               station tokens: ``redis`` (hash ``auth:tokens``) or ``file``,
                                            the aggregator's store (one token per station for both)
SLIMSPECT_ROLLOUT_TOKEN_FILE                the JSON token file when TOKEN_STORE=file
SLIMSPECT_ROLLOUT_TLS_CERT / _TLS_KEY       server certificate chain and key (PEM): TLS
SLIMSPECT_ROLLOUT_TLS_CA                    client CA (PEM): mutual TLS, client certificates required
==========================================  =======================================================
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.server_settings import StationServerSettings
from slimspect.manifest import check_name

KIB = 1024
MIB = 1024 * KIB


class RolloutSettings(StationServerSettings):
    """Everything the rollout service and its Fleet gRPC server need."""

    model_config = SettingsConfigDict(env_prefix="SLIMSPECT_ROLLOUT_", extra="forbid", frozen=True)

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9._-]{0,64}$",
        description="namespace before every fleet key; empty in production",
    )

    heartbeat_interval_s: int = Field(default=10, ge=1, le=3600)
    stale_after_s: float | None = Field(default=None, gt=0, description="default 3 x interval")

    soak_s: float = Field(default=600.0, ge=0)
    min_fps_ratio: float = Field(default=0.9, ge=0, le=1)
    max_update_failures: int = Field(default=0, ge=0, description="0: any failure rolls back")
    max_unhealthy_heartbeats: int = Field(default=3, ge=0)
    auto_promote: bool = True
    default_model: str | None = None

    audit_maxlen: int = Field(default=10_000, ge=100)
    sweep_interval_s: float = Field(default=30.0, ge=0, description="0: no periodic sweep")

    port: int = Field(default=50052, ge=0, le=65535)
    max_message_bytes: int = Field(default=1 * MIB, ge=64 * KIB)

    @model_validator(mode="after")
    def _consistent(self) -> RolloutSettings:
        if self.default_model is not None:
            check_name(self.default_model)
        return self

    @property
    def stale_after_ms(self) -> int:
        """Silence after which a station counts as offline."""
        seconds = self.stale_after_s or 3 * self.heartbeat_interval_s
        return int(seconds * 1000)
