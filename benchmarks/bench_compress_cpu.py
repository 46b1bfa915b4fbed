"""The CPU compression recipe and the distillation ablation, from a trained baseline.

Runs :func:`trainer.compress.chain.compress` on ``--baseline`` (by default the CPU recipe's
``best.pt`` from ``bench_train_cpu.py``): sparse training, pruning, distillation, fp32 and
INT8 export, and the table of every stage (size, GFLOPs, ONNX Runtime latency at 1 and 2
threads, mAP). Then the ablation: the same pruned model fine-tuned for the same epochs with
the same settings but no teacher (every distillation weight 0, so the loss is the detection
loss alone), measured the same way. Whether distillation helps is the difference of the
two mAPs, on the same held-out split.

    python benchmarks/bench_compress_cpu.py                       # hours on 2 cores
    python benchmarks/bench_compress_cpu.py --baseline runs/train/weights/best.pt \\
        --sparse-epochs 1 --distill-epochs 1 --percent 50 --out /tmp/compress.json

Writes ``--out`` (``benchmarks/results/compress-cpu.json``): the rows (stage, params,
size_mb, gflops, latency_ms_1t, latency_ms_2t, fps_2t, map50, map50_95), the ratios of
the last row to the baseline, the ablation and the settings. Stages finished in
``--work`` are reused by a rerun with the same settings (the chain's ``done.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _machine import describe

from trainer.compress.chain import compress
from trainer.compress.distill import distill_train
from trainer.compress.table import ratios, stage_row
from trainer.config import TrainConfig, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compress-cpu.json"
BASELINE = ROOT / "runs" / "bench" / "train-cpu" / "weights" / "best.pt"


def ablation(result, epochs: int, split: str, repeats: int) -> dict:
    """Fine-tune the chain's pruned model without a teacher, as its distill stage did with
    one, and measure both students the same way (checkpoints, torch mAP on ``split``)."""
    distill_dir = result.out_dir / "distill"
    args = TrainConfig.load(distill_dir / "args.yaml")  # the distill stage's own settings
    config = args.updated(
        name="finetune-no-distill", project=str(result.out_dir / "ablation"), exist_ok=True,
        epochs=epochs,
    )  # fmt: skip
    start = time.perf_counter()
    run = distill_train(  # every distillation weight 0: the detection loss alone
        config, result.files["sparse"], result.files["pruned"],
        alpha_obj=0.0, alpha_cls=0.0, alpha_box=0.0, feat_weight=0.0,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    rows = {
        name: stage_row(name, checkpoint=ckpt, data=args.data, split=split, repeats=repeats)
        for name, ckpt in (("distilled", result.files["distilled"]), ("finetuned", run.best))
    }
    keys = ("map50", "map50_95")
    gain = {
        k: None
        if rows["distilled"].get(k) is None or rows["finetuned"].get(k) is None
        else round(rows["distilled"][k] - rows["finetuned"][k], 5)
        for k in keys
    }
    return {
        "epochs": epochs,
        "with_distillation": {k: rows["distilled"].get(k) for k in keys},
        "without_distillation": {k: rows["finetuned"].get(k) for k in keys},
        "gain": gain,
        "run_dir": str(run.run_dir),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench" / "compress-cpu")
    parser.add_argument("--sparse-epochs", type=int, default=15)
    parser.add_argument(
        "--s", type=lambda t: t if t == "auto" else float(t), default=1e-3,
        help="the L1 factor, or auto (measured on the first steps)",
    )  # fmt: skip
    parser.add_argument("--schedule", default="global_decay")
    parser.add_argument(
        "--proximal", action="store_true",
        help="soft-threshold the BN scales after each step (works under AdamW) instead of "
        "adding s * sign(gamma) to their gradients",
    )  # fmt: skip
    parser.add_argument(
        "--bn-lr-scale", type=float, default=1.0,
        help="the BatchNorm scales' lr multiple while sparse training",
    )  # fmt: skip
    parser.add_argument("--percent", type=float, default=None)
    parser.add_argument("--max-map-drop", type=float, default=None)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--distill-epochs", type=int, default=15)
    parser.add_argument("--feat-weight", type=float, default=0.0)
    parser.add_argument(
        "--teacher", choices=("sparse", "baseline"), default="sparse",
        help="the distillation teacher (baseline: when sparse training cost accuracy)",
    )  # fmt: skip
    parser.add_argument("--split", default="val")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a training override for both trainings, as `slimspect compress -o`",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.baseline.is_file():
        parser.error(f"no baseline checkpoint at {args.baseline}: run bench_train_cpu.py first")
    if args.percent is None and args.max_map_drop is None:
        args.max_map_drop = 0.05

    overrides = parse_overrides(args.overrides)
    start = time.perf_counter()
    result = compress(
        args.baseline,
        out_dir=args.work,
        sparse_epochs=args.sparse_epochs,
        s=args.s,
        schedule=args.schedule,
        proximal=args.proximal,
        bn_lr_scale=args.bn_lr_scale,
        percent=args.percent,
        max_map_drop=None if args.percent is not None else args.max_map_drop,
        layers=args.layers,
        distill_epochs=args.distill_epochs,
        feat_weight=args.feat_weight,
        teacher=args.teacher,
        overrides=overrides,
        split=args.split,
        repeats=args.repeats,
    )
    report = {
        "rows": result.rows,
        "last_vs_baseline": ratios(result.rows[-1], result.rows[0]),
        "default_format": result.default_format,
        "default_reason": result.default_reason,
        "settings": {
            "baseline": str(args.baseline),
            "sparse_epochs": args.sparse_epochs,
            "s": args.s,
            "schedule": args.schedule,
            "proximal": args.proximal,
            "bn_lr_scale": args.bn_lr_scale,
            "percent": args.percent,
            "max_map_drop": args.max_map_drop,
            "layers": args.layers,
            "distill_epochs": args.distill_epochs,
            "feat_weight": args.feat_weight,
            "teacher": args.teacher,
            "overrides": overrides,
            "split": args.split,
        },
        "chain_seconds": round(result.seconds, 1),
        "bench_md": str(result.bench_md),
        "machine": describe(),
    }
    if not args.no_ablation:
        report["ablation"] = ablation(result, args.distill_epochs, args.split, args.repeats)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    print(result.bench_md.read_text())
    if "ablation" in report:
        a = report["ablation"]
        print(
            f"distillation ablation ({a['epochs']} epochs): mAP50 with "
            f"{a['with_distillation']['map50']} vs without {a['without_distillation']['map50']}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
