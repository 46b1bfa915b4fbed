"""The pipeline's training stages on this machine: one process vs Ray Train workers vs Ray Data.

Synthesizes ``--images`` training images (seed 0, ``--size`` px), puts them in an embedded
S3 store (SeaweedFS, as the pipeline's run folder) and starts a local Ray with every CPU,
then trains the same model on the same data for the same epochs, side by side:

* ``single``: the plain single-process loop (:func:`trainer.engine.train`, the in-process
  loader, torch on every CPU);
* ``ray-1`` / ``ray-2``: the pipeline's baseline stage (:func:`trainer.pipeline.ray_train.
  fit_stage`) on 1 and 2 Ray Train workers, each augmenting its shard in its own process
  (``augment_on: worker``; torch threads: the CPUs shared out);
* ``ray-2-data``: 2 workers streaming their batches from Ray Data (``augment_on:
  ray_data``); where the training workers hold every CPU the augmentation tasks claim
  none and share them (``cpus_per_data_worker: 0``), else they get the CPUs left.

Each reports training images/s (images trained / seconds in the training loop, validation
and start-up left out) and the stage's wall seconds (Ray start-up, fetches, validation in).
Then augmentation alone, no training: images/s of a whole epoch of the training split from
the in-process loader (``TrainDataset`` + ``DataLoader``, 0 workers) and from Ray Data
(:func:`trainer.data.ray_data.augmented_epoch` + ``epoch_batches``, ordered, with 1 and
with ``cpu_count`` tasks), median over ``--repeats``. Training runs repeat
``--train-repeats`` times (median).

    python benchmarks/bench_pipeline_train.py      # 256 images at 224 px, 2 epochs: ~20 min
    python benchmarks/bench_pipeline_train.py --quick --out /tmp/pipeline-train.json  # ~4 min

On a 2-core machine the figures of ``--quick`` (32 images, 1 epoch) are mostly start-up
and per-epoch overheads; the default run is the one to compare.

Writes ``--out`` (default ``benchmarks/results/pipeline-train.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trainer.config import TrainConfig
from trainer.data.synth import synthesize

ROOT = Path(__file__).resolve().parents[1]
from _machine import describe, loadavg, run_facts

RESULTS = ROOT / "benchmarks" / "results" / "pipeline-train.json"


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def single_process(args_dict: dict, run_dir: Path, threads: int) -> dict:
    from trainer.engine import train

    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = train(TrainConfig.from_dict(args_dict), run_dir=run_dir)
    return {
        "images_per_s": result.train_images / result.train_seconds,
        "wall_s": time.perf_counter() - start,
    }


def ray_stage(runs, train_args: dict, out: Path, cache: Path, name: str, **ray) -> dict:
    from trainer.pipeline.ray_train import fit_stage

    start = time.perf_counter()
    metrics = fit_stage(
        kind="baseline", stage=name, runs=runs, attempt=out.name, train_args=train_args,
        files=[], options={}, out_dir=out, max_failures=0, cache=cache, **ray,
    )  # fmt: skip
    images = metrics["images_per_worker"] * metrics["workers"]
    return {
        "images_per_s": images / metrics["train_seconds"],
        "wall_s": time.perf_counter() - start,
    }


def augmentation(config: TrainConfig, channels: int, repeats: int, tasks: list[int]) -> dict:
    """Images/s of one epoch of augmented training batches, no training."""
    from trainer.data.augment import Augmenter
    from trainer.data.formats import read_dataset
    from trainer.data.loader import DatasetSamples, TrainDataset, train_loader
    from trainer.data.ray_data import augmented_epoch, epoch_batches

    samples = DatasetSamples(read_dataset(config.data), "train", gray=channels == 1)
    dataset = TrainDataset(
        samples, Augmenter(config.augment, config.imgsz, seed=config.seed), channels
    )
    n = len(dataset)
    results: dict[str, list[float]] = {"in_process": []}
    for k in tasks:
        results[f"ray_data_{k}_tasks"] = []
    for r in range(repeats):
        start = time.perf_counter()
        count = sum(len(im) for im, _ in train_loader(dataset, config.batch, 0, config.seed, r))
        results["in_process"].append(count / (time.perf_counter() - start))
        for k in tasks:
            start = time.perf_counter()
            ds = augmented_epoch(
                config, channels, r, range(n), concurrency=k, num_cpus=0, ordered=True,
                progress_bars=False,
            )  # fmt: skip
            count = sum(len(im) for im, _ in epoch_batches(ds, config.batch))
            results[f"ray_data_{k}_tasks"].append(count / (time.perf_counter() - start))
    return {key: median(values) for key, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="training images")
    parser.add_argument("--size", type=int, default=224, help="synthetic image side, px")
    parser.add_argument("--model", default="yolov4-n")
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="augmentation-only repeats")
    parser.add_argument("--train-repeats", type=int, default=1, help="training run repeats")
    parser.add_argument("--quick", action="store_true", help="tiny: 32 images at 64 px, 1 epoch")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.images, args.size, args.imgsz, args.epochs, args.batch = 32, 64, 64, 1, 8
        args.repeats, args.train_repeats = 2, 1

    import logging

    import ray

    from slimspect.embedded.s3 import SeaweedS3
    from trainer.pipeline.run_store import RunStore

    started, load_before = time.perf_counter(), loadavg()
    cpus = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-train-"))
    total = round(args.images / 0.8)
    synthesize(work / "data", total, size=args.size, seed=0, val_fraction=1 - args.images / total)
    base = {
        "model": args.model, "imgsz": args.imgsz, "batch": args.batch, "epochs": args.epochs,
        "seed": 0, "device": "cpu", "workers": 0, "patience": None, "verbose": False,
        "plots": False,
    }  # fmt: skip
    local_args = TrainConfig.from_dict({**base, "data": str(work / "data" / "data.yaml")})
    channels = 3  # the variants' input (grey images are repeated)

    figures: dict[str, dict] = {}
    with SeaweedS3(work / "s3", startup_timeout_s=60) as s3:
        settings = s3.store_settings(bucket="bench", region=None, signing_key=None, trusted_keys=[])
        runs = RunStore(settings, "bench")
        runs.ensure_bucket()
        runs.upload_dir(work / "data", "data")
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        import ray.data  # its logging is set up on import: then quieten it

        logging.getLogger("ray.data").setLevel(logging.WARNING)  # a line per epoch dataset
        try:
            train_args = {**local_args.to_dict(), "data": "data/data.yaml"}
            two = max(1, cpus // 2)
            data_cpus = 0.0 if cpus <= 2 else 1.0
            variants = {
                "ray-1": {"num_workers": 1, "cpus_per_worker": 1.0, "torch_threads": cpus},
                "ray-2": {"num_workers": 2, "cpus_per_worker": min(1.0, cpus / 2),
                          "torch_threads": two},
                "ray-2-data": {"num_workers": 2, "cpus_per_worker": min(1.0, cpus / 2),
                               "torch_threads": two, "augment_on": "ray_data",
                               "data_workers": max(1, (cpus - 2) // 2),
                               "cpus_per_data_worker": data_cpus},
            }  # fmt: skip
            runs_of: dict[str, list[dict]] = {name: [] for name in ["single", *variants]}
            # the driver's first training pays torch's one-time start-up: not a figure
            single_process({**local_args.to_dict(), "epochs": 1}, work / "warm-up", cpus)
            for r in range(args.train_repeats):
                runs_of["single"].append(
                    single_process(local_args.to_dict(), work / f"single-{r}", cpus)
                )
                for name, ray_args in variants.items():
                    runs_of[name].append(
                        ray_stage(runs, train_args, work / f"{name}-{r}", work / "cache",
                                  name, **ray_args)
                    )  # fmt: skip
                    torch.set_num_threads(cpus)
            for name, results in runs_of.items():
                figures[name] = {
                    "train_images_per_s": median([x["images_per_s"] for x in results]),
                    "wall_s": median([x["wall_s"] for x in results]),
                    "settings": variants.get(name, {"torch_threads": cpus}),
                }
            torch.set_num_threads(cpus)
            augment = augmentation(local_args, channels, args.repeats, sorted({1, cpus}))
        finally:
            ray.shutdown()

    report = {
        "recipe": {
            "model": args.model,
            "imgsz": args.imgsz,
            "epochs": args.epochs,
            "batch": args.batch,
            "train_images": args.images,
            "size": args.size,
            "train_repeats": args.train_repeats,
            "augment_repeats": args.repeats,
            "quick": args.quick,
        },
        "training": figures,
        "augmentation_only_images_per_s": augment,
        "machine": describe(f"torch {torch.__version__}", f"ray {ray.__version__}"),
        **run_facts(load_before, started),
    }
    print(f"{args.model} @ {args.imgsz}, {args.images} images, {args.epochs} epoch(s):")
    for name, f in figures.items():
        print(f"  {name:11s} {f['train_images_per_s']:8.2f} training images/s, "
              f"stage {f['wall_s']:.1f} s wall")  # fmt: skip
    print("  augmentation only, images/s: "
          + ", ".join(f"{k} {v:.1f}" for k, v in augment.items()))  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
