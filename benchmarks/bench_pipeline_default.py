"""Wall time of the default pipeline on the synthetic data set, on this machine.

Runs ``slimspect pipeline run`` with every setting at its default (``PipelineConfig()``,
the file configs/pipeline.example.yaml; ``--config`` runs another YAML) on a local Ray
with every CPU and an embedded S3 store (SeaweedFS) in a temporary folder, a fresh
signing key, then records each stage's seconds, the whole run's, the bench table (the
compression rows) and what was published.

    python benchmarks/bench_pipeline_default.py      # about 35-45 min on 2 cores

Writes ``--out`` (default ``benchmarks/results/pipeline-default.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from _machine import describe, loadavg, run_facts

RESULTS = ROOT / "benchmarks" / "results" / "pipeline-default.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="a pipeline YAML (default: the defaults)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    import ray

    from slimspect.embedded.s3 import SeaweedS3
    from slimspect.signing import generate_keypair
    from trainer.compress.table import ROW_KEYS
    from trainer.pipeline.config import PipelineConfig
    from trainer.pipeline.runner import run_pipeline

    config = PipelineConfig.load(args.config) if args.config else PipelineConfig()
    started, load_before = time.perf_counter(), loadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-default-"))
    try:
        keys = generate_keypair(work / "keys")
        with SeaweedS3(work / "s3", startup_timeout_s=60) as s3:
            settings = s3.store_settings(
                bucket="bench", signing_key=keys.private_key, trusted_keys=[keys.public_key]
            )
            try:
                result = run_pipeline(config, settings, workdir=work / "runs")
            finally:
                ray.shutdown()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    figures = {
        "what": "the default pipeline (every setting at its default) on the synthetic data set",
        "config": config.model_dump(mode="json"),
        "total_s": round(result.seconds, 1),
        "stages": [
            {"stage": o.stage, "status": o.status, "seconds": round(o.seconds, 1)}
            for o in result.outcomes
        ],
        "rows": [{k: row.get(k) for k in ROW_KEYS} for row in result.rows],
        "default_format": (result.records.get("export") or {}).get("default_format"),
        "published": result.published,
        "machine": describe(f"ray {ray.__version__}"),
        **run_facts(load_before, started),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"default pipeline: {result.seconds / 60:.1f} min")
    for s in figures["stages"]:
        print(f"  {s['stage']:9s} {s['status']:7s} {s['seconds']:8.1f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
