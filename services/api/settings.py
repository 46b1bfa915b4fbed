"""Settings of the HTTP API, read once from the environment (``SLIMSPECT_API_*``).

``slimspect api serve`` builds one :class:`ApiSettings` at the edge (its options override
fields) and passes the typed object in; no other module reads the environment. The model
store keeps its own settings (``SLIMSPECT_STORE_*``, :class:`slimspect.settings.StoreSettings`);
the API reads it only when ``SLIMSPECT_API_MODEL_STORE`` is true. So does the rollout service
(``SLIMSPECT_ROLLOUT_*``, :class:`services.rollout.settings.RolloutSettings`), whose Redis is
this one unless SLIMSPECT_ROLLOUT_REDIS_URL says otherwise.

=====================================  ============================================================
variable                               meaning
=====================================  ============================================================
SLIMSPECT_API_HOST                     HTTP listen address, default 127.0.0.1 (0.0.0.0 in a container)
SLIMSPECT_API_PORT                     HTTP port, default 8080 (0: any free port)
SLIMSPECT_API_REDIS_URL                redis://host:port/db: the aggregator's Redis
SLIMSPECT_API_FLEET                    run the gRPC ``Fleet.Heartbeat`` server beside HTTP, default true
                                       (where it listens: SLIMSPECT_ROLLOUT_HOST / _PORT)
SLIMSPECT_API_MODEL_STORE              true: ``GET /v1/models`` lists the S3 store of SLIMSPECT_STORE_*
SLIMSPECT_API_DEFAULT_LIMIT            page size of ``GET /v1/defects`` when none is asked, default 50
SLIMSPECT_API_MAX_LIMIT                largest page size, default 500
SLIMSPECT_API_SCAN_BUDGET              most index entries one defects request examines, default 20000
SLIMSPECT_API_MAX_STATS_HOURS          widest ``GET /v1/stats`` window in hours, default 2208 (92 days)
SLIMSPECT_API_DOCS                     serve ``/docs`` (Swagger UI, bundled: works offline), default true
SLIMSPECT_API_LOG_LEVEL                DEBUG, INFO, WARNING, ERROR
=====================================  ============================================================
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    """Everything the API process and its ``key`` commands need."""

    model_config = SettingsConfigDict(env_prefix="SLIMSPECT_API_", extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    redis_url: str = "redis://127.0.0.1:6379/0"
    fleet: bool = Field(default=True, description="serve Fleet.Heartbeat (gRPC) beside HTTP")
    model_store: bool = Field(default=False, description="list models of SLIMSPECT_STORE_*")

    default_limit: int = Field(default=50, ge=1)
    max_limit: int = Field(default=500, ge=1, le=10_000)
    scan_budget: int = Field(default=20_000, ge=100)
    max_stats_hours: int = Field(default=92 * 24, ge=1)

    docs: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> ApiSettings:
        if self.default_limit > self.max_limit:
            raise ValueError(f"default_limit {self.default_limit} > max_limit {self.max_limit}")
        return self
