"""Size, cost and ONNX Runtime CPU latency of every named variant, as exported.

For each variant of :func:`trainer.model.list_variants` (the full ``yolov4`` only with
``--include-full``) at its default input size and 6 classes: build (seed 0), export to
ONNX (``trainer.export.export_onnx``: opset 17, onnxslim, BatchNorm folded), then measure
parameters, fp32 MiB (state dict and .onnx file), GFLOPs and the batch-1 latency of
``session.run`` (median and p90 over ``--repeats`` runs after ``--warmup``) with 1 and 2
intra-op threads (``trainer.bench.ort_latency``); with ``--compare-exact-mish`` also of the
export that writes Mish as Softplus/Tanh/Mul (``fast_mish=False``). Prints a table and
writes ``benchmarks/results/variants.json``.

    python benchmarks/bench_variants.py [--include-full] [--compare-exact-mish]
        [--repeats 20] [--full-repeats 10]

Random weights: latency does not depend on them (no data-dependent ops in the graph).
The numbers are for a shared machine: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch
from _machine import describe, loadavg
from rich.console import Console
from rich.table import Table

from trainer.bench import model_profile, ort_latency
from trainer.export import export_onnx
from trainer.model import build, get_spec, list_variants

RESULTS = Path(__file__).resolve().parent / "results" / "variants.json"
NUM_CLASSES = 6
FULL = "yolov4"


def machine() -> str:
    return describe(f"{platform.system()} {platform.release()}", f"torch {torch.__version__}")



def time_threads(path: Path, spec, threads: list[int], warmup: int, repeats: int, tag: str):
    out = {}
    for t in threads:
        lat = ort_latency(path, t, spec.input_size, spec.in_channels, warmup, repeats)
        out[str(t)] = {
            "median_ms": round(lat["median_ms"], 2),
            "p90_ms": round(lat["p90_ms"], 2),
            "min_ms": round(lat["min_ms"], 2),
            "fps": round(lat["fps"], 1),
        }
        print(
            f"  {spec.name} ({tag}): {t} thread(s) median {lat['median_ms']:.1f} ms, "
            f"p90 {lat['p90_ms']:.1f} ms ({repeats} runs)",
            flush=True,
        )
    return out


def measure(
    name: str, threads: list[int], warmup: int, repeats: int, tmp: Path, exact_too: bool
) -> dict:
    spec = get_spec(name, num_classes=NUM_CLASSES)
    model = build(spec, seed=0).eval()
    start = time.perf_counter()
    report = export_onnx(model, tmp / f"{name}.onnx")
    export_s = time.perf_counter() - start
    exact = export_onnx(model, tmp / f"{name}-exact.onnx", fast_mish=False) if exact_too else None
    prof = model_profile(model, report.path)
    row = {
        "variant": name,
        "input_size": spec.input_size,
        "in_channels": spec.in_channels,
        "num_classes": spec.num_classes,
        "depths": list(spec.depths),
        "params": prof["params"],
        "params_m": round(prof["params"] / 1e6, 3),
        "fp32_mib": round(prof["size_mb"], 2),
        "onnx_mib": round(prof["onnx_mb"], 2),
        "gflops": round(prof["gflops"], 2),
        "onnx_nodes": report.nodes_after,
        "export_s": round(export_s, 1),
        "warmup": warmup,
        "repeats": repeats,
    }
    del model
    row["latency"] = time_threads(report.path, spec, threads, warmup, repeats, "sigmoid Mish")
    report.path.unlink()
    if exact is not None:
        row["latency_exact_mish"] = time_threads(
            exact.path, spec, threads, warmup, repeats, "softplus Mish"
        )
        exact.path.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--include-full", action="store_true", help=f"also time {FULL!r}")
    parser.add_argument("--variants", nargs="*", default=None, help="subset of variant names")
    parser.add_argument("--threads", default="1,2", help="comma-separated intra-op counts")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--full-warmup", type=int, default=2)
    parser.add_argument("--full-repeats", type=int, default=10)
    parser.add_argument(
        "--compare-exact-mish",
        action="store_true",
        help="also time the export with Mish as Softplus/Tanh/Mul (fast_mish=False)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    names = args.variants or [n for n in list_variants() if n != FULL or args.include_full]
    names = sorted(names, key=lambda n: n == FULL)  # the slow one last
    threads = [int(t) for t in args.threads.split(",")]
    load_before = loadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp:
        for name in names:
            print(f"{name}: build + export ...", flush=True)
            full = name == FULL
            rows.append(
                measure(
                    name,
                    threads,
                    args.full_warmup if full else args.warmup,
                    args.full_repeats if full else args.repeats,
                    Path(tmp),
                    args.compare_exact_mish,
                )
            )

    table = Table(title=f"YOLOv4 variants, {NUM_CLASSES} classes, ONNX Runtime {ort.__version__}")
    for col in ("variant", "input", "params", "fp32 MiB", "onnx MiB", "GFLOPs"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for t in threads:
        table.add_column(f"{t} thr ms (p90)", justify="right")
    if args.compare_exact_mish:
        for t in threads:
            table.add_column(f"softplus-Mish {t} thr ms", justify="right")
    table.add_column("runs", justify="right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['input_size']} {'gray' if r['in_channels'] == 1 else 'RGB'}",
            f"{r['params_m']:.2f} M",
            f"{r['fp32_mib']:.1f}",
            f"{r['onnx_mib']:.1f}",
            f"{r['gflops']:.2f}",
            *(
                f"{r['latency'][str(t)]['median_ms']:.1f} ({r['latency'][str(t)]['p90_ms']:.0f})"
                for t in threads
            ),
            *(
                f"{r['latency_exact_mish'][str(t)]['median_ms']:.1f}"
                for t in (threads if args.compare_exact_mish else [])
            ),
            str(r["repeats"]),
        )
    Console(width=140).print(table)

    result = {
        "machine": machine(),
        "onnxruntime": ort.__version__,
        "opset": 17,
        "batch": 1,
        "session": "CPUExecutionProvider, intra_op_num_threads=N, inter_op_num_threads=1, "
        "sequential, ORT_ENABLE_ALL; input float32 NCHW; timing = session.run only",
        "weights": "random (seed 0); latency does not depend on them",
        "mish": "latency: Mish exported in the sigmoid form (export_onnx default, "
        "fast_mish=True); latency_exact_mish: the exporter's Softplus/Tanh/Mul",
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "notes": (
            f"median and p90 over 'repeats' runs after 'warmup' runs; {FULL} uses fewer "
            "repeats (about 1 s a run). Shared 2-core machine: other jobs may add noise."
        ),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
