"""fp32 vs INT8 (ORT static quantization, QDQ) on CPU: latency, size, raw-map SQNR.

For ``yolov4-n`` and ``yolov4-s`` at 256 px gray (6 classes): build (seed 0), calibrate
the BatchNorm statistics with train-mode forward passes on synthetic defect images (a
random-init network otherwise has no realistic activation ranges to quantize), export
(``trainer.export.export_onnx``), quantize with :func:`trainer.compress.quantize.quantize_int8`
(its defaults: U8S8, per-channel weights, Conv only, MinMax on ``--calib`` synthetic
images, prediction convs kept fp32), then:

* latency: batch-1 ``session.run``, 1 and 2 intra-op threads, median of ``--repeats``
  runs after ``--warmup``, the formats of a model alternating in one loop
  (:func:`trainer.compress.quantize.interleaved_latency`, ``ort_latency``'s session
  options): run by run with 1 thread; with 2, in 5 rounds of blocks with one session
  open at a time (an idle open session's spinning workers would slow the other);
* with ``--variants`` (on by default for yolov4-n): the same timing loop also runs
  S8S8 (int8 activations) and U8S8 with every op ORT can quantize, to show which
  activation type / op set is fastest on this CPU;
* size of both files, SQNR (dB) and max/mean |error| of the raw maps p3/p4/p5 and the
  detection agreement after the shared post-processing on ``--images`` held-out
  synthetic images (:func:`trainer.compress.quantize.compare`).

ACCURACY: the weights are random, so mAP means nothing here and SQNR is pessimistic
(random convs pass quantization noise on undamped). The mAP50 cost of INT8 comes from the
compression pipeline on a trained model (``evaluate_onnx`` + ``choose_default``).

    python benchmarks/bench_int8.py [--repeats 20] [--warmup 5] [--calib 32]
        [--variants n|all|none] [--models yolov4-n,yolov4-s]

Prints a table and writes ``benchmarks/results/int8.json``. The machine is shared: the load
average before and after is recorded, and alternating runs share the noise fairly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from _machine import describe, loadavg
from rich.console import Console
from rich.table import Table

from trainer.compress.quantize import (
    compare,
    cpu_int8_features,
    interleaved_latency,
    quantize_int8,
    write_json,
)
from trainer.data.synth import render
from trainer.export import export_onnx
from trainer.model import build, get_spec

RESULTS = Path(__file__).resolve().parent / "results" / "int8.json"
SIZE = 256
THREADS = (1, 2)
CALIB_SEED, EVAL_SEED = 100, 200  # synthetic image sets: calibration, comparison


def machine() -> str:
    return describe(f"{platform.system()} {platform.release()}", f"torch {torch.__version__}")



def synthetic(seed: int, count: int) -> list[np.ndarray]:
    return [render(seed, i, SIZE).image for i in range(count)]


def calibrated_model(name: str, images: list[np.ndarray]):
    """The variant at 256 px, seed 0, BatchNorm statistics from ``images`` (train mode)."""
    spec = get_spec(name, input_size=SIZE)
    model = build(spec, seed=0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
    x = torch.from_numpy(np.stack(images)[:, None].astype(np.float32) / 255.0)
    model.train()
    with torch.no_grad():
        for batch in x.split(4):
            model(batch)
    return model.eval()


def op_counts(path: Path) -> dict[str, int]:
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    return {k: ops.count(k) for k in ("QuantizeLinear", "DequantizeLinear", "Conv")}


def fused_convs(path: Path) -> dict[str, int]:
    """QLinearConv vs float Conv after ORT's session optimisation (what actually runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(Path(tmp, "opt.onnx"))
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    return {"QLinearConv": ops.count("QLinearConv"), "Conv": ops.count("Conv")}


def noise_control(fp32: Path, images: list[np.ndarray]) -> dict[str, float]:
    """SQNR of the fp32 model's own maps when its input moves by up to half an 8-bit step.

    The reference for the int8 SQNR: a random-weight network amplifies small input
    changes, so a low int8 SQNR with an equally low control is the model, not the
    quantizer. Uniform noise in [-0.5, 0.5] / 255, seed 0; SQNR over all images.
    """
    from slimspect.detection import preprocess

    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outs = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    sig = dict.fromkeys(outs, 0.0)
    noise = dict.fromkeys(outs, 0.0)
    for img in images:
        x, _ = preprocess(img, SIZE, channels=1)
        xn = (x + rng.uniform(-0.5 / 255, 0.5 / 255, x.shape)).astype(np.float32)
        for o, a, b in zip(
            outs, session.run(outs, {name: x}), session.run(outs, {name: xn}), strict=True
        ):
            sig[o] += float(np.sum(np.square(a, dtype=np.float64)))
            noise[o] += float(np.sum(np.square(a.astype(np.float64) - b)))
    return {o: round(10 * np.log10(sig[o] / max(noise[o], 1e-300)), 2) for o in outs}


def r2(d: dict) -> dict:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


def bench_model(name: str, args, tmp: Path, with_variants: bool) -> dict:
    calib = synthetic(CALIB_SEED, args.calib)
    model = calibrated_model(name, calib)
    fp32 = tmp / f"{name}.onnx"
    export_onnx(model, fp32)
    del model
    print(f"{name}: exported {fp32.stat().st_size / 2**20:.2f} MiB", flush=True)

    files = {"fp32": fp32}
    reports = {}
    configs = {"int8": {}}
    if with_variants:
        configs["int8 S8S8"] = {"activation_type": "int8"}
        configs["int8 all ops"] = {"op_types": None}
    for tag, kw in configs.items():
        out = tmp / f"{name}.{tag.replace(' ', '_')}.onnx"
        t0 = time.perf_counter()
        rep = quantize_int8(fp32, out, calib, **kw)
        print(f"  {tag}: {rep.summary()} in {time.perf_counter() - t0:.1f} s", flush=True)
        files[tag], reports[tag] = out, rep

    held_out = synthetic(EVAL_SEED, args.images)
    accuracy = {}
    for tag in reports:
        c = compare(fp32, files[tag], held_out, threads=())
        accuracy[tag] = {
            "raw": {o: r2(v) for o, v in c["raw"].items()},
            "min_sqnr_db": round(c["min_sqnr_db"], 2),
            "detections": c["detections"],
        }

    control = noise_control(fp32, held_out)
    print(f"  control (fp32, +-0.5 LSB input noise) SQNR dB: {control}", flush=True)

    latency: dict[str, dict[str, dict]] = {}
    for t in THREADS:
        lat = interleaved_latency(
            files, t, SIZE, 1, warmup=args.warmup, repeats=args.repeats, seed=0
        )
        latency[str(t)] = {k: r2(v) for k, v in lat.items()}
        line = ", ".join(f"{k} {v['median_ms']:.1f}" for k, v in lat.items())
        print(f"  {t} thread(s), median ms: {line}", flush=True)

    out = {
        "model": name,
        "input": f"{SIZE}x{SIZE} gray",
        "fp32_bytes": fp32.stat().st_size,
        "control_sqnr_db": control,
        "formats": {},
    }
    for tag, path in files.items():
        entry = {
            "bytes": path.stat().st_size,
            "mib": round(path.stat().st_size / 2**20, 3),
            "latency_ms": {
                t: {
                    "median": latency[t][tag]["median_ms"],
                    "p90": latency[t][tag]["p90_ms"],
                    "min": latency[t][tag]["min_ms"],
                }
                for t in latency
            },
            "speedup_vs_fp32": {
                t: round(latency[t]["fp32"]["median_ms"] / latency[t][tag]["median_ms"], 3)
                for t in latency
            },
            "graph_ops": op_counts(path),
            "ort_fused": fused_convs(path),
        }
        if tag in reports:
            rep = reports[tag]
            entry["settings"] = {
                "quant_format": rep.quant_format,
                "activation_type": rep.activation_type,
                "weight_type": rep.weight_type,
                "per_channel": rep.per_channel,
                "op_types": list(rep.op_types) or "all",
                "method": rep.method,
                "calibration_images": rep.calibration_images,
                "excluded": list(rep.excluded),
            }
            entry["size_ratio"] = round(rep.size_ratio, 2)
            entry.update(accuracy[tag])
        out["formats"][tag] = entry
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--models", default="yolov4-n,yolov4-s")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--calib", type=int, default=32, help="calibration images")
    p.add_argument("--images", type=int, default=8, help="held-out images for SQNR")
    p.add_argument("--variants", choices=("n", "all", "none"), default="n")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.repeats < 20:
        p.error("--repeats must be >= 20 (median of at least 20 runs)")
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    before = loadavg()
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        for name in args.models.split(","):
            variants = args.variants == "all" or (args.variants == "n" and name == "yolov4-n")
            results.append(bench_model(name, args, Path(tmp), variants))
    data = {
        "machine": machine(),
        "cpu_int8_flags": cpu_int8_features(),
        "onnxruntime": ort.__version__,
        "batch": 1,
        "session": "CPUExecutionProvider, intra_op_num_threads=N, inter_op_num_threads=1, "
        "sequential, ORT_ENABLE_ALL (trainer.bench.ort_session_options); timing = "
        "session.run only; the formats of a model alternate (1 thread: run by run; 2 threads: "
        "5 rounds of blocks, one session open at a time, warm-up per block)",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "weights": "random (seed 0), BatchNorm statistics calibrated on synthetic images; "
        "latency and size do not depend on the weights, accuracy does: mAP needs a "
        "trained model and comes from the compression pipeline",
        "sqnr": f"raw maps on {args.images} held-out synthetic images, 20*log10(|fp32| / "
        "|fp32 - int8|) over all images",
        "loadavg_before": before,
        "loadavg_after": loadavg(),
        "seconds": round(time.perf_counter() - t0, 1),
        "models": results,
    }
    write_json(args.out, data)

    table = Table(
        title=f"fp32 vs INT8, {SIZE} px gray, batch 1, median ms of {args.repeats} "
        "(alternating runs); random weights: SQNR is not accuracy"
    )
    cols = (
        "model",
        "format",
        "MiB",
        "1 thr ms",
        "2 thr ms",
        "x 1 thr",
        "x 2 thr",
        "SQNR p3/p4/p5 dB",
        "control dB",
        "det. agree",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("model", "format") else "right")
    for res in results:
        ctrl = "/".join(f"{res['control_sqnr_db'][o]:.1f}" for o in ("p3", "p4", "p5"))
        for tag, e in res["formats"].items():
            lat = e["latency_ms"]
            sq = (
                "/".join(f"{e['raw'][o]['sqnr_db']:.1f}" for o in ("p3", "p4", "p5"))
                if "raw" in e
                else "-"
            )
            agree = e.get("detections", {}).get("agreement")
            table.add_row(
                res["model"],
                tag,
                f"{e['mib']:.2f}",
                f"{lat['1']['median']:.1f}",
                f"{lat['2']['median']:.1f}",
                f"{e['speedup_vs_fp32']['1']:.2f}",
                f"{e['speedup_vs_fp32']['2']:.2f}",
                sq,
                ctrl if tag == "fp32" else "",
                "-" if agree is None else f"{agree:.2f}",
            )
    Console(width=150).print(table)
    print(f"flags: {json.dumps(data['cpu_int8_flags'])}; load {before} -> {data['loadavg_after']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
