"""The station agent: cameras -> inspection -> spool -> uplink, with heartbeat and updates.

Everything runs on one asyncio event loop. Each camera reads in a thread of its own and
hands frames to one queue; the inspection loop takes them one at a time and runs the
model, the crops and the spool write in the inference thread (one ONNX Runtime session;
its own thread pool uses the cores). The uplink and the heartbeat are tasks of the loop.

Start-up checks what the configuration alone cannot: that the state directory is
writable, the token and the trusted keys readable, the host names of the endpoints
resolvable, the execution providers present and the first model loadable. Each failure
is a :class:`ConfigError` naming the key. A server that refuses connections is not a
failure: events wait in the spool and heartbeats are retried.

Stopping (SIGTERM, SIGINT, :meth:`Agent.stop`): the cameras stop, the frame being
inspected is finished and spooled, the uplink waits up to ``uplink.drain_s`` for the acks
of batches in flight, and the spool is checkpointed and closed. Frames captured but not
yet inspected are not lost: their cameras resume before them on the next start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
from pathlib import Path

from edge_agent.aio import wait_first
from edge_agent.cameras import Camera, Frame, make_source
from edge_agent.errors import ConfigError
from edge_agent.heartbeat import Heartbeat
from edge_agent.inspector import Inspector
from edge_agent.metrics import AgentMetrics, HttpServer
from edge_agent.model_cache import ModelCache
from edge_agent.model_slot import ModelSlot
from edge_agent.runtime import available_providers
from edge_agent.settings import AgentSettings
from edge_agent.spool import Spool
from edge_agent.status import AgentStatus, CameraReport, RateMeter
from edge_agent.updater import ModelUpdater, ref_of
from edge_agent.uplink import Uplink
from slimspect import __version__
from slimspect.errors import KeyFileError
from slimspect.signing import load_public_keys
from slimspect.store import ModelStore

log = logging.getLogger("slimspect.agent")


class Agent:
    """One station agent. ``await agent.run()`` until :meth:`stop` (or a signal, in the CLI)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.metrics = AgentMetrics()
        self.slot = ModelSlot(
            rollback_after_errors=settings.fleet.rollback_after_errors if settings.fleet else 5
        )
        self.cameras: list[Camera] = []
        self.spool: Spool | None = None
        self.uplink: Uplink | None = None
        self.updater: ModelUpdater | None = None
        self.heartbeat: Heartbeat | None = None
        self.http: HttpServer | None = None
        self.started = asyncio.Event()  # set once the agent runs (after its start-up checks)
        self._stop = asyncio.Event()
        self._frames: asyncio.Queue[Frame] = asyncio.Queue()
        self._rates = {c.id: RateMeter() for c in settings.cameras}
        self._infer_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inference")

    def stop(self) -> None:
        """Asks the agent to stop gracefully (call on the event loop thread)."""
        self._stop.set()

    # --- start-up -------------------------------------------------------------------------

    def _preflight(self) -> tuple[str, ModelCache, ModelStore]:
        s = self.settings
        try:
            s.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("state_dir", f"cannot create {s.state_dir}: {exc.strerror}") from None
        if not os.access(s.state_dir, os.W_OK | os.X_OK):
            raise ConfigError("state_dir", f"{s.state_dir} is not writable")
        token = s.read_token()
        try:
            keys = load_public_keys(s.store.trusted_keys)
        except KeyFileError as exc:
            raise ConfigError("store.trusted_keys", str(exc)) from None
        endpoints = {"uplink.endpoint": s.uplink.endpoint, "store.endpoint": s.store.endpoint}
        if s.fleet is not None:
            endpoints["fleet.endpoint"] = s.fleet.endpoint
        for key, endpoint in endpoints.items():
            _check_resolves(key, endpoint)
        missing = [p for p in s.runtime.providers if p not in available_providers()]
        if missing:
            raise ConfigError(
                "runtime.providers",
                f"{missing} not available in this ONNX Runtime (available: {available_providers()})",
            )
        if s.model.path is not None and not Path(s.model.path).is_dir():
            raise ConfigError("model.path", f"{s.model.path} is not a readable model directory")
        cache = ModelCache(s.model_cache_dir, keys)
        store = ModelStore.from_settings(s.store)
        return token, cache, store

    # --- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs until stopped. Raises :class:`ConfigError` from the start-up checks."""
        s = self.settings
        token, cache, store = self._preflight()
        self.spool = Spool(
            s.spool_path,
            max_bytes=int(s.spool.max_bytes),
            summarize_above=s.spool.summarize_above,
            summary_window_s=s.spool.summary_window_s,
            synchronous=s.spool.synchronous,
        )
        tasks: list[asyncio.Task[None]] = []
        camera_task: asyncio.Task[None] | None = None
        try:
            self.updater = ModelUpdater(
                cache=cache,
                store=store,
                slot=self.slot,
                runtime=s.runtime,
                metrics=self.metrics,
                retry_s=s.fleet.update_retry_s if s.fleet else 300.0,
            )
            restored = await self.updater.restore(s.model)
            log.info(
                "agent starting",
                extra={
                    "station": s.station,
                    "model": str(ref_of(restored)) if restored else None,
                    "cameras": [c.id for c in s.cameras],
                    "spool_events": self.spool.stats().depth,
                },
            )
            self.metrics.watch(self.status)
            if s.metrics.port is not None:
                self.http = HttpServer(s.metrics.host, s.metrics.port, self.metrics, self.status)
                self.http.start()
            self.uplink = Uplink(s.uplink, token=token, spool=self.spool, metrics=self.metrics)
            tasks.append(asyncio.create_task(self.uplink.run(self._stop), name="uplink"))
            if s.fleet is not None:
                self.heartbeat = Heartbeat(
                    s.fleet,
                    token=token,
                    status=self.status,
                    updater=self.updater,
                    metrics=self.metrics,
                )
                tasks.append(asyncio.create_task(self.heartbeat.run(self._stop), name="heartbeat"))
            self.cameras = [
                Camera(
                    c,
                    make_source(c),
                    queue=self._frames,
                    resume=self.spool.cursor(c.id),
                    on_skip=lambda cam: self.metrics.frames_skipped.labels(cam).inc(),
                )
                for c in s.cameras
            ]
            camera_task = asyncio.create_task(self._run_cameras(), name="cameras")
            self.started.set()
            await self._inspect_until_stopped()
            camera_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await camera_task
            await wait_first(self.updater.wait(), timeout=5.0)  # an install in progress
            await asyncio.gather(*tasks, return_exceptions=True)  # the uplink drains
        finally:
            for task in [*tasks, *([camera_task] if camera_task else [])]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._infer_pool.shutdown(wait=True)
            if self.http is not None:
                self.http.stop()
            self.spool.close()
            log.info("agent stopped", extra={"station": s.station, **self.metrics.totals()})

    async def _run_cameras(self) -> None:
        """Starts the cameras once a model runs (frames need somewhere to go)."""
        await self.slot.ready.wait()
        await asyncio.gather(*(cam.run() for cam in self.cameras), return_exceptions=True)

    async def _inspect_until_stopped(self) -> None:
        """Inspects frames one at a time; returns after the frame in hand when stopped."""
        loop = asyncio.get_running_loop()
        assert self.spool is not None and self.uplink is not None
        inspector = Inspector(
            station=self.settings.station,
            spool=self.spool,
            crops=self.settings.runtime.crops,
            metrics=self.metrics,
        )
        while not self._stop.is_set():
            got = asyncio.ensure_future(self._frames.get())
            if got not in await wait_first(got, self._stop.wait(), timeout=None):
                break  # stopped while waiting (wait_first cancelled the get)
            frame = got.result()
            detector = self.slot.active  # one model for the whole frame: swaps fall between
            try:
                if detector is None:
                    continue
                await loop.run_in_executor(self._infer_pool, inspector.inspect, detector, frame)
            except Exception as exc:  # noqa: BLE001 (a failing frame must not stop the station)
                self.metrics.frame_errors.labels(frame.camera).inc()
                log.error(
                    "frame inspection failed",
                    extra={
                        "camera": frame.camera,
                        "model": str(ref_of(detector)),
                        "error": repr(exc),
                    },
                )
                self.slot.frame_failed(detector, exc)
            else:
                self.slot.frame_ok(detector)
                self._rates[frame.camera].tick()
                self.uplink.wake()
            finally:
                frame.done()

    # --- status ---------------------------------------------------------------------------

    def status(self) -> AgentStatus:
        """The agent's state now (for the heartbeat, /healthz and /metrics)."""
        assert self.spool is not None
        cameras = tuple(
            CameraReport(cam.id, cam.state, self._rates[cam.id].rate(), cam.error)
            for cam in self.cameras
        ) or tuple(CameraReport(c.id, 0, 0.0, "waiting for a model") for c in self.settings.cameras)
        return AgentStatus(
            station=self.settings.station,
            agent_version=__version__,
            model=ref_of(self.slot.active),
            cameras=cameras,
            spool=self.spool.stats(),
            spool_pressure=self.spool.under_pressure,
            uplink_connected=bool(self.uplink and self.uplink.connected),
            last_update=self.updater.last_update if self.updater else None,
            uplink_error=(
                self.uplink.last_error if self.uplink and not self.uplink.connected else ""
            ),
            fleet_error=self.heartbeat.last_error if self.heartbeat else "",
        )


def _check_resolves(key: str, endpoint: str) -> None:
    """A host name that does not resolve is a configuration error; a refused port is not."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(key, f"cannot resolve {host!r} ({exc})") from None
