"""The settings every station-facing gRPC server has: where it listens, its TLS, and the
station token store (one token per station, shared by the aggregator and Fleet).

:class:`~services.aggregator.settings.AggregatorSettings` and
:class:`~services.rollout.settings.RolloutSettings` extend it, each with its own env prefix
and default port.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings


class StationServerSettings(BaseSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)

    token_store: Literal["redis", "file"] = "redis"
    token_file: Path | None = None

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @model_validator(mode="after")
    def _station_server_consistent(self) -> StationServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key, or neither (plaintext)")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca (mutual TLS) needs tls_cert and tls_key as well")
        if self.token_store == "file" and self.token_file is None:
            raise ValueError("token_store=file needs token_file")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None
