"""The compression commands: ``slimspect sparse``, ``prune`` and ``distill``.

``sparse`` and ``distill`` run the one training loop (they take every option of
``slimspect train``) with the sparsity callback or the distillation loss. ``prune`` writes
a run folder like the other engines: ``weights/pruned.pt`` (a checkpoint with the
new spec, loadable alone), ``prune.json`` (what was removed, parameters before and after,
mAP before and after when a data set is given), ``gamma.png`` (the |gamma| histogram with
the threshold) and ``channels.png`` (channels kept per conv).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from trainer.cli import _CTX, _load_checkpoint, _read_data, _run_dir, run_training, train_options


def _map50(model, ds, split: str, imgsz: int | None) -> float:
    from trainer.validate import validate

    model.eval()
    return float(validate(model, ds, split=split, imgsz=imgsz).map50)


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
    data,
    split,
    project,
    name,
    exist_ok,
) -> None:
    """Prune channels (global |gamma| threshold) and residual blocks; writes a new spec."""
    from trainer.compress import max_percent_within
    from trainer.compress import prune as prune_model
    from trainer.compress.plots import plot_channels_kept, plot_gamma_histogram
    from trainer.model import save_checkpoint

    if percent is None and not layers and max_map_drop is None:
        raise click.ClickException("nothing to prune: give --percent, --layers or --max-map-drop")
    if percent is not None and max_map_drop is not None:
        raise click.ClickException("--percent and --max-map-drop exclude each other")
    model, meta = _load_checkpoint(model_path)
    model.eval()
    data = data or (meta.get("train_args") or {}).get("data")
    ds = _read_data(data) if data else None
    if max_map_drop is not None and ds is None:
        raise click.ClickException(f"{model_path} does not say its data set: pass --data")
    run_dir = _run_dir(project, name, exist_ok)
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)

    map_before = _map50(model, ds, split, None) if ds is not None else None
    search = None
    if layers:
        layered = prune_model(model, layers=layers, round_to=round_to)
        blocks, start = list(layered.blocks), layered.model
    else:
        blocks, start = [], model
    if max_map_drop is not None:
        budget = max_map_drop
        if blocks:  # the search measures its base on the layer-pruned model
            budget -= map_before - _map50(start, ds, split, None)
        search = max_percent_within(
            start,
            lambda m: _map50(m, ds, split, None),
            max(budget, 0.0),
            round_to=round_to,
            min_keep_frac=min_keep_frac,
        )
        percent = search.percent
        click.echo(f"search: largest percent within the mAP50 budget = {percent:.1f}")
    result = prune_model(
        model,
        percent=percent,
        layers=blocks or None,
        round_to=round_to,
        min_keep_frac=min_keep_frac,
    )
    map_after = _map50(result.model, ds, split, None) if ds is not None else None

    out = run_dir / "weights" / "pruned.pt"
    record = {
        "source": str(model_path),
        "percent": percent,
        "layers": list(result.blocks),
        "round_to": round_to,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "map50_before": map_before,
        "map50_after_prune": map_after,
        "search": None
        if search is None
        else {
            "percent": search.percent,
            "base_map50": search.base_map50,
            "map50": search.map50,
            "trials": [list(t) for t in search.trials],
        },
        "plan": result.to_dict(),
    }
    save_checkpoint(
        out,
        result.model,
        {
            "stage": "prune",
            "parent": str(model_path),
            "class_names": meta.get("class_names"),
            "train_args": meta.get("train_args"),
            "prune": result.to_dict(),
        },
    )
    (run_dir / "prune.json").write_text(json.dumps(record, indent=2, default=str))
    threshold = result.plan.threshold if result.plan is not None else None
    plot_gamma_histogram(model, run_dir / "gamma.png", threshold=threshold)
    plot_channels_kept(model.spec, result.spec, run_dir / "channels.png")
    click.echo(result.summary())
    if map_before is not None:
        click.echo(f"mAP50 {map_before:.4f} -> {map_after:.4f} before fine-tuning")
    click.echo(f"wrote {out}")


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
    type=click.FloatRange(min=0),
    default=1e-3,
    show_default=True,
    help="L1 factor on the prunable BatchNorm scales (per image of the loss).",
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
@train_options
def sparse(weights, s, schedule, proximal, cfg, sets, resume, **options) -> None:
    """Sparse training: L1 on BatchNorm scales so unimportant channels go to zero."""
    from functools import partial

    from trainer.compress.sparsity import sparse_train

    run = partial(sparse_train, s=s, schedule=schedule, weights=weights, proximal=proximal)
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
