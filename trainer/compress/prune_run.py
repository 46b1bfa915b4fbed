"""One pruning run, as ``slimspect prune`` and the ``compress`` chain do it.

Layers first, then channels (see :func:`trainer.compress.layer_prune.prune`), with an
optional search for the largest channel percent within an mAP50 budget. Writes into
``run_dir``: ``weights/pruned.pt`` (the new spec + weights, loadable alone), ``prune.json``,
``gamma.png`` (|gamma| histogram with the threshold) and ``channels.png`` (kept per conv).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.compress.layer_prune import prune
from trainer.compress.plots import plot_channels_kept, plot_gamma_histogram


def prune_run(
    model_path: Path,
    run_dir: Path,
    *,
    percent: float | None,
    layers: int,
    max_map_drop: float | None,
    round_to: int,
    min_keep_frac: float,
    keep_by: str = "gamma",
    data=None,
    split: str = "val",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Prune the checkpoint at ``model_path``; returns the summary written to prune.json
    (without its ``plan`` and ``search`` details). ``data``: a data set (or its path) to
    measure mAP50 on; needed by ``max_map_drop``."""
    from trainer.compress.channel_prune import max_percent_within
    from trainer.model import load_checkpoint, save_checkpoint
    from trainer.validate import validate

    if max_map_drop is not None and data is None:
        raise ValueError("the mAP50 budget search needs a data set")
    model, meta = load_checkpoint(model_path)
    model.eval()

    def map50(m) -> float | None:
        if data is None:
            return None
        m.eval()
        return float(validate(m, data, split=split).map50)

    map_before = map50(model)
    blocks, start = [], model
    if layers:
        layered = prune(model, layers=layers, round_to=round_to)
        blocks, start = list(layered.blocks), layered.model
    search = None
    if max_map_drop is not None:
        budget = max_map_drop - ((map_before - map50(start)) if blocks else 0.0)
        search = max_percent_within(
            start, map50, max(budget, 0.0), round_to=round_to, min_keep_frac=min_keep_frac,
            keep_by=keep_by,
        )  # fmt: skip
        percent = search.percent
        log(f"search: largest percent within the mAP50 budget = {percent:.1f}")
    result = prune(
        model, percent=percent, layers=blocks or None, round_to=round_to,
        min_keep_frac=min_keep_frac, keep_by=keep_by,
    )  # fmt: skip
    map_after = map50(result.model)

    out = run_dir / "weights" / "pruned.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "source": str(model_path),
        "percent": percent,
        "layers": list(result.blocks),
        "round_to": round_to,
        "keep_by": keep_by,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "map50_before": map_before,
        "map50_after_prune": map_after,
    }
    search_record = None
    if search is not None:
        search_record = {
            "percent": search.percent,
            "base_map50": search.base_map50,
            "map50": search.map50,
            "trials": [list(t) for t in search.trials],
        }
    record = {**summary, "search": search_record, "plan": result.to_dict()}
    save_checkpoint(out, result.model, {
        "stage": "prune", "parent": str(model_path), "class_names": meta.get("class_names"),
        "train_args": meta.get("train_args"), "prune": result.to_dict(),
    })  # fmt: skip
    (run_dir / "prune.json").write_text(json.dumps(record, indent=2, default=str))
    threshold = result.plan.threshold if result.plan is not None else None
    plot_gamma_histogram(model, run_dir / "gamma.png", threshold=threshold)
    plot_channels_kept(model.spec, result.spec, run_dir / "channels.png")
    log(result.summary())
    if map_before is not None:
        log(f"mAP50 {map_before:.4f} -> {map_after:.4f} before fine-tuning")
    return summary
