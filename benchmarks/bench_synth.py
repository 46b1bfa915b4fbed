"""Synthetic data generation speed on one core, files included.

Draws ``--images`` images of ``--size`` pixels (default 2,000 at 200 px) into a fresh
temporary folder ``--repeats`` times, pinned to one CPU with every thread pool at one
thread, and prints the median images/s; writes ``benchmarks/results/synth.json``.
Drawing takes about 1 ms an image at 200 px; on a slow disk creating the two files of
each image (PNG and label) can cost as much again: ``--dir /dev/shm`` leaves the disk out.

    python benchmarks/bench_synth.py [--images 2000] [--size 200] [--repeats 3] [--format yolo]
                                     [--dir FOLDER]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy and OpenCV load their thread pools

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from _machine import describe

from trainer.data.synth import synthesize

RESULTS = Path(__file__).resolve().parent / "results" / "synth.json"


def machine() -> str:
    return describe("1 used", f"numpy {np.__version__}", f"OpenCV {cv2.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--format", default="yolo", choices=("yolo", "voc", "coco"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write the images (default: the temp folder)",
    )
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)

    rates = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            start = time.perf_counter()
            synthesize(Path(tmp) / "ds", args.images, size=args.size, seed=repeat, fmt=args.format)
            seconds = time.perf_counter() - start
        rates.append(args.images / seconds)
        print(
            f"repeat {repeat + 1}: {args.images} images, {seconds:.2f} s, {rates[-1]:.0f} images/s"
        )
    result = {
        "images_per_s": round(statistics.median(rates), 1),
        "images": args.images,
        "size": args.size,
        "repeats": args.repeats,
        "format": args.format,
        "all_images_per_s": [round(r, 1) for r in rates],
        "machine": machine(),
        # File creation dominates on slow disks: say where the files went.
        "folder": str(args.dir or tempfile.gettempdir()),
        # Other work on the machine slows the run down; this says how busy it was.
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(
        f"median: {result['images_per_s']:.0f} images/s ({args.size} px, one core, files included)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
