"""Station tokens: a bearer token identifies its station; only its SHA-256 is stored.

A token is ``sst_`` + 43 URL-safe characters (256 random bits), shown once by
``slimspect aggregator token add STATION``. The store maps ``sha256(token)`` (hex) to the
station, so the aggregator finds a caller's station with one lookup of the digest of what
it presented. Why a plain SHA-256 and not a salted slow hash: salts and scrypt protect
guessable passwords; a 256-bit random token cannot be guessed from its digest, and an
unsalted digest is what makes the O(1) lookup possible. Lookup-by-digest also leaks nothing
through timing (it compares digests, whose prefixes say nothing about the token); the one
direct comparison left, in the file store, uses :func:`hmac.compare_digest`.

A station may hold several tokens (add a new one, roll it out, revoke the old ones).

Stores: ``redis`` (hash ``auth:tokens``, see schema.py) or ``file`` (a JSON file written
atomically with mode 0600, re-read when it changes; for tokens provisioned as secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import redis.asyncio as aioredis

from services.aggregator.schema import STATION_RE, TOKENS_KEY

TOKEN_PREFIX = "sst_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_station(station: str) -> str:
    if not STATION_RE.fullmatch(station):
        raise ValueError(
            f"station {station!r} must be 1-64 of A-Z a-z 0-9 . _ - (starting alphanumeric)"
        )
    return station


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry, if any."""
    for key, value in metadata or ():
        if key.lower() != "authorization" or not isinstance(value, str):
            continue
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


@dataclass(frozen=True)
class TokenInfo:
    station: str
    created_at_ms: int
    digest: str


class TokenStore(Protocol):
    async def add(self, station: str) -> str:
        """Creates a token for ``station`` and returns it (the only time it is visible)."""
        ...

    async def station_for(self, token: str) -> str | None:
        """The station ``token`` belongs to, or None."""
        ...

    async def list(self) -> list[TokenInfo]: ...

    async def revoke(self, station: str) -> int:
        """Removes every token of ``station``; returns how many."""
        ...


def _record(station: str) -> str:
    return json.dumps({"station": station, "created_at_ms": int(time.time() * 1000)})


def _info(digest: str, record: str | bytes) -> TokenInfo:
    data = json.loads(record)
    return TokenInfo(station=data["station"], created_at_ms=data["created_at_ms"], digest=digest)


class RedisTokenStore:
    """Tokens in the Redis hash ``auth:tokens`` (digest -> JSON record)."""

    def __init__(self, redis: aioredis.Redis, key: str = TOKENS_KEY) -> None:
        self._redis = redis
        self._key = key

    async def add(self, station: str) -> str:
        check_station(station)
        token = new_token()
        await self._redis.hset(self._key, token_digest(token), _record(station))
        return token

    async def station_for(self, token: str) -> str | None:
        record = await self._redis.hget(self._key, token_digest(token))
        return None if record is None else _info("", record).station

    async def list(self) -> list[TokenInfo]:
        raw = await self._redis.hgetall(self._key)
        infos = [_info(k.decode() if isinstance(k, bytes) else k, v) for k, v in raw.items()]
        return sorted(infos, key=lambda t: (t.station, t.created_at_ms))

    async def revoke(self, station: str) -> int:
        digests = [t.digest for t in await self.list() if t.station == station]
        if digests:
            await self._redis.hdel(self._key, *digests)
        return len(digests)


class FileTokenStore:
    """Tokens in a JSON file ``{"tokens": {digest: record}}``, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._tokens: dict[str, TokenInfo] = {}

    def _load(self) -> dict[str, TokenInfo]:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._stamp, self._tokens = None, {}
            return self._tokens
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            data = json.loads(self._path.read_text() or "{}").get("tokens", {})
            self._tokens = {d: _info(d, json.dumps(r)) for d, r in data.items()}
            self._stamp = stamp
        return self._tokens

    def _save(self, tokens: dict[str, TokenInfo]) -> None:
        data = {
            "tokens": {
                d: {"station": t.station, "created_at_ms": t.created_at_ms}
                for d, t in sorted(tokens.items())
            }
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=2)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self._path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = None

    async def add(self, station: str) -> str:
        check_station(station)
        token = new_token()
        tokens = dict(self._load())
        digest = token_digest(token)
        tokens[digest] = _info(digest, _record(station))
        self._save(tokens)
        return token

    async def station_for(self, token: str) -> str | None:
        digest = token_digest(token)
        info = self._load().get(digest)
        if info is None or not hmac.compare_digest(info.digest, digest):
            return None
        return info.station

    async def list(self) -> list[TokenInfo]:
        return sorted(self._load().values(), key=lambda t: (t.station, t.created_at_ms))

    async def revoke(self, station: str) -> int:
        tokens = dict(self._load())
        gone = [d for d, t in tokens.items() if t.station == station]
        for d in gone:
            del tokens[d]
        if gone:
            self._save(tokens)
        return len(gone)


class TokenStoreSettings(Protocol):
    """What selects a token store (AggregatorSettings and RolloutSettings both have it)."""

    token_store: str
    token_file: Path | None


def token_store(settings: TokenStoreSettings, redis: aioredis.Redis) -> TokenStore:
    """The store that ``settings`` select: the same station tokens for every gRPC server."""
    if settings.token_store == "file":
        assert settings.token_file is not None  # the settings validator ensures it
        return FileTokenStore(settings.token_file)
    return RedisTokenStore(redis)
