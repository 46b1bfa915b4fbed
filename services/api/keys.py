"""API keys: a bearer key names a caller and its role; only the key's SHA-256 is stored.

A key is ``ssk_`` + 43 URL-safe characters (256 random bits), shown once by
``slimspect api key add --role viewer|operator NAME``. Keys live beside the station tokens
and are hashed the same way (:func:`services.aggregator.auth.token_digest`; why a plain
SHA-256 is right for random tokens is explained there): the Redis hash ``auth:api-keys``
maps ``sha256(key)`` (hex) to JSON ``{"name", "role", "created_at_ms"}``, so checking a
presented key is one HGET of its digest. Global, not hash-tagged (like ``auth:tokens``).

Roles are ordered: ``viewer`` reads; ``operator`` reads and also drives rollouts.
A name may hold several keys (add a new one, hand it out, revoke the old ones).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from enum import IntEnum

import redis.asyncio as aioredis

from services.aggregator.auth import check_station, token_digest

API_KEYS_KEY = "auth:api-keys"
KEY_PREFIX = "ssk_"


class Role(IntEnum):
    """What a key may do; a higher role may do everything a lower one may."""

    viewer = 1
    operator = 2


ROLE_NAMES = tuple(r.name for r in Role)


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    """Key names follow the station-name rule: 1-64 of ``A-Z a-z 0-9 . _ -``."""
    try:
        return check_station(name)
    except ValueError:
        raise ValueError(
            f"key name {name!r} must be 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)"
        ) from None


@dataclass(frozen=True)
class KeyInfo:
    name: str
    role: Role
    created_at_ms: int
    digest: str


def _info(digest: str, record: str | bytes) -> KeyInfo:
    data = json.loads(record)
    return KeyInfo(
        name=data["name"],
        role=Role[data["role"]],
        created_at_ms=data["created_at_ms"],
        digest=digest,
    )


class ApiKeyStore:
    """API keys in the Redis hash ``auth:api-keys`` (digest -> JSON record)."""

    def __init__(self, redis: aioredis.Redis, key: str = API_KEYS_KEY) -> None:
        self._redis = redis
        self._key = key

    async def add(self, name: str, role: Role) -> str:
        """Creates a key and returns it (the only time it is visible)."""
        check_name(name)
        key = new_key()
        record = {"name": name, "role": role.name, "created_at_ms": int(time.time() * 1000)}
        await self._redis.hset(self._key, token_digest(key), json.dumps(record))
        return key

    async def lookup(self, key: str) -> KeyInfo | None:
        """The key's record, or None when it is unknown (or revoked)."""
        digest = token_digest(key)
        record = await self._redis.hget(self._key, digest)
        return None if record is None else _info(digest, record)

    async def list(self) -> list[KeyInfo]:
        raw = await self._redis.hgetall(self._key)
        infos = [_info(k.decode() if isinstance(k, bytes) else k, v) for k, v in raw.items()]
        return sorted(infos, key=lambda k: (k.name, k.created_at_ms))

    async def revoke(self, name: str) -> int:
        """Removes every key of ``name``; returns how many."""
        digests = [k.digest for k in await self.list() if k.name == name]
        if digests:
            await self._redis.hdel(self._key, *digests)
        return len(digests)
