"""Channel-ranking criteria side by side: what each prunes within the same mAP50 budget.

From one sparse-trained checkpoint, for each ``--keep-by`` criterion: the largest channel
share whose mAP50 before fine-tuning stays within ``--max-map-drop`` (the prune stage's
search, no layer pruning), then the pruned model's parameters, GFLOPs and mAP50; then every
pruned model and the unpruned one timed side by side in ONNX Runtime (1 and 2 threads,
models alternating: :func:`trainer.compress.table.stage_rows`).

    python benchmarks/bench_prune_criteria.py --checkpoint runs/.../sparse/weights/best.pt \\
        --data runs/.../data/data.yaml [--max-map-drop 0.05] [--keep-by gamma,flops]

Writes ``--out`` (default ``benchmarks/results/prune-criteria.json``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from _machine import describe, loadavg, run_facts

RESULTS = ROOT / "benchmarks" / "results" / "prune-criteria.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a sparse-trained .pt")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-map-drop", type=float, default=0.05)
    parser.add_argument("--keep-by", default="gamma,flops")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from trainer.compress.prune_run import prune_run
    from trainer.compress.table import stage_rows
    from trainer.data.formats import read_dataset

    torch.set_num_threads(2)
    started, load_before = time.perf_counter(), loadavg()
    data = read_dataset(args.data)
    criteria = [c.strip() for c in args.keep_by.split(",") if c.strip()]
    found: dict[str, dict] = {}
    plan = [("unpruned", {"checkpoint": args.checkpoint})]
    with tempfile.TemporaryDirectory(prefix="bench-prune-criteria-") as tmp:
        for keep_by in criteria:
            run_dir = Path(tmp) / keep_by
            summary = prune_run(
                args.checkpoint, run_dir, percent=None, layers=0,
                max_map_drop=args.max_map_drop, round_to=8, min_keep_frac=0.1,
                keep_by=keep_by, data=data, split=args.split, log=lambda line: None,
            )  # fmt: skip
            found[keep_by] = {
                "percent": summary["percent"],
                "map50_before": summary["map50_before"],
                "map50_after_prune": summary["map50_after_prune"],
            }
            plan.append((keep_by, {"checkpoint": run_dir / "weights" / "pruned.pt"}))
            print(f"{keep_by}: percent {summary['percent']:.1f}, mAP50 "
                  f"{summary['map50_before']:.4f} -> {summary['map50_after_prune']:.4f}")  # fmt: skip
        rows = stage_rows(plan, data=args.data, split=args.split, repeats=args.repeats)
    base = rows[0]
    for row in rows:
        row["gflops_kept"] = round(row["gflops"] / base["gflops"], 4)
        for t in (1, 2):
            row[f"speedup_{t}t"] = round(base[f"latency_ms_{t}t"] / row[f"latency_ms_{t}t"], 3)
        print(f"  {row['stage']:9s} {row['params']:>10,} params  {row['gflops']:.3f} GFLOPs "
              f"({row['gflops_kept']:.0%})  {row['latency_ms_1t']:.1f} / {row['latency_ms_2t']:.1f}"
              f" ms  x{row['speedup_1t']:.2f} / x{row['speedup_2t']:.2f}  mAP50 {row['map50']:.4f}")  # fmt: skip
    figures = {
        "what": "channel-ranking criteria within one mAP50 budget, before fine-tuning",
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "max_map_drop": args.max_map_drop,
        "search": found,
        "rows": rows,
        "machine": describe(f"torch {torch.__version__}"),
        **run_facts(load_before, started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
