"""Prometheus metrics of the API (one registry per app) and the middleware that feeds them.

Requests are labelled by route template (``/v1/defects/{station}/{event_id}``), never by
the raw path, so the label set stays small whatever clients ask. The middleware also
writes one JSON access-log line per request (uvicorn's own access log is turned off).
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("slimspect.api.access")


class Metrics:
    """The API's metrics; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "slimspect_api_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.seconds = Histogram(
            "slimspect_api_request_seconds",
            "Time to answer a request, by route template.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.auth_failures = Counter(
            "slimspect_api_auth_failures",
            "Requests refused: 401 (no or unknown key) or 403 (role too low).",
            ["status"],
            registry=r,
        )
        self.defects_examined = Counter(
            "slimspect_api_defects_examined",
            "Events read from Redis to fill defect pages (filters may drop some).",
            registry=r,
        )


class MetricsMiddleware:
    """Counts and times every HTTP request, and logs it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.seconds.labels(route).observe(elapsed)
            if status in (401, 403):
                self.metrics.auth_failures.labels(str(status)).inc()
            access_log.log(
                logging.WARNING if status >= 500 else logging.INFO,
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 2),
                    "client": (scope.get("client") or ("-",))[0],
                },
            )
