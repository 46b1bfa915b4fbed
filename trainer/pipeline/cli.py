"""``slimspect pipeline run pipeline.yaml [--address ADDR] [--run-id ID]``."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def pipeline() -> None:
    """The distributed pipeline on Ray: data to a signed, compact model in the store."""


@pipeline.command("run")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--address", default=None, help="Ray cluster to join (default: a local Ray).")
@click.option("--run-id", default=None, help="Resume this run (default: a new run id).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/pipeline"),
    show_default=True,
    help="Local root of run folders (a mirror of runs/<run_id>/ in the store).",
)
def run(config_file: Path, address: str | None, run_id: str | None, workdir: Path) -> None:
    """Run the stages of CONFIG_FILE; rerun with --run-id to resume (finished stages are
    skipped). The store is SLIMSPECT_STORE_* (publishing needs its signing key)."""
    from pydantic import ValidationError

    from slimspect.errors import StoreError
    from slimspect.settings import StoreSettings
    from trainer.pipeline.config import PipelineConfig, PipelineConfigError, check_run_id
    from trainer.pipeline.records import PipelineError
    from trainer.pipeline.runner import run_pipeline

    try:
        config = PipelineConfig.load(config_file)
        if run_id is not None:
            check_run_id(run_id)
    except PipelineConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        settings = StoreSettings()
    except ValidationError as exc:
        raise click.ClickException(f"store settings (SLIMSPECT_STORE_*): {exc}") from None
    try:
        run_pipeline(config, settings, run_id=run_id, workdir=workdir, address=address)
    except (PipelineError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
