"""The compression commands: ``slimspect sparse``, ``prune`` and ``distill``.

``sparse`` and ``distill`` run the one training loop (they take every option of
``slimspect train``) with the sparsity callback or the distillation loss. ``prune`` writes
a run folder like the other engines: ``weights/pruned.pt`` (a checkpoint with the
new spec, loadable alone), ``prune.json`` (what was removed, parameters before and after,
mAP before and after when a data set is given), ``gamma.png`` (the |gamma| histogram with
the threshold) and ``channels.png`` (channels kept per conv).
"""

from __future__ import annotations

from pathlib import Path

import click

from trainer.cli import _CTX, _load_checkpoint, _read_data, _run_dir, run_training, train_options

# channel_prune.KEEP_BY, named here without importing torch (a test keeps the two equal)
KEEP_BY_CHOICES = ("gamma", "scaled", "flops")


class _SFactor(click.ParamType):
    """A non-negative float, or ``auto``."""

    name = "FLOAT|auto"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, float):
            return value
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)
        if number < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return number


S_FACTOR = _SFactor()


@click.command("prune", context_settings=_CTX)
@click.option(
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Checkpoint (.pt) to prune, usually the sparse-trained one.",
)
@click.option(
    "--percent",
    type=click.FloatRange(0, 99),
    default=None,
    help="Global |gamma| percentile to cut over the prunable channels.",
)
@click.option(
    "--layers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Residual blocks to drop (the weakest by mean |gamma|), before channels.",
)
@click.option(
    "--max-map-drop",
    type=click.FloatRange(0, 1),
    default=None,
    help="Search the largest --percent whose mAP50 before fine-tuning stays within "
    "this drop (needs --data or the checkpoint's data set).",
)
@click.option(
    "--round-to",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Kept channel counts are rounded up to a multiple of this (1: off).",
)
@click.option(
    "--min-keep-frac",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Share of each layer's channels always kept.",
)
@click.option(
    "--keep-by",
    type=click.Choice(KEEP_BY_CHOICES),
    default="gamma",
    show_default=True,
    help="Channel ranking: |gamma|, |gamma|/BN std (scaled), or |gamma| weighed by the "
    "channel's multiply-adds (flops: cuts the costly high-resolution layers more).",
)
@click.option(
    "--data", default=None, help="Data set to measure mAP50 on [default: the checkpoint's]."
)
@click.option("--split", default="val", show_default=True)
@click.option("--project", default="runs", show_default=True)
@click.option("--name", default="prune", show_default=True)
@click.option("--exist-ok", is_flag=True, help="Reuse project/name if it exists.")
def prune(
    model_path,
    percent,
    layers,
    max_map_drop,
    round_to,
    min_keep_frac,
    keep_by,
    data,
    split,
    project,
    name,
    exist_ok,
) -> None:
    """Prune channels (global |gamma| threshold) and residual blocks; writes a new spec."""
    from trainer.compress.prune_run import prune_run

    if percent is None and not layers and max_map_drop is None:
        raise click.ClickException("nothing to prune: give --percent, --layers or --max-map-drop")
    if percent is not None and max_map_drop is not None:
        raise click.ClickException("--percent and --max-map-drop exclude each other")
    _, meta = _load_checkpoint(model_path)
    data = data or (meta.get("train_args") or {}).get("data")
    if max_map_drop is not None and not data:
        raise click.ClickException(f"{model_path} does not say its data set: pass --data")
    ds = _read_data(data) if data else None
    run_dir = _run_dir(project, name, exist_ok)
    prune_run(
        model_path, run_dir, percent=percent, layers=layers, max_map_drop=max_map_drop,
        round_to=round_to, min_keep_frac=min_keep_frac, keep_by=keep_by, data=ds, split=split,
        log=click.echo,
    )  # fmt: skip
    click.echo(f"wrote {run_dir / 'weights' / 'pruned.pt'}")


@click.command("sparse", context_settings=_CTX)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint to start from, usually the baseline's best.pt.",
)
@click.option(
    "--s",
    "s",
    type=S_FACTOR,
    default="1e-3",
    show_default=True,
    help="L1 factor on the prunable BatchNorm scales (per image of the loss), or 'auto': "
    "measured on the first steps so the penalty outweighs 70%% of their gradients.",
)
@click.option(
    "--schedule",
    type=click.Choice(["constant", "global_decay", "local_decay"]),
    default="constant",
    show_default=True,
    help="global_decay: s falls late in training; local_decay: the strongest "
    "channels are penalised less late in training.",
)
@click.option(
    "--proximal",
    is_flag=True,
    help="Soft-threshold gamma by lr*s after each step instead of (only) the "
    "subgradient: moves gammas to exactly zero.",
)
@click.option(
    "--bn-lr-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
    help="Multiply the BatchNorm scales' lr by this while sparse training: under AdamW a "
    "parameter moves about lr per step, so a short run needs it to take gammas to zero.",
)  # fmt: skip
@train_options
def sparse(weights, s, schedule, proximal, bn_lr_scale, cfg, sets, resume, **options) -> None:
    """Sparse training: L1 on BatchNorm scales so unimportant channels go to zero."""
    from functools import partial

    from trainer.compress.sparsity import sparse_train

    run = partial(
        sparse_train, s=s, schedule=schedule, weights=weights, proximal=proximal,
        bn_lr_scale=bn_lr_scale,
    )  # fmt: skip
    run_training(run, cfg, sets, resume, **options)


@click.command("distill", context_settings=_CTX)
@click.option(
    "--teacher",
    type=click.Path(path_type=Path),
    required=True,
    help="The unpruned (sparse-trained) model's checkpoint.",
)
@click.option(
    "--student",
    type=click.Path(path_type=Path),
    default=None,
    help="The pruned model's checkpoint (not needed with --resume).",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="Softening of objectness and class targets.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Weight of each distillation term (objectness, class, box).",
)
@click.option(
    "--feat-weight",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Weight of neck feature imitation near objects (0: off).",
)
@click.option(
    "--margin",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Box term margin: the student is pulled only where it is worse than the "
    "teacher by more than this.",
)
@train_options
def distill(
    teacher, student, temperature, alpha, feat_weight, margin, cfg, sets, resume, **options
) -> None:
    """Fine-tune a pruned student with knowledge distillation from its teacher."""
    from functools import partial

    from trainer.compress.distill import distill_train

    if student is None and resume is None:
        raise click.ClickException("--student is needed (or --resume to continue a run)")
    run = partial(
        distill_train,
        teacher_ckpt=teacher,
        student_ckpt=student,
        temperature=temperature,
        alpha_obj=alpha,
        alpha_cls=alpha,
        alpha_box=alpha,
        feat_weight=feat_weight,
        margin=margin,
    )
    run_training(run, cfg, sets, resume, **options)


# ---------------------------------------------------------------------------------------------
# compress: the whole chain; bench: the table of any models


def _compress_errors() -> tuple[type[Exception], ...]:
    from trainer.cli import _user_errors
    from trainer.compress.chain import CompressError
    from trainer.compress.quantize import QuantizationError
    from trainer.export import ExportError

    return (CompressError, ExportError, QuantizationError, *_user_errors())


@click.command("compress", context_settings=_CTX)
@click.option(
    "--from",
    "baseline",
    required=True,
    type=click.Path(path_type=Path),
    help="The baseline checkpoint (runs/train/weights/best.pt).",
)
@click.option("--data", default=None, help="Data set [default: the checkpoint's].")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("runs/compress"),
    show_default=True,
    help="Output folder; a rerun with the same folder skips the finished stages.",
)
@click.option("--sparse-epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option(
    "--s", "s", type=S_FACTOR, default="1e-3", show_default=True,
    help="L1 factor on the prunable BatchNorm scales, or 'auto' (see slimspect sparse).",
)  # fmt: skip
@click.option(
    "--schedule",
    type=click.Choice(["constant", "global_decay", "local_decay"]),
    default="constant",
    show_default=True,
)
@click.option("--proximal", is_flag=True, help="Soft-threshold gamma after each step.")
@click.option(
    "--bn-lr-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
    help="Multiply the BatchNorm scales' lr by this while sparse training: under AdamW a "
    "parameter moves about lr per step, so a short run needs it to take gammas to zero.",
)  # fmt: skip
@click.option(
    "--percent", type=click.FloatRange(0, 99), default=None,
    help="Global |gamma| percentile of channels to cut.",
)  # fmt: skip
@click.option(
    "--max-map-drop",
    type=click.FloatRange(0, 1),
    default=None,
    help="Instead of --percent: the largest percent whose mAP50 before fine-tuning drops "
    "at most this much (a fraction: 0.05 = 5 points).",
)
@click.option(
    "--layers", type=click.IntRange(min=0), default=0, show_default=True,
    help="Residual blocks to drop (the weakest by mean |gamma|).",
)  # fmt: skip
@click.option("--round-to", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--min-keep-frac", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option(
    "--keep-by", type=click.Choice(KEEP_BY_CHOICES), default="gamma", show_default=True,
    help="Channel ranking of the prune stage (as slimspect prune --keep-by).",
)  # fmt: skip
@click.option("--distill-epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option(
    "--teacher",
    type=click.Choice(["sparse", "baseline"]),
    default="sparse",
    show_default=True,
    help="The distillation teacher: the sparse-trained model or the baseline.",
)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=2.0,
              show_default=True)  # fmt: skip
@click.option("--alpha", type=click.FloatRange(min=0), default=0.5, show_default=True)
@click.option("--feat-weight", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--margin", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--imgsz", type=click.IntRange(min=32), default=None,
              help="Training input side [default: the baseline's].")  # fmt: skip
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="[default: the baseline's]")  # fmt: skip
@click.option("--device", default=None, help="Training device [default: the baseline's].")
@click.option(
    "--set", "-o", "sets", multiple=True, metavar="KEY=VALUE",
    help="Any other training setting for both trainings (as in slimspect train).",
)  # fmt: skip
@click.option("--no-int8", is_flag=True, help="Skip INT8 quantization.")
@click.option("--calibration-images", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--int8-max-map-drop",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="INT8 becomes the default format only if faster and within this mAP50 drop.",
)
@click.option("--split", default="val", show_default=True, help="Split mAP is measured on.")
@click.option(
    "--repeats", type=click.IntRange(min=1), default=20, show_default=True,
    help="Timed runs per latency (the median is reported).",
)  # fmt: skip
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
def compress(baseline, data, out_dir, sets, no_int8, **options) -> None:
    """Sparse-train, prune, distill, export (fp32 + INT8) and measure every stage.

    Writes OUT/<stage>/ with a done.json per finished stage, OUT/bench.json, bench.md and
    channels.png. A rerun with the same --out skips the finished stages.
    """
    from rich.console import Console

    from trainer.compress.chain import compress as run_chain
    from trainer.config import parse_overrides

    if not baseline.is_file():
        raise click.ClickException(f"checkpoint not found: {baseline}")
    if data is not None and not Path(data).exists():
        raise click.ClickException(f"data not found: {data}")
    if options["percent"] is not None and options["max_map_drop"] is not None:
        raise click.ClickException("--percent and --max-map-drop exclude each other")
    if options["percent"] is None and options["max_map_drop"] is None and not options["layers"]:
        raise click.ClickException("nothing to prune: give --percent, --layers or --max-map-drop")
    if options["imgsz"] is not None and options["imgsz"] % 32:
        raise click.ClickException(f"--imgsz must be a multiple of 32, got {options['imgsz']}")
    try:
        overrides = parse_overrides(list(sets))
        run_chain(
            baseline,
            data=data,
            out_dir=out_dir,
            overrides=overrides,
            int8=not no_int8,
            console=Console(),
            **options,
        )
    except _compress_errors() as exc:
        raise click.ClickException(str(exc).replace("\n", " ")) from None


def _bench_items(items) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        if not name or not path:
            raise click.ClickException(f"{item!r} is not STAGE=PATH")
        p = Path(path)
        if not p.is_file():
            raise click.ClickException(f"{name}: file not found: {p}")
        if p.suffix.lower() not in (".pt", ".onnx"):
            raise click.ClickException(f"{name}: {p} is neither a checkpoint (.pt) nor .onnx")
        if name in (n for n, _ in out):
            raise click.ClickException(f"stage name {name!r} given twice")
        out.append((name, p))
    return out


def _data_of(path: Path) -> str | None:
    if path.suffix.lower() == ".onnx":
        from trainer.export import read_onnx_metadata

        args = read_onnx_metadata(path).get("slimspect.train_args")
    else:
        args = (_load_checkpoint(path)[1] or {}).get("train_args")
    return args.get("data") if isinstance(args, dict) else None


@click.command("bench", context_settings=_CTX)
@click.argument("items", nargs=-1, required=True, metavar="STAGE=PATH...")
@click.option(
    "--data", default=None,
    help="Data set for mAP [default: the first model's training data].",
)  # fmt: skip
@click.option("--split", default="val", show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("runs/bench/bench.json"),
    show_default=True,
)
@click.option(
    "--md",
    "md_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("runs/bench/bench.md"),
    show_default=True,
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=20, show_default=True,
    help="Timed runs per latency (the median is reported).",
)  # fmt: skip
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
def bench(items, data, split, json_path, md_path, repeats, warmup) -> None:
    """The compression table of any checkpoints (.pt) and ONNX files (fp32 or int8).

    slimspect bench baseline=runs/train/weights/best.pt int8=runs/compress/export/model-int8.onnx

    Size, GFLOPs, ONNX Runtime latency (1 and 2 threads; a checkpoint is exported first),
    mAP; ratios against the first model.
    """
    from rich.console import Console

    from trainer.compress.table import machine_info, print_table, stage_rows, write_table

    pairs = _bench_items(items)
    if data is None:
        data = next((d for d in (_data_of(p) for _, p in pairs) if d), None)
        if data is None:
            raise click.ClickException("none of the models says its data set: pass --data")
    if not Path(data).exists():
        raise click.ClickException(f"data not found: {data}")
    console = Console()
    plan = [
        (name, {"onnx" if path.suffix.lower() == ".onnx" else "checkpoint": path})
        for name, path in pairs
    ]
    console.print("size and mAP of each model, then the latencies of all side by side")
    try:
        rows = stage_rows(
            plan, data=data, split=split, repeats=repeats, warmup=warmup,
            on_row=lambda row: console.print(f"measured {row['stage']}"),
        )  # fmt: skip
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}".replace("\n", " ")) from None
    extra = {
        "sources": {name: str(path) for name, path in pairs},
        "data": str(data),
        "split": split,
        "timing": {"threads": [1, 2], "repeats": repeats, "warmup": warmup},
        "machine": machine_info(),
    }
    write_table(rows, json_path, md_path, extra)
    print_table(rows, console)
    console.print(f"wrote {json_path} and {md_path}")
