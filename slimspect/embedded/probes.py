"""Does a server answer? One small check per protocol, with no client library beyond grpcio.

Each probe returns a :class:`Probe`: whether the server answered as a healthy one does, and
one short word or phrase for a status table. The core cannot import the services' clients
(redis-py, grpc_health): Redis is asked ``PING`` in its inline protocol and gRPC servers the
standard ``grpc.health.v1.Health/Check`` with hand-encoded messages, both a few bytes long.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slimspect.embedded.ports import HOST


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str


def tcp(port: int, *, host: str = HOST, timeout_s: float = 1.0) -> Probe:
    """Something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return Probe(True, "listening")
    except OSError as exc:
        return Probe(False, f"not listening ({exc.strerror or exc})")


def redis_ping(port: int, *, host: str = HOST, timeout_s: float = 1.0) -> Probe:
    """``PING`` answered ``+PONG`` (not ``-LOADING``: Redis is still reading its AOF)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError as exc:
        return Probe(False, f"no answer ({exc.strerror or exc})")
    if reply.startswith(b"+PONG"):
        return Probe(True, "PONG")
    return Probe(False, reply.decode(errors="replace").strip() or "empty reply")


def http(url: str, *, expect: int | None = None, timeout_s: float = 2.0) -> Probe:
    """An HTTP answer from ``url``: any status, or exactly ``expect`` when given.

    A JSON body with a ``health`` or ``status`` field (the agent's and the API's
    ``/healthz``) is summarised in the detail.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status, body = response.status, response.read(65536)
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read(65536)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Probe(False, f"no answer ({reason})")
    ok = expect is None or status == expect
    return Probe(ok, _summary(status, body))


def grpc_health(port: int, *, host: str = HOST, timeout_s: float = 2.0) -> Probe:
    """The server's overall health (service ""), SERVING or not."""
    import grpc  # a core dependency, imported only when a gRPC server is probed

    statuses = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda _: b"",  # HealthCheckRequest(service="")
            response_deserializer=lambda data: data,
        )
        try:
            reply: bytes = check(None, timeout=timeout_s)
        except grpc.RpcError as exc:
            return Probe(False, f"no answer ({exc.code().name})")  # type: ignore[attr-defined]
    # HealthCheckResponse: field 1 (status), varint; absent when 0.
    status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
    return Probe(status == 1, statuses.get(status, str(status)))


def check(specs: Iterable[Mapping[str, Any]]) -> Probe:
    """Runs probes described as data (``{"kind": "redis" | "http" | "grpc" | "tcp", "port":
    ..., "url": ..., "expect": ...}``, as stack.json keeps them); ok when all are."""
    results = [_run(spec) for spec in specs]
    return Probe(all(r.ok for r in results), "; ".join(r.detail for r in results))


def _run(spec: Mapping[str, Any]) -> Probe:
    kind = spec["kind"]
    if kind == "redis":
        return redis_ping(spec["port"])
    if kind == "http":
        return http(spec["url"], expect=spec.get("expect"))
    if kind == "grpc":
        return grpc_health(spec["port"])
    if kind == "tcp":
        return tcp(spec["port"])
    raise ValueError(f"unknown probe kind {kind!r}")


def _summary(status: int, body: bytes) -> str:
    try:
        data: Any = json.loads(body)
    except ValueError:
        return f"HTTP {status}"
    if isinstance(data, dict):
        if "health" in data:  # the agent
            model = data.get("model") or "no model yet"
            return f"HTTP {status} {data['health']}, {model}"
        if "status" in data:
            return f"HTTP {status} {data['status']}"
    return f"HTTP {status}"
