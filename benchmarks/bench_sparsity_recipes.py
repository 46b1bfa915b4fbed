"""Does sparse training make |gamma| rank the channels? Recipes side by side from one checkpoint.

For each recipe: sparse-train ``--epochs`` from ``--checkpoint`` (constant lr, no warm-up,
the checkpoint's own training settings otherwise), then prune the sparse model's channels
at each of ``--percents`` by the global |gamma| threshold (no layer pruning, no
fine-tuning) and measure mAP50 on the held-out split. A recipe that ranks the channels
keeps the sparse model's mAP50 when pruned; one that does not collapses. Each row also
has the |gamma| distribution and ``penalty.json`` (how hard the penalty pushed next to
the gammas' gradients, :mod:`trainer.compress.penalty_probe`).

    python benchmarks/bench_sparsity_recipes.py --checkpoint runs/bench/train-cpu/weights/last.pt \\
        --recipe old:s=1e-2 --recipe calibrated:s=6e-6,bn_lr_scale=8 \\
        --recipe strong:s=2e-5,bn_lr_scale=8

A recipe is ``name:key=value,...`` with keys ``s``, ``bn_lr_scale``, ``proximal`` (0/1) and
``schedule``. Writes ``--out`` (``benchmarks/results/sparsity-recipes.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _machine import describe, loadavg, run_facts

from trainer.compress.layer_prune import prune
from trainer.compress.sparsity import gamma_stats, prunable_bn_paths, sparse_train
from trainer.model import load_checkpoint
from trainer.validate import validate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sparsity-recipes.json"
QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)


def parse_recipe(text: str) -> tuple[str, dict]:
    """``name:s=1e-5,bn_lr_scale=8`` -> ("name", {"s": 1e-5, "bn_lr_scale": 8.0})."""
    name, _, spec = text.partition(":")
    if not name or not spec:
        raise argparse.ArgumentTypeError(f"a recipe is name:key=value,...: {text!r}")
    options: dict = {"s": 0.0, "bn_lr_scale": 1.0, "proximal": False, "schedule": "constant"}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        if key not in options:
            raise argparse.ArgumentTypeError(f"unknown recipe key {key!r} in {text!r}")
        if key == "schedule":
            options[key] = value
        elif key == "proximal":
            options[key] = value in ("1", "true", "yes")
        else:
            options[key] = float(value)
    return name, options


def map50(model, data, split: str) -> float:
    model.eval()
    return round(float(validate(model, data, split=split).map50), 4)


def run_recipe(name: str, options: dict, args, config, data) -> dict:
    run_config = config.updated(
        epochs=args.epochs, lrf=1.0, warmup_epochs=0, project=str(args.work), name=name,
        exist_ok=True, plots=False,
    )  # fmt: skip
    start = time.perf_counter()
    result = sparse_train(
        run_config, options["s"], options["schedule"], weights=args.checkpoint,
        proximal=options["proximal"], bn_lr_scale=options["bn_lr_scale"], plots=False,
    )  # fmt: skip
    row: dict = {"name": name, **options, "train_s": round(time.perf_counter() - start, 1)}
    model, _ = load_checkpoint(result.last)
    gammas = torch.cat(
        [model.get_submodule(p).weight.detach().abs().flatten() for p in prunable_bn_paths(model)]
    )
    row["gamma"] = gamma_stats(gammas)
    row["gamma_quantiles"] = {
        f"{q:g}": round(float(v), 4)
        for q, v in zip(QUANTILES, torch.quantile(gammas, torch.tensor(QUANTILES)), strict=True)
    }
    penalty = result.run_dir / "penalty.json"
    row["penalty"] = json.loads(penalty.read_text()) if penalty.exists() else None
    row["map50_sparse"] = map50(model, data, args.split)
    row["pruned"] = []
    for percent in args.percents:
        pruned = prune(model, percent=percent, round_to=8, min_keep_frac=0.1)
        row["pruned"].append(
            {
                "percent": percent,
                "params_ratio": round(pruned.params_after / pruned.params_before, 3),
                "map50": map50(pruned.model, data, args.split),
            }
        )
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--recipe", dest="recipes", action="append", type=parse_recipe,
                        required=True, metavar="NAME:KEY=VALUE,...")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--percents", type=lambda t: [float(x) for x in t.split(",")],
                        default=[30.0, 50.0, 70.0])  # fmt: skip
    parser.add_argument("--split", default="val")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "sparsity-recipes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        parser.error(f"no checkpoint at {args.checkpoint}")
    from trainer.config import TrainConfig

    before, started = loadavg(), time.perf_counter()
    model, meta = load_checkpoint(args.checkpoint)
    config = TrainConfig.from_dict({**meta["train_args"], "patience": None})
    data = config.data
    report = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_epoch": meta.get("epoch"),
        "map50_checkpoint": map50(model, data, args.split),
        "epochs": args.epochs,
        "rows": [run_recipe(name, options, args, config, data) for name, options in args.recipes],
        "machine": describe(),
        **run_facts(before, started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
