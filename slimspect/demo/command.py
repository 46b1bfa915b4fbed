"""``slimspect demo``: the whole story on the embedded stack, step by step.

1. ``slimspect up``: Redis, the S3 store, Ray, the aggregator, the API with the rollout
   service, and N stations whose synthetic cameras wait for a model (a stack already
   running in the demo's folder is reused);
2. ``slimspect pipeline run``: synthetic data -> baseline -> sparse -> prune -> distill ->
   export -> bench -> publish, on the stack's Ray, into the stack's store;
3. the publish stage starts a canary rollout of the new version on one station (the
   ``slimspect rollout start --station station-1`` of an operator); the rollout gate
   promotes it after its soak, then every station runs it;
4. defects stream in through the aggregator; the demo watches ``/v1/stats``;
5. a summary: the bench table, defects per class and per station, the model version per
   station, the dashboard's URL.

Each step runs as its own ``slimspect`` sub-process, the way a user would type it, so the
demo exercises the real commands and the core never imports a deployable. Between steps
the demo reads the state from the API (api_watch.py). The stack keeps running at the end
(the dashboard is the point); ``--down`` stops it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.console import Console

from slimspect.api_client import Api
from slimspect.demo.api_watch import DemoTimeout, wait_until
from slimspect.demo.pipelines import pipeline_config, pipeline_yaml
from slimspect.demo.summary import print_summary, stations_table
from slimspect.embedded.stack import status as stack_status
from slimspect.embedded.stack_env import read_env_file
from slimspect.embedded.station_config import station_name

console = Console()

MODEL_NAME = "slimspect-demo"
# What the stack's rollout service is started with, so the story fits in minutes (its
# defaults: 10 s heartbeats, a 10 min soak, a sweep every 30 s).
FLEET_ENV = {
    "SLIMSPECT_ROLLOUT_HEARTBEAT_INTERVAL_S": "2",
    "SLIMSPECT_ROLLOUT_SOAK_S": "10",
    "SLIMSPECT_ROLLOUT_SWEEP_INTERVAL_S": "2",
}


class DemoFailed(click.ClickException):
    pass


class Story:
    """The steps, numbered as they run; each prints its command and its time."""

    def __init__(self, total: int, env: dict[str, str]) -> None:
        self.total = total
        self.number = 0
        self.env = env

    def step(self, title: str) -> None:
        self.number += 1
        console.rule(f"[bold]step {self.number}/{self.total}: {title}")

    def run(self, args: list[str]) -> None:
        console.print(f"$ slimspect {' '.join(args)}", style="dim")
        t0 = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "slimspect.cli", *args], env=self.env, check=False
        )
        if result.returncode != 0:
            raise DemoFailed(
                f"step {self.number} (slimspect {args[0]}) failed with exit code "
                f"{result.returncode}"
            )
        console.print(f"[green]done[/] in {time.perf_counter() - t0:.1f} s")


def _stack_running(state_dir: Path) -> bool:
    rows = stack_status(state_dir)
    return bool(rows) and all(r.alive and r.answering for r in rows)


def _version_of(stations: list[dict], names: list[str], version: str) -> bool:
    by_name = {s["station"]: s for s in stations}
    return all((by_name.get(n) or {}).get("model_version") == version for n in names)


def _rollout(api: Api, version: str) -> dict | None:
    return next(
        (r for r in api.rollouts() if r["model_name"] == MODEL_NAME and r["version"] == version),
        None,
    )


@click.command()
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=Path("runs/demo"),
    show_default=True,
    help="Where the demo keeps the stack, the runs and the YAML.",
)
@click.option(
    "--quick", is_flag=True, help="A tiny model and few epochs: the whole story in a few minutes."
)
@click.option(
    "--stations",
    type=click.IntRange(1, 20),
    default=2,
    show_default=True,
    help="Simulated stations (synthetic cameras).",
)
@click.option(
    "--stream-s",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds to watch defects stream in (default 30, --quick 15).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=10),
    default=300,
    show_default=True,
    help="Seconds each wait (rollout, promotion) may take.",
)
@click.option(
    "--down/--keep-up",
    default=False,
    show_default=True,
    help="Stop the stack at the end (default: keep it up for the dashboard).",
)
def demo(workdir: Path, quick: bool, stations: int, stream_s: float | None,
         timeout_s: float, down: bool) -> None:  # fmt: skip
    """The whole story on the embedded stack: train, compress, publish, roll out, stream."""
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    state_dir = workdir / "stack"
    stream_s = stream_s if stream_s is not None else (15.0 if quick else 30.0)
    started = time.perf_counter()
    story = Story(5, {**os.environ, **FLEET_ENV})
    names = [station_name(i) for i in range(1, stations + 1)]
    try:
        # ---- 1. the stack ------------------------------------------------------------------
        story.step(f"start the embedded stack with {stations} stations")
        if _stack_running(state_dir):
            console.print(f"the stack in {state_dir} runs already: using it")
        else:
            story.run(["up", "--stations", str(stations), "--state-dir", str(state_dir),
                       "--model-name", MODEL_NAME])  # fmt: skip
        env = read_env_file(state_dir / "env.sh")
        story.env = {**story.env, **env}
        api = Api(env["SLIMSPECT_API_URL"], env["SLIMSPECT_API_KEY"])

        # ---- 2. the pipeline ---------------------------------------------------------------
        version = f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        story.step(f"train, compress and publish {MODEL_NAME}/{version} on Ray")
        config_file = workdir / ("pipeline-quick.yaml" if quick else "pipeline.yaml")
        config = pipeline_config(quick=quick, model_name=MODEL_NAME, version=version,
                                 canary=names[0])  # fmt: skip
        config_file.write_text(pipeline_yaml(config, quick=quick))
        story.run(["pipeline", "run", str(config_file), "--run-id", version,
                   "--workdir", str(workdir / "runs"), "--address", env["RAY_ADDRESS"]])  # fmt: skip

        # ---- 3. canary, then promotion ----------------------------------------------------
        canary = names[0]
        story.step(f"roll it out: a canary on {canary}, then every station")
        console.print(
            f"the pipeline's publish stage started the canary (publish.canary in the YAML; by "
            f"hand: slimspect rollout start {MODEL_NAME} {version} --station {canary})"
        )
        wait_until(
            lambda: _version_of(api.stations(), [canary], version),
            timeout_s=timeout_s, what=f"{canary} runs {version}",
            describe=lambda: str([(s["station"], s["model_version"]) for s in api.stations()]),
        )  # fmt: skip
        console.print(f"{canary} verified, smoke-tested and runs {version} (the canary)")
        rollout = wait_until(
            lambda: (r := _rollout(api, version)) and r["state"] != "active" and r,
            timeout_s=timeout_s, what=f"the rollout of {version} decided",
            describe=lambda: str(_rollout(api, version)),
        )  # fmt: skip
        if rollout["state"] != "promoted":
            raise DemoFailed(
                f"the rollout of {version} ended {rollout['state']}: {rollout['decision_reason']}"
            )
        console.print(f"promoted by {rollout['decided_by']}: {rollout['decision_reason']}")
        wait_until(
            lambda: _version_of(api.stations(), names, version),
            timeout_s=timeout_s, what=f"every station runs {version}",
            describe=lambda: str([(s["station"], s["model_version"]) for s in api.stations()]),
        )  # fmt: skip
        console.print(stations_table(api.stations()))

        # ---- 4. defects streaming ---------------------------------------------------------
        story.step(f"defects stream in ({stream_s:.0f} s)")
        deadline = time.monotonic() + stream_s
        while time.monotonic() < deadline:
            total = api.stats("class")["total"]
            console.print(
                f"  frames {total['frames']:>6}  defects {total['defects']:>6}  "
                f"defect frames {total.get('defect_frames') or 0:>6}"
            )
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))

        # ---- 5. summary --------------------------------------------------------------------
        story.step("summary")
        bench = workdir / "runs" / version / "bench" / "bench.json"
        print_summary(
            console,
            bench_json=bench,
            by_class=api.stats("class"),
            by_station=api.stats("station"),
            stations=api.stations(),
            dashboard=f"{env['SLIMSPECT_API_URL']}/#key={env['SLIMSPECT_API_KEY']}",
            state_dir=state_dir,
            keep_up=not down,
        )
    except DemoTimeout as exc:
        raise DemoFailed(f"{exc} (logs: {state_dir}/logs/)") from None
    finally:
        if down and (state_dir / "stack.json").exists():
            story.run(["down", "--state-dir", str(state_dir)])
    console.rule("[bold green]demo finished")
    console.print(f"{story.total} steps in {time.perf_counter() - started:.1f} s; "
                  f"everything is in {workdir}/")  # fmt: skip
