"""The CPU training recipe: yolov4-s from scratch on synthetic steel defects, on this machine.

Synthesizes ``--images`` training images (plus a held-out val split of ``--val-fraction``
of the whole) at ``--size`` px with seed 0, trains ``--model`` at ``--imgsz`` for
``--epochs`` with the default TrainConfig otherwise (SGD, nbs 64, EMA, mosaic/affine/
colour/flip/mixup augmentation, K-means++ anchors), and prints and writes to ``--out``:
mAP50 and mAP50-95 on the held-out split (best.pt, chosen by fitness, and the last
epoch), time per epoch, training images/s, the per-epoch curve and the run folder.

    python benchmarks/bench_train_cpu.py                 # 1,000 images, 30 epochs: over an hour
    python benchmarks/bench_train_cpu.py --epochs 1 --images 64 --out /tmp/train-cpu.json

The data set is kept in ``--data-root`` and reused when it exists with the same settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import torch

from trainer.config import TrainConfig, parse_overrides
from trainer.data.synth import synthesize
from trainer.engine import train

ROOT = Path(__file__).resolve().parents[1]
from _machine import describe

RESULTS = ROOT / "benchmarks" / "results" / "train-cpu.json"


def machine() -> str:
    return describe(f"torch threads {torch.get_num_threads()}", f"torch {torch.__version__}")


def dataset(root: Path, images: int, size: int, seed: int, val_fraction: float) -> Path:
    """``images`` training images plus the held-out val split; reused if already there."""
    total = math.ceil(images / (1 - val_fraction))
    folder = root / f"synth-{images}-{size}px-seed{seed}"
    if (folder / "data.yaml").is_file():
        print(f"reusing {folder}")
        return folder
    start = time.perf_counter()
    ds = synthesize(folder, total, size=size, seed=seed, val_fraction=1 - images / total,
                    workers=os.cpu_count() or 1)  # fmt: skip
    sizes = {k: len(v) for k, v in ds.splits.items()}
    print(f"synthesized {sizes} at {size} px in {time.perf_counter() - start:.1f} s: {folder}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="training images")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out share of all")
    parser.add_argument("--size", type=int, default=224, help="synthetic image side, px")
    parser.add_argument("--model", default="yolov4-s")
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", default="auto", help="auto: 0 on CPU (faster on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--project", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--name", default="train-cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TrainConfig override, as `slimspect train -o` (repeatable), e.g. optimizer=AdamW",
    )
    args = parser.parse_args()

    data = dataset(args.data_root, args.images, args.size, args.seed, args.val_fraction)
    overrides = parse_overrides(args.overrides)
    config = TrainConfig.load(
        None,
        {
            "data": str(data),
            "model": args.model,
            "imgsz": args.imgsz,
            "epochs": args.epochs,
            "batch": args.batch,
            "workers": args.workers if args.workers == "auto" else int(args.workers),
            "seed": args.seed,
            "device": "cpu",
            "project": str(args.project),
            "name": args.name,
            **overrides,
        },
    )
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = train(config)

    def num(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 5)

    best = result.best_result
    last = result.history[-1]
    curve = [
        {
            "epoch": int(row["epoch"]),
            "mAP50": num(row["metrics/mAP50(B)"]),
            "mAP50-95": num(row["metrics/mAP50-95(B)"]),
            "precision": num(row["metrics/precision(B)"]),
            "recall": num(row["metrics/recall(B)"]),
            **{k.replace("/", "_"): num(row[k]) for k in row if k.startswith(("train/", "val/"))},
            "lr": num(row["lr/pg1"]),
            "time_s": num(row["time"]),
        }
        for row in result.history
    ]
    train_epoch_s = result.train_seconds / max(len(result.epoch_seconds), 1)
    report = {
        "recipe": {
            "model": args.model,
            "imgsz": args.imgsz,
            "epochs": args.epochs,
            "batch": args.batch,
            "accumulate": config.accumulate_steps,
            "optimizer": config.optimizer,
            "lr0": config.lr0,
            "overrides": overrides,
            "workers": config.loader_workers("cpu"),
            "data": {
                "synthetic": True,
                "train_images": args.images,
                "val_images": len(list((data / "images" / "val").glob("*.png"))),
                "size": args.size,
                "seed": args.seed,
                "path": str(data),
            },
        },
        "held_out": {
            "split": "val",
            "best_epoch": result.best_epoch,
            "mAP50": num(best.map50) if best else None,
            "mAP50-95": num(best.map50_95) if best else None,
            "precision": num(best.precision) if best else None,
            "recall": num(best.recall) if best else None,
            "last_epoch_mAP50": num(last["metrics/mAP50(B)"]),
            "last_epoch_mAP50-95": num(last["metrics/mAP50-95(B)"]),
            "note": "best.pt is chosen by fitness on this split (as Ultralytics does)",
        },
        "time_per_epoch_s": round(sum(result.epoch_seconds) / max(len(result.epoch_seconds), 1), 1),
        "train_time_per_epoch_s": round(train_epoch_s, 1),
        "train_images_per_s": round(result.images_per_second, 2),
        "total_s": round(result.seconds, 1),
        "curve": curve,
        "run_dir": str(result.run_dir),
        "machine": machine(),
        # other work on this shared machine slows training down: how busy it was
        "load_average_1min_before": round(load_before, 2) if load_before is not None else None,
        "load_average_1min_after": round(os.getloadavg()[0], 2)
        if hasattr(os, "getloadavg")
        else None,
    }
    print(
        f"{args.model} @ {args.imgsz}: mAP50 {report['held_out']['mAP50']} "
        f"mAP50-95 {report['held_out']['mAP50-95']} (best epoch {result.best_epoch}); "
        f"{report['time_per_epoch_s']} s/epoch, {report['train_images_per_s']} training images/s"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    curve_png = result.run_dir / "results.png"
    if curve_png.is_file():  # the per-epoch curve, beside the figures
        shutil.copyfile(curve_png, args.out.with_suffix(".png"))
        print(f"wrote {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
