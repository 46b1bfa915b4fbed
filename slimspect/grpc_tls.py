"""Server-side TLS for slimspect's gRPC servers (aggregator, fleet): one rule for both.

A CA file turns TLS into mutual TLS: every client must then show a certificate that CA
signed (the stations' certificates), on top of its station token.
"""

from __future__ import annotations

from pathlib import Path

import grpc


def server_credentials(cert: Path, key: Path, ca: Path | None = None) -> grpc.ServerCredentials:
    """Credentials from PEM files: ``cert`` and ``key`` of the server; ``ca`` for mTLS."""
    root = ca.read_bytes() if ca is not None else None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=root,
        require_client_auth=root is not None,
    )
