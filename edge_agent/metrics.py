"""Prometheus metrics of the agent, and the small HTTP server for ``/metrics`` and ``/healthz``.

Counts are kept where they happen (frames, inference time, events sent and acked,
updates); the state of the moment (spool depth and bytes, drops, camera states, the
active model, the uplink) is read from the agent's status snapshot at scrape time by
:class:`StatusCollector`, so nothing has to keep gauges in step. Every agent has its own
registry: several agents (tests) share a process without sharing numbers.

``/healthz`` answers 200 while the agent inspects (HEALTHY or DEGRADED) and 503 when it
does not (UNHEALTHY), with the status as JSON, which is what a systemd watchdog or a
container probe wants.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent.status import AgentStatus
from slimspect.v1 import fleet_pb2

PREFIX = "slimspect_agent_"
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class AgentMetrics:
    """The agent's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames = Counter(PREFIX + "frames", "Frames inspected", ["camera"], registry=r)
        self.frames_skipped = Counter(
            PREFIX + "frames_skipped",
            "Live frames skipped because inspection fell behind",
            ["camera"],
            registry=r,
        )
        self.frame_errors = Counter(
            PREFIX + "frame_errors", "Frames whose inspection failed", ["camera"], registry=r
        )
        self.inference_seconds = Histogram(
            PREFIX + "inference_seconds",
            "ONNX Runtime time per frame",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.spooled = Counter(
            PREFIX + "frames_spooled",
            "Frames by what the spool did with them (stored, summarised, dropped)",
            ["outcome"],
            registry=r,
        )
        self.events_sent = Counter(
            PREFIX + "events_sent", "Events written to the uplink (resends included)", registry=r
        )
        self.events_acked = Counter(
            PREFIX + "events_acked",
            "Events acknowledged by the aggregator, by result",
            ["result"],
            registry=r,
        )
        self.uplink_connects = Counter(
            PREFIX + "uplink_connects", "Report streams opened", registry=r
        )
        self.uplink_errors = Counter(
            PREFIX + "uplink_errors", "Report streams that ended in an error", registry=r
        )
        self.heartbeats = Counter(
            PREFIX + "heartbeats", "Fleet heartbeats, by result", ["result"], registry=r
        )
        self.updates = Counter(
            PREFIX + "model_updates", "Model update attempts, by outcome", ["status"], registry=r
        )

    def totals(self) -> dict[str, int]:
        """Frames inspected (all cameras), events sent and acked by result, since start:
        what the agent logs when it stops, so a run can be counted after the process ends."""
        out = {
            "frames": sum(_counts(self.frames).values()),
            "events_sent": sum(_counts(self.events_sent).values()),
        }
        for result, value in _counts(self.events_acked).items():
            out[f"events_{result}"] = value
        return out

    def watch(self, status: Callable[[], AgentStatus]) -> None:
        """Adds the gauges read from ``status()`` at every scrape."""
        self.registry.register(StatusCollector(status))


def _counts(counter: Counter) -> dict[str, int]:
    """A counter's ``_total`` samples by their last label value ("" when unlabelled)."""
    return {
        (list(sample.labels.values()) or [""])[-1]: int(sample.value)
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


class StatusCollector(Collector):
    """Spool, drops, cameras, model and uplink, from the status snapshot at scrape time."""

    def __init__(self, status: Callable[[], AgentStatus]) -> None:
        self._status = status

    def collect(self) -> Iterable[Metric]:
        s = self._status()
        yield GaugeMetricFamily(PREFIX + "spool_events", "Events waiting for an ack", s.spool.depth)
        yield GaugeMetricFamily(PREFIX + "spool_bytes", "Payload bytes in the spool", s.spool.bytes)
        dropped = CounterMetricFamily(
            PREFIX + "events_dropped",
            "Events dropped or evicted because the spool was full (since start)",
            labels=["unit"],
        )
        dropped.add_metric(["events"], s.spool.dropped_events)
        dropped.add_metric(["frames"], s.spool.dropped_frames)
        yield dropped
        yield GaugeMetricFamily(
            PREFIX + "uplink_connected", "1 while a Report stream is open", int(s.uplink_connected)
        )
        health = GaugeMetricFamily(PREFIX + "health", "1 for the current health", labels=["health"])
        for name in ("HEALTHY", "DEGRADED", "UNHEALTHY"):
            health.add_metric([name], int(s.health_name == name))
        yield health
        model = GaugeMetricFamily(
            PREFIX + "model", "The active model (value 1)", labels=["name", "version"]
        )
        if s.model is not None:
            model.add_metric([s.model.name, s.model.version], 1)
        yield model
        state = GaugeMetricFamily(
            PREFIX + "camera_state", "1 for each camera's current state", labels=["camera", "state"]
        )
        fps = GaugeMetricFamily(
            PREFIX + "camera_fps", "Frames inspected per second", labels=["camera"]
        )
        for cam in s.cameras:
            for value, name in _CAMERA_STATES:
                state.add_metric([cam.camera, name], int(cam.state == value))
            fps.add_metric([cam.camera], cam.fps)
        yield state
        yield fps


_CAMERA_STATES = [
    (v.number, v.name.removeprefix("CAMERA_"))
    for v in fleet_pb2.CameraState.DESCRIPTOR.values
    if v.number
]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class HttpServer:
    """``/metrics`` and ``/healthz`` on ``host:port`` (port 0: a free one) in a thread."""

    def __init__(
        self, host: str, port: int, metrics: AgentMetrics, status: Callable[[], AgentStatus]
    ) -> None:
        metrics_app = make_wsgi_app(metrics.registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") == "/healthz":
                snapshot = status()
                body = json.dumps(snapshot.to_dict()).encode()
                code = (
                    "503 Service Unavailable"
                    if snapshot.health == fleet_pb2.UNHEALTHY
                    else "200 OK"
                )
                start_response(code, [("Content-Type", "application/json")])
                return [body]
            return metrics_app(environ, start_response)

        self._server = make_server(host, port, app, _ThreadingServer, handler_class=_Quiet)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="agent-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
