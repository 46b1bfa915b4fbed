"""Settings of the model store, read once from the environment (``SLIMSPECT_STORE_*``).

No other module reads the environment: commands build a :class:`StoreSettings` at the edge
(overriding fields with their own options) and pass the typed object in.

==============================  ===========================================================
variable                        meaning
==============================  ===========================================================
SLIMSPECT_STORE_ENDPOINT        S3 endpoint as ``host:port`` (no scheme), default 127.0.0.1:8333
SLIMSPECT_STORE_ACCESS_KEY      S3 access key (anonymous when unset)
SLIMSPECT_STORE_SECRET_KEY      S3 secret key
SLIMSPECT_STORE_BUCKET          bucket, default ``slimspect``
SLIMSPECT_STORE_SECURE          ``true`` for https
SLIMSPECT_STORE_REGION          region (skips the bucket-location request when set)
SLIMSPECT_STORE_SIGNING_KEY     path of ``signing.key``, needed to publish
SLIMSPECT_STORE_TRUSTED_KEYS    public keys trusted when fetching: comma-separated paths or a JSON list
==============================  ===========================================================
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# S3 bucket naming rules (the subset every implementation accepts).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StoreSettings(BaseSettings):
    """Where the model store is and which keys sign and verify its manifests."""

    model_config = SettingsConfigDict(env_prefix="SLIMSPECT_STORE_", extra="forbid", frozen=True)

    endpoint: str = Field(default="127.0.0.1:8333", description="host:port, no scheme")
    access_key: str | None = None
    secret_key: SecretStr | None = None
    bucket: str = Field(default="slimspect", min_length=3, max_length=63)
    secure: bool = False
    region: str | None = None
    signing_key: Path | None = Field(default=None, description="private key used to publish")
    trusted_keys: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="public keys trusted when fetching"
    )

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str) -> str:
        value = value.strip()
        if "://" in value:
            raise ValueError(
                f"endpoint {value!r} must be host:port without a scheme (set secure=true for https)"
            )
        parts = urlsplit(f"//{value}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1 or parts.path or parts.query or parts.username:
            raise ValueError(f"endpoint {value!r} is not host:port (for example 127.0.0.1:8333)")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value) or ".." in value:
            raise ValueError(
                f"bucket {value!r} is not a valid S3 bucket name "
                "(3-63 lowercase letters, digits, '.' and '-', starting and ending alphanumeric)"
            )
        return value

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [p.strip() for p in text.split(",") if p.strip()]
        return value

    @model_validator(mode="after")
    def _both_keys_or_none(self) -> StoreSettings:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("set both access_key and secret_key, or neither (anonymous access)")
        return self

    @property
    def url(self) -> str:
        """The endpoint as a URL, for messages."""
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"
