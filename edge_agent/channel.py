"""gRPC channels to the centre: TLS, keepalive, reconnect backoff and the station token.

The uplink (aggregator) and the heartbeat (fleet server) make their channels here, so both
speak to the centre alike. Every call carries the station token as
``authorization: Bearer <token>`` metadata, which is how the aggregator and the fleet server
name the station (services/aggregator/auth.py).
"""

from __future__ import annotations

import grpc

from edge_agent.settings import TlsSettings

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the aggregator's default max_message_bytes


def make_channel(
    endpoint: str,
    tls: TlsSettings | None,
    *,
    keepalive_time_s: float = 30.0,
    keepalive_timeout_s: float = 10.0,
    reconnect_backoff_s: tuple[float, float] = (0.5, 30.0),
) -> grpc.aio.Channel:
    """A grpc.aio channel to ``endpoint`` (host:port); TLS when ``tls`` is set.

    Keepalive pings run while calls are open (a dead peer is noticed within
    ``keepalive_time_s + keepalive_timeout_s`` even on an idle stream); the channel's own
    reconnect backoff runs from ``reconnect_backoff_s[0]`` up to ``[1]``.
    """
    first, most = reconnect_backoff_s
    options: list[tuple[str, int | str]] = [
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", int(first * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(first * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(most * 1000)),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 0),  # the agent resends from its spool itself
    ]
    if tls is None:
        return grpc.aio.insecure_channel(endpoint, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes() if tls.ca else None,
        private_key=tls.key.read_bytes() if tls.key else None,
        certificate_chain=tls.cert.read_bytes() if tls.cert else None,
    )
    return grpc.aio.secure_channel(endpoint, credentials, options=options)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that names the station: ``authorization: Bearer <token>``."""
    return (("authorization", f"Bearer {token}"),)
