"""Latency of a compression chain's baseline and final models, timed side by side.

The chain's table (``bench.json``) times each row in its own block, one after the other;
on a shared 2-core VM a block can land in a noisy minute (the 2026-11-29 run timed the
baseline at 36.7 ms with 2 threads and the sparse model, the same architecture, at 23.5).
This times the baseline checkpoint (exported here), the distilled fp32 model and its INT8
twin (the chain's ``export/``) alternating, with the same input and session options
(:func:`trainer.compress.quantize.interleaved_latency`), so their ratios share the noise.

    python benchmarks/bench_compress_latency.py --baseline CKPT --chain runs/bench/compress-cpu \
        [--repeats 40] [--out benchmarks/results/compress-cpu-latency.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _machine import describe

from trainer.compress.quantize import interleaved_latency
from trainer.export import export_onnx
from trainer.model import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--chain", type=Path, required=True, help="the chain's out_dir")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "compress-cpu-latency.json"
    )
    args = parser.parse_args()

    model, _ = load_checkpoint(args.baseline)
    spec = model.spec
    with tempfile.TemporaryDirectory() as tmp:
        models = {"baseline": Path(tmp) / "baseline.onnx"}
        export_onnx(model, models["baseline"])
        models["distilled"] = args.chain / "export" / "model.onnx"
        if (args.chain / "export" / "model-int8.onnx").exists():
            models["distilled-int8"] = args.chain / "export" / "model-int8.onnx"
        report = {
            "threads": {},
            "repeats": args.repeats,
            "models": {k: str(v) for k, v in models.items()},
        }
        for threads in args.threads:
            stats = interleaved_latency(
                models, threads, spec.input_size, spec.in_channels,
                warmup=args.warmup, repeats=args.repeats,
            )  # fmt: skip
            base = stats["baseline"]["median_ms"]
            report["threads"][str(threads)] = {
                name: {**s, "speedup_vs_baseline": base / s["median_ms"]}
                for name, s in stats.items()
            }
            line = ", ".join(
                f"{name} {s['median_ms']:.1f} ms ({base / s['median_ms']:.2f}x)"
                for name, s in stats.items()
            )
            print(f"{threads} thread(s): {line}")
    report["machine"] = describe()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
