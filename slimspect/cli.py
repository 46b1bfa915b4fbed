"""The ``slimspect`` command.

Sub-commands live with the deployable that owns them and are imported only when invoked,
so ``slimspect keys generate`` never pays for importing torch, and a station that carries
only the ``edge`` extra still gets a working ``slimspect`` command for its own parts.
"""

from __future__ import annotations

import importlib

import click

from slimspect import __version__

# name -> "module:attribute" of a click command or group. One line per mounted command.
COMMANDS: dict[str, tuple[str, str]] = {
    "keys": ("slimspect.store_cli:keys", "Generate the Ed25519 key pair that signs published models."),
    "models": ("slimspect.store_cli:models", "List, show and verify models in the store."),
    "data": ("trainer.data.cli:data", "Synthesize, convert, check and describe defect data sets."),
    "train": ("trainer.cli:train", "Train a YOLOv4-family detector into a run folder (resume with --resume)."),
    "val": ("trainer.cli:val", "Evaluate a checkpoint: P, R, mAP50, mAP50-95, PR curve, confusion matrix."),
    "predict": ("trainer.cli:predict", "Detect defects in images, folders or videos with a .pt or .onnx model."),
    "anchors": ("trainer.cli:anchors", "K-means++ anchors of a data set beside YOLOv4's defaults (mean IoU, BPR)."),
    "sparse": ("trainer.compress.cli:sparse", "Sparse training: L1 on BatchNorm scales before pruning."),
    "distill": ("trainer.compress.cli:distill", "Fine-tune a pruned student with distillation from its teacher."),
    "prune": ("trainer.compress.cli:prune", "Prune channels and residual blocks of a (sparse-trained) model."),
    "compress": ("trainer.compress.cli:compress", "Sparse-train, prune, distill, export (fp32 + INT8) and measure every stage."),
    "bench": ("trainer.compress.cli:bench", "Size, GFLOPs, CPU latency and mAP of checkpoints and ONNX files, as a table."),
    "export": ("trainer.export:export_command", "Export a checkpoint to ONNX and check parity with torch."),
    "pipeline": ("trainer.pipeline.cli:pipeline", "Run the whole pipeline on Ray (data to a signed model in the store), resumable by run id."),
    "aggregator": ("services.aggregator.cli:aggregator", "Run the gRPC ingest server (Redis) and manage station tokens."),
    "api": ("services.api.cli:api", "Run the HTTP API, dashboard and Fleet server; manage API keys."),
    "stations": ("services.api.client_cli:stations", "List stations with status and model (through the API)."),
    "rollout": ("services.api.client_cli:rollout", "Start, inspect, promote and roll back rollouts (through the API)."),
    "agent": ("edge_agent.cli:agent", "Run a station agent: cameras, ONNX Runtime, spool, gRPC uplink, heartbeat, verified model updates."),
    "demo": ("slimspect.demo:demo", "Run the end-to-end story on the embedded default."),
    "up": ("slimspect.stack_cli:up", "Start the embedded stack (Redis, S3, Ray, aggregator, API, N stations) in the background."),
    "down": ("slimspect.stack_cli:down", "Stop every process of the embedded stack."),
    "restart": ("slimspect.stack_cli:restart", "Restart one process of the embedded stack (redis, aggregator, station-N)."),
    "status": ("slimspect.stack_cli:status", "Show what the embedded stack runs: pids, health, URLs, logs."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy:
            return self._load(name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import every deployable: use the one-line summaries.
        rows = [(name, self._lazy[name][1]) for name in sorted(self._lazy)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def _load(self, name: str) -> click.Command:
        target, _ = self._lazy[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            extra = {"trainer": "train", "edge_agent": "edge", "services": "services"}.get(
                module_name.split(".")[0], "all"
            )
            raise click.ClickException(
                f"'slimspect {name}' needs a package that is not installed ({exc.name}); "
                f"install it with: pip install 'slimspect[{extra}]'"
            ) from exc
        command = getattr(module, attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slimspect")
def cli() -> None:
    """slimspect: train, compress, publish and run visual defect detectors."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
