"""Prometheus metrics of the aggregator, on a registry of their own (one per server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The aggregator's metrics; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "slimspect_aggregator_events",
            "Events by outcome: accepted (newly stored), duplicate, rejected.",
            ["outcome"],
            registry=r,
        )
        self.rejections = Counter(
            "slimspect_aggregator_rejections", "Rejected events by reason.", ["reason"], registry=r
        )
        self.batch_seconds = Histogram(
            "slimspect_aggregator_batch_seconds",
            "Time from receiving a batch to its Ack (validation + Redis write).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.streams = Gauge("slimspect_aggregator_streams", "Open Report streams.", registry=r)
        self.auth_failures = Counter(
            "slimspect_aggregator_auth_failures", "Streams refused as UNAUTHENTICATED.", registry=r
        )
        self.write_errors = Counter(
            "slimspect_aggregator_write_errors",
            "Batches not acknowledged because the Redis write failed.",
            registry=r,
        )
        self.swept = Counter(
            "slimspect_aggregator_swept_index_entries",
            "Index entries removed by the retention sweep.",
            registry=r,
        )
        for outcome in ("accepted", "duplicate", "rejected"):
            self.events.labels(outcome)
