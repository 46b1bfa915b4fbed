"""Model updates: from a version name to a verified, loaded, smoke-tested model swapped in.

:meth:`ModelUpdater.install` runs the whole chain for a version the fleet asks for:

1. the disk cache's copy if it still verifies, else ``ModelStore.fetch`` into the cache
   (which checks the manifest signature under the trusted keys and every sha256 before
   the version appears there, by one rename);
2. an ONNX Runtime session (runtime.py), refused when the manifest and the model's own
   metadata disagree;
3. the smoke test: the golden image must give the expected detections (smoke.py);
4. the swap between two frames (model_slot.py); the replaced model stays loaded as the
   previous one, and ``current.json`` names both, so a restart runs the new model from
   the cache even when the store cannot be reached.

Any failure leaves the running model alone; the result, with its reason, is what the
next heartbeat reports in ``last_update``. A refused version is not tried again for
``update_retry_s`` (the fleet keeps asking for it until its rollout is rolled back).
Loading and testing run in a worker thread: frames keep flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from edge_agent.errors import AgentError, ConfigError
from edge_agent.metrics import AgentMetrics
from edge_agent.model_cache import ModelCache, ModelRef
from edge_agent.model_slot import ModelSlot, Rollback
from edge_agent.runtime import Detector
from edge_agent.settings import ModelSettings, RuntimeSettings
from edge_agent.smoke import smoke_test
from slimspect.errors import SlimspectError
from slimspect.store import FetchedModel, ModelStore
from slimspect.v1 import fleet_pb2

log = logging.getLogger("slimspect.agent.updater")

REFUSALS = (SlimspectError, AgentError, OSError)
"""What a refused model raises: store and signature errors, load and smoke-test errors."""


def ref_of(detector: Detector | None) -> ModelRef | None:
    return None if detector is None else ModelRef(detector.name, detector.version)


class ModelUpdater:
    """Loads the model at start and installs the versions the fleet asks for."""

    def __init__(
        self,
        *,
        cache: ModelCache,
        store: ModelStore | None,
        slot: ModelSlot,
        runtime: RuntimeSettings,
        metrics: AgentMetrics,
        retry_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.store = store
        self.slot = slot
        self.runtime = runtime
        self.metrics = metrics
        self.retry_s = retry_s
        self.clock = clock
        self.last_update: fleet_pb2.UpdateResult | None = None
        self.finished = asyncio.Event()  # set after each install: the heartbeat reports early
        self._refused: dict[ModelRef, float] = {}  # version -> monotonic time of the refusal
        self._task: asyncio.Task[fleet_pb2.UpdateResult] | None = None
        slot.listeners.append(self._rolled_back)

    # --- loading --------------------------------------------------------------------------

    def prepare(self, fetched: FetchedModel) -> Detector:
        """Loads a verified copy and smoke-tests it (blocking: call it in a thread)."""
        detector = Detector(fetched, self.runtime)
        matched = smoke_test(detector)
        log.info(
            "model passed the smoke test",
            extra={"model": fetched.manifest.key, "matched": matched},
        )
        return detector

    def load(self, ref: ModelRef) -> Detector:
        """Cache (or store), verify, load, smoke-test (blocking)."""
        return self.prepare(self.cache.get(ref, self.store))

    async def restore(self, configured: ModelSettings) -> Detector | None:
        """At start: the model ``current.json`` names (else its previous one), from the cache;
        else the configured one. None when nothing is configured: wait for the fleet.

        Raises :class:`ConfigError` naming ``model.path`` or ``model.version`` when the
        configured model is needed and cannot be loaded.
        """
        current, previous = self.cache.read_current()
        for ref in (current, previous):
            if ref is None:
                continue
            try:
                detector = await asyncio.to_thread(self.load, ref)
            except REFUSALS as exc:
                log.warning("cached model not usable", extra={"model": str(ref), "error": str(exc)})
                continue
            self.slot.swap(detector, probation=False)
            other = previous if ref == current else None
            await self._load_previous(other)
            return detector
        detector = await self._configured(configured)
        if detector is not None:
            self.slot.swap(detector, probation=False)
            ref = ref_of(detector)
            assert ref is not None
            self.cache.write_current(ref, None)
        return detector

    async def _configured(self, configured: ModelSettings) -> Detector | None:
        if configured.path is not None:
            path = Path(configured.path)
            try:
                fetched = await asyncio.to_thread(self.cache.import_directory, path)
                return await asyncio.to_thread(self.prepare, fetched)
            except REFUSALS as exc:
                raise ConfigError("model.path", f"cannot use {path}: {exc}") from None
        if configured.name is None or configured.version is None:
            return None
        ref = ModelRef(configured.name, configured.version)
        try:
            return await asyncio.to_thread(self.load, ref)
        except REFUSALS as exc:
            raise ConfigError("model.version", f"cannot run {ref}: {exc}") from None

    async def _load_previous(self, ref: ModelRef | None) -> None:
        """Keeps the previous model loaded for a fast rollback (best effort, cache only)."""
        if ref is None or not self.cache.has(ref):
            return
        try:
            fetched = await asyncio.to_thread(self.cache.verified, ref)
            self.slot.previous = await asyncio.to_thread(self.prepare, fetched)
        except REFUSALS as exc:
            log.warning("previous model not usable", extra={"model": str(ref), "error": str(exc)})

    # --- updating -------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def wants(self, ref: ModelRef) -> bool:
        """Whether ``ref`` should be installed now."""
        if ref == ref_of(self.slot.active) or self.busy:
            return False
        refused_at = self._refused.get(ref)
        return refused_at is None or time.monotonic() - refused_at >= self.retry_s

    def request(self, ref: ModelRef) -> None:
        """Starts installing ``ref`` in the background when :meth:`wants` it."""
        if self.wants(ref):
            self._task = asyncio.create_task(self.install(ref), name=f"install {ref}")

    async def wait(self) -> None:
        """Until the running install (if any) has finished."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def install(self, ref: ModelRef) -> fleet_pb2.UpdateResult:
        """The whole update chain for ``ref``; never raises for a refused model."""
        started = time.monotonic()
        log.info(
            "model update", extra={"model": str(ref), "running": str(ref_of(self.slot.active))}
        )
        try:
            previous = self.slot.previous
            if previous is not None and ref_of(previous) == ref:
                detector = previous  # back to the model before: loaded and tested already
            else:
                detector = await asyncio.to_thread(self.load, ref)
        except REFUSALS as exc:
            self._refused[ref] = time.monotonic()
            result = self._result(ref, fleet_pb2.UPDATE_FAILED, str(exc))
            log.error(
                "model update refused; the running model stays",
                extra={"model": str(ref), "reason": str(exc)},
            )
            return result
        old = self.slot.swap(detector)  # on the loop thread: between two frames
        self._refused.pop(ref, None)
        old_ref = ref_of(old)
        await asyncio.to_thread(self._remember, ref, old_ref)
        log.info(
            "model swapped",
            extra={
                "model": str(ref),
                "previous": str(old_ref),
                "seconds": round(time.monotonic() - started, 2),
            },
        )
        return self._result(ref, fleet_pb2.UPDATE_OK, "")

    def _remember(self, current: ModelRef, previous: ModelRef | None) -> None:
        self.cache.write_current(current, previous)
        self.cache.prune({r for r in (current, previous) if r is not None})

    def _result(self, ref: ModelRef, status: int, reason: str) -> fleet_pb2.UpdateResult:
        result = fleet_pb2.UpdateResult(
            version=ref.version,
            status=status,  # type: ignore[arg-type]
            reason=reason[:1000],
            at_ms=int(self.clock() * 1000),
        )
        self.last_update = result
        self.metrics.updates.labels(
            fleet_pb2.UpdateStatus.Name(status).removeprefix("UPDATE_").lower()
        ).inc()
        self.finished.set()
        return result

    def _rolled_back(self, rollback: Rollback) -> None:
        failed, restored = ref_of(rollback.failed), ref_of(rollback.restored)
        assert failed is not None and restored is not None
        self._refused[failed] = time.monotonic()
        log.error(
            "model rolled back",
            extra={"failed": str(failed), "restored": str(restored), "reason": rollback.reason},
        )
        self._result(failed, fleet_pb2.UPDATE_ROLLED_BACK, rollback.reason)
        try:
            self.cache.write_current(restored, failed)
        except OSError as exc:
            log.error("cannot record the rollback in current.json", extra={"error": str(exc)})
