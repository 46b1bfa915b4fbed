"""The environment of the stack's processes, and ``env.sh`` for a user's shell.

The processes inherit the caller's environment, so tuning variables reach them
(``SLIMSPECT_ROLLOUT_SOAK_S=30 slimspect up``), except those that would point a process
elsewhere than this stack (addresses, ports, Redis URLs, token stores, TLS, the store, the
agent's ``SLIMSPECT_AGENT_*``, ``RAY_ADDRESS`` and Ray's auth variables): the stack sets
those itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from slimspect.embedded.credentials import write_secret
from slimspect.embedded.ray_head import ray_auth_env
from slimspect.embedded.stack_state import StackState
from slimspect.settings import StoreSettings

_REDIRECTING_SUFFIXES = (
    "_HOST",
    "_PORT",
    "_REDIS_URL",
    "_TOKEN_STORE",
    "_TOKEN_FILE",
    "_TLS_CERT",
    "_TLS_KEY",
    "_TLS_CA",
    "_FLEET",
    "_MODEL_STORE",
    "_KEY_PREFIX",
)
_REDIRECTING_PREFIXES = (
    "SLIMSPECT_STORE_",
    "SLIMSPECT_AGENT_",
    "SLIMSPECT_API_URL",
    "SLIMSPECT_API_KEY",
)


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment minus what would point a process away from the stack."""
    env = {
        k: v
        for k, v in environ.items()
        if not (k.startswith("SLIMSPECT_") and k.endswith(_REDIRECTING_SUFFIXES))
        and not k.startswith(_REDIRECTING_PREFIXES)
        and k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def store_env(store: StoreSettings) -> dict[str, str]:
    """``SLIMSPECT_STORE_*`` of a StoreSettings (secret included)."""
    return {
        "SLIMSPECT_STORE_ENDPOINT": store.endpoint,
        "SLIMSPECT_STORE_ACCESS_KEY": store.access_key or "",
        "SLIMSPECT_STORE_SECRET_KEY": store.secret_key.get_secret_value()
        if store.secret_key
        else "",
        "SLIMSPECT_STORE_BUCKET": store.bucket,
        "SLIMSPECT_STORE_SECURE": "false",
        "SLIMSPECT_STORE_SIGNING_KEY": str(store.signing_key or ""),
        "SLIMSPECT_STORE_TRUSTED_KEYS": ",".join(str(p) for p in store.trusted_keys),
    }


def write_env_file(path: Path, state: StackState, store: StoreSettings, operator_key: Path) -> Path:
    """``env.sh``: what a shell needs to use the stack (``source .slimspect/env.sh``)."""
    ep = state.endpoints
    values = {
        "SLIMSPECT_API_URL": ep["api"],
        "SLIMSPECT_API_KEY": operator_key.read_text().strip(),
        "SLIMSPECT_API_REDIS_URL": ep["redis"],
        "SLIMSPECT_AGGREGATOR_REDIS_URL": ep["redis"],
        **store_env(store),
    }
    if "ray" in ep:
        values["RAY_ADDRESS"] = ep["ray"]
        values |= ray_auth_env(Path(state.credentials["ray_token"]))
    lines = ["# Written by 'slimspect up': source it to use this stack from a shell."]
    lines += [f"export {k}='{v}'" for k, v in values.items()]
    write_secret(path, "\n".join(lines) + "\n")
    return path


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an ``env.sh`` that :func:`write_env_file` wrote."""
    values = {}
    for line in path.read_text().splitlines():
        if not line.startswith("export "):
            continue
        key, _, value = line[len("export ") :].partition("=")
        values[key] = value[1:-1] if value[:1] == value[-1:] == "'" else value
    return values
