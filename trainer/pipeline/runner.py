"""Run the pipeline: every stage in order, resumable through the store.

    result = run_pipeline(PipelineConfig.load("pipeline.yaml"), StoreSettings(), run_id="r1")
    result.outcomes   # per stage: ran / skipped / off, seconds, why
    result.published  # the registry entry (publish stage's record)

The run's folder in the store, ``runs/<run_id>/``, holds each stage's outputs and its
completion record under ``<stage>/`` (:mod:`trainer.pipeline.records` has the rule);
the local workdir ``<workdir>/<run_id>/`` mirrors it, and a stage skipped on a rerun is
fetched back from the store when a later stage needs it. Ray is started locally unless
it is already initialised or an ``address`` is given (``ray.init(address=...)``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer.compress.chain import hms
from trainer.pipeline.canary import check_canary_env
from trainer.pipeline.config import PipelineConfig, check_run_id
from trainer.pipeline.records import DONE, STARTED, decide, done_record, started_record
from trainer.pipeline.run_store import RAY_FOLDER, RunStore
from trainer.pipeline.stages import (
    RUNNERS,
    STAGES,
    PipelineRun,
    enabled_stages,
    stage_settings,
    stage_upstream,
)

__all__ = ["PipelineResult", "StageOutcome", "new_run_id", "run_pipeline"]


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    status: str  # "ran" | "skipped" | "off" (an optional stage switched off)
    seconds: float
    reason: str


@dataclass
class PipelineResult:
    run_id: str
    workdir: Path
    store_url: str
    records: dict[str, dict[str, Any]]
    outcomes: list[StageOutcome]
    rows: list[dict[str, Any]]
    seconds: float
    dashboard_url: str | None = None
    published: dict[str, Any] | None = field(default=None)

    @property
    def ran(self) -> list[str]:
        return [o.stage for o in self.outcomes if o.status == "ran"]

    @property
    def skipped(self) -> list[str]:
        return [o.stage for o in self.outcomes if o.status == "skipped"]

    @property
    def off(self) -> list[str]:
        return [o.stage for o in self.outcomes if o.status == "off"]


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def _start_ray(address: str | None) -> tuple[bool, str | None]:
    """``ray.init`` unless Ray is up already; returns (started here, dashboard URL)."""
    import ray

    if ray.is_initialized():
        return False, None
    from trainer.pipeline.ray_logging import RUNTIME_ENV

    context = ray.init(address=address, log_to_driver=True, runtime_env=RUNTIME_ENV)
    url = getattr(context, "dashboard_url", None) or None
    return True, (url if url is None or "://" in url else f"http://{url}")


def run_pipeline(
    config: PipelineConfig,
    store_settings,
    *,
    run_id: str | None = None,
    workdir: str | Path | None = None,
    address: str | None = None,
    console=None,
) -> PipelineResult:
    """Run (or resume) the pipeline; see the module docstring.

    Args:
        store_settings: :class:`slimspect.settings.StoreSettings` of the S3 store (the
            run's folder, Ray checkpoints and the registry; publishing needs its
            signing key).
        run_id: resume this run; default a new id (date, time, random suffix).
        workdir: local root of run folders (default ``runs/pipeline``).
        address: a Ray cluster to join (``ray.init(address=...)``).
    Raises:
        PipelineError: a finished stage with other settings, a bad input, publishing.
        Whatever a stage raises (the stage stays unfinished; a rerun redoes it).
    """
    from rich.console import Console

    t_all = time.perf_counter()
    console = console or Console()
    run_id = check_run_id(run_id or new_run_id())
    workdir = Path(workdir or "runs/pipeline") / run_id
    workdir.mkdir(parents=True, exist_ok=True)
    cache_root = config.ray.worker_cache or Path(tempfile.gettempdir()) / "slimspect-pipeline"
    check_canary_env(config)  # before hours of training, not after
    runs = RunStore(store_settings, run_id)
    runs.ensure_bucket()
    run = PipelineRun(
        config=config,
        runs=runs,
        workdir=workdir,
        cache=Path(cache_root) / run_id,
        console=console,
        store_settings=store_settings,
    )
    console.print(f"[bold]pipeline run {run_id}[/]: store {runs.url()}, workdir {workdir}")
    settings = stage_settings(config)
    upstream = stage_upstream(config)
    enabled = enabled_stages(config)
    runs.upload_file(config.dump(workdir / "pipeline.yaml"), "pipeline.yaml")  # the latest call's

    # ---- what runs: the first stage that must run, and every stage after it -------------
    plan = []
    finished: dict[str, dict[str, Any]] = {}
    earlier_ran = False
    for name in enabled:
        done = runs.read_json(f"{name}/{DONE}")
        started = runs.read_json(f"{name}/{STARTED}")
        inputs = {u: (finished.get(u) or {}).get("id") for u in upstream[name]}
        outputs_exist = done is not None and all(
            runs.exists(rel) for rel in (done.get("outputs") or {}).values()
        )
        decision = decide(
            name, done=done, started=started, settings=settings[name], inputs=inputs,
            earlier_ran=earlier_ran, outputs_exist=outputs_exist,
        )  # fmt: skip
        earlier_ran = earlier_ran or decision.run
        if done is not None:
            finished[name] = done
        plan.append((name, done, decision, started))

    to_run = [name for name, _, d, _ in plan if d.run]
    needed = {u for name in to_run for u in upstream[name]} | {"bench", "publish"}
    off = [name for name in STAGES if name not in enabled]
    started_ray, dashboard = False, None
    outcomes: list[StageOutcome] = []
    for name in off:
        outcomes.append(StageOutcome(name, "off", 0.0, f"{name}.enabled: false"))
        console.print(f"[dim]stage {name}: off ({name}.enabled: false)[/]")
    try:
        n = len(enabled)
        for i, (name, done, decision, started) in enumerate(plan, 1):
            stage_dir = workdir / name
            if not decision.run:
                assert done is not None
                if name in needed:
                    runs.download_prefix(name, stage_dir, skip=(RAY_FOLDER,))
                run.records[name] = done
                outcomes.append(StageOutcome(name, "skipped", 0.0, decision.reason))
                console.print(
                    f"[dim]stage {i}/{n} {name}: skipped, {decision.reason} "
                    f"(took {hms(float(done.get('seconds', 0.0)))})[/]"
                )
                continue
            if not started_ray and name in ("baseline", "sweep", "sparse", "distill"):
                started_ray, dashboard = _start_ray(address)
                if dashboard:
                    console.print(f"Ray dashboard: {dashboard}")
            inputs = {u: run.records[u]["id"] for u in upstream[name]}
            # this stage runs: its record and every later one are stale from now on
            for later in STAGES[STAGES.index(name) :]:
                runs.delete(f"{later}/{DONE}")
            resuming = started is not None and decision.attempt == started.get("attempt")
            if not resuming:
                runs.remove_prefix(name)
            shutil.rmtree(stage_dir, ignore_errors=True)
            stage_dir.mkdir(parents=True)
            started_at = started_record(settings[name], inputs, decision.attempt)
            runs.write_json(f"{name}/{STARTED}", started_at)
            console.rule(f"[bold cyan]stage {i}/{n}: {name}[/] [dim]{decision.reason}[/]")
            t0 = time.perf_counter()
            outputs, info = RUNNERS[name](run, stage_dir, decision.attempt)
            runs.upload_dir(stage_dir, name)
            seconds = time.perf_counter() - t0
            record = done_record(
                name, settings=settings[name], inputs=inputs, attempt=decision.attempt,
                outputs=outputs, started_at=started_at["at"], seconds=seconds, info=info,
            )  # fmt: skip
            runs.write_json(f"{name}/{DONE}", record)
            run.records[name] = record
            outcomes.append(StageOutcome(name, "ran", seconds, decision.reason))
            console.print(f"[bold green]stage {i}/{n} {name}: done in {hms(seconds)}[/]")
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    outcomes.sort(key=lambda o: STAGES.index(o.stage))
    rows = json.loads(run.path("bench", "json").read_text())["rows"]
    publish = run.records.get("publish") or {}
    result = PipelineResult(
        run_id=run_id,
        workdir=workdir,
        store_url=runs.url(),
        records=run.records,
        outcomes=outcomes,
        rows=rows,
        seconds=time.perf_counter() - t_all,
        dashboard_url=dashboard,
        published=publish if publish.get("published") else None,
    )
    print_summary(result, console)
    return result


def print_summary(result: PipelineResult, console) -> None:
    """The stage table, the bench table and the published model."""
    from rich.table import Table

    from trainer.compress.table import print_table

    table = Table(title=f"pipeline {result.run_id}")
    for column in ("stage", "status", "time", "note"):
        table.add_column(column)
    for o in result.outcomes:
        if o.status == "skipped":
            seconds = result.records[o.stage].get("seconds", 0.0)
        else:
            seconds = o.seconds
        table.add_row(o.stage, o.status, hms(float(seconds)), o.reason)
    console.print(table)
    print_table(result.rows, console, title="compression")
    export = result.records.get("export") or {}
    console.print(
        f"default format: [bold]{export.get('default_format')}[/] ({export.get('default_reason')})"
    )
    if result.published:
        p = result.published
        console.print(f"published [bold]{p['name']}/{p['version']}[/] ({p['format']})")
    console.print(
        f"{len(result.ran)} stage(s) ran, {len(result.skipped)} skipped, in {hms(result.seconds)}; "
        f"run folder {result.store_url}, local {result.workdir}"
    )
