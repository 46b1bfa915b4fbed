"""The station agent's figures (issue 6): frames per second per core, capture-to-ack latency,
spool write rate and recovery time. Three measurements, each selectable by its flag (none
given: all three):

``--fps``: frames per second of the edge runtime's real per-frame path
(:meth:`edge_agent.runtime.Detector.detect`: letterbox + normalise, ``session.run``, the
shared post-processing with NMS) on synthetic camera frames (``--frame``, gray, from the
agent's own synthetic camera), ONNX Runtime with 1 and 2 intra-op threads, the compressed
model vs the unpruned one at the same input size, measured side by side in one run. With 1
thread the two models alternate frame by frame (both sessions open); with 2, in 5 rounds of
blocks with one session open at a time, order reversed every round (an open idle
session's spinning workers slow the other: ``trainer.compress.quantize.interleaved_latency``,
same scheme). Models: by default ``yolov4-s`` at ``--size`` px, 6 classes, random weights
(seed 0) with BatchNorm statistics calibrated on synthetic images, exported on the fly
(``trainer.export.export_onnx``); "compressed" is the same model pruned with
``trainer.compress.layer_prune.prune`` (``--layers`` weakest residual blocks, then
``--percent`` % of channels by BN gamma, rounded to 8). A random-init network has every
gamma at 1, so nothing would rank: the gammas are first drawn uniform(0, 1) (seed 0), a
stand-in for what sparsity training leaves. ``--compressed PATH.onnx`` times that file
instead (a real compressed model), against ``yolov4-s`` unpruned at its input size,
channels and classes. Latency depends on the graph, not the weights, but post-processing
depends on how many boxes pass the score threshold: the mean detections per frame are
recorded.

``--latency``: capture-to-ack latency at a steady ``--camera-fps`` per camera,
``--cameras`` cameras: a private ``redis-server`` on a free port (no persistence; the Redis
on 6379 is never touched), the real aggregator (``slimspect aggregator serve``, its own
process), and the real agent (:class:`edge_agent.agent.Agent`, in this process, as the
tests run it) with synthetic cameras (live: a frame is skipped when inspection falls
behind, and skips are counted; ``--camera-frame``), the default uplink settings, and the
spool with ``synchronous`` FULL (the default) then NORMAL, one agent run each. Latency of
an event = the time the agent receives its batch's ack (the uplink then deletes the batch
from the spool: ``Spool.remove`` is the ack path's only caller, and a subclass of Spool,
put in place of ``edge_agent.agent.Spool`` for this run only, stamps the time on entry)
minus its ``captured_at_ms`` (wall clock at capture, 1 ms resolution). Only frames
captured in the ``--seconds`` window after ``--warmup-seconds`` count; the agent runs on
for a tail so that they are all acked. ``--latency-model auto`` (default) uses the
compressed yolov4-s when the 1-thread fps measured (or probed) leaves 20 % headroom over
cameras x fps, else the tests' tiny model (yolov4-n, 64 px gray), and says which.

``--spool``: durable append rate of :class:`edge_agent.spool.Spool` (one transaction per
event, as the agent does) with ``synchronous=FULL`` (the default) and ``NORMAL``,
alternating, ``--write-events`` events per repeat into a fresh spool; then recovery after a
restart with ``--events`` events spooled: a child process fills the spool (NORMAL, for
speed; the file is the same) and either exits without closing it (as after kill -9: the
WAL is not checkpointed) or closes it (a clean stop); a fresh process per repeat times
what the agent does before its first send: open the spool (WAL, schema, counting depth
and bytes), read the cameras' cursors, the uplink's backlog count, and the first batch
(``take``: 64 events, which marks them attempted in a transaction). Cold: the copy's
pages dropped from the page cache first (``posix_fadvise DONTNEED`` on the spool's own
files only), as after a reboot; warm: as after a process restart.

    python benchmarks/bench_edge.py [--fps] [--latency] [--spool] [--repeats 30]
        [--seconds 30] [--events 100000] [--compressed PATH.onnx]

    # a small run, to check the script (not for the results); building and pruning
    # yolov4-s (--fps, --latency-model auto) costs about 30 s of CPU whatever the sizes:
    python benchmarks/bench_edge.py --repeats 4 --warmup 1 --seconds 3 \
        --warmup-seconds 1 --events 3000 --write-events 100 --spool-repeats 2 --out /tmp/e.json

Prints the figures and writes ``benchmarks/results/edge.json`` (the sections measured;
sections of an earlier run that were not measured again are kept, each with its time).
Run it with nothing else on the machine: the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from _machine import describe, loadavg

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "edge.json"
CLASSES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
TINY_CLASSES = ("scratch", "patch")  # the agent tests' tiny model
THRESHOLDS = {"score": 0.25, "iou": 0.45}
SPOOL_MAX_BYTES = 256 * 2**20  # the agent's default spool.max_bytes


def machine() -> str:
    import onnxruntime as ort

    return describe(f"{platform.system()} {platform.release()}", f"onnxruntime {ort.__version__}")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def r2(x: float) -> float:
    return round(float(x), 2)


# --- models -------------------------------------------------------------------------------


@dataclass
class Built:
    """An exported model, what it is, and the manifest the runtime needs."""

    tag: str
    path: Path
    description: str
    input_size: int
    channels: int
    class_names: tuple[str, ...]
    params: int | None = None


def onnx_params(path: Path) -> int:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return int(sum(int(np.prod(t.dims)) for t in graph.initializer))


def onnx_meta(path: Path):
    import onnx

    from slimspect.onnx_meta import DetectorMetadata

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return DetectorMetadata.from_props(props, source=str(path))


def calibrated(name: str, size: int, channels: int, classes, *, spread_gammas: bool):
    """The variant (seed 0), gammas optionally uniform(0, 1), BN statistics from synthetic
    images (train-mode passes, as benchmarks/bench_int8.py does)."""
    import torch

    from trainer.data.synth import render
    from trainer.model import build, get_spec

    spec = get_spec(name, input_size=size, in_channels=channels, class_names=classes)
    model = build(spec, seed=0)
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            if spread_gammas:
                with torch.no_grad():
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen))
            m.reset_running_stats()
            m.momentum = None
    images = np.stack([render(100, i, size).image for i in range(8)])
    x = torch.from_numpy(images[:, None].astype(np.float32) / 255.0)
    if channels == 3:
        x = x.repeat(1, 3, 1, 1)
    model.train()
    with torch.no_grad():
        for batch in x.split(4):
            model(batch)
    return model.eval()


_PAIRS: dict[tuple, tuple[Built, Built, dict[str, Any]]] = {}


def build_pair(args, tmp: Path) -> tuple[Built, Built, dict[str, Any]]:
    """(compressed, unpruned) ONNX files and how they were made (built once per run)."""
    key = (args.compressed, args.size, args.percent, args.layers)
    if key not in _PAIRS:
        _PAIRS[key] = _build_pair(args, tmp)
    return _PAIRS[key]


def _build_pair(args, tmp: Path) -> tuple[Built, Built, dict[str, Any]]:
    import torch

    from trainer.export import export_onnx

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.compressed is not None:
        meta = onnx_meta(args.compressed)
        if meta.input_width != meta.input_height:
            raise SystemExit(f"{args.compressed}: non-square input, not supported here")
        size, channels, classes = meta.input_width, meta.channels, meta.class_names
        compressed = Built(
            "compressed",
            Path(args.compressed),
            f"given file {args.compressed}",
            size,
            channels,
            tuple(classes),
            onnx_params(Path(args.compressed)),
        )
        how = {"compressed_source": "file", "compressed_file": str(args.compressed)}
        spread = False
    else:
        size, channels, classes = args.size, 1, CLASSES
        spread = True
    t0 = time.perf_counter()
    base = calibrated("yolov4-s", size, channels, classes, spread_gammas=spread)
    unpruned = Built(
        "unpruned",
        tmp / "yolov4-s.onnx",
        f"yolov4-s at {size} px, {channels} channel(s), {len(classes)} classes, unpruned",
        size,
        channels,
        tuple(classes),
        base.spec.num_params(),
    )
    export_onnx(base, unpruned.path)
    if args.compressed is None:
        from trainer.compress.layer_prune import prune

        result = prune(base, percent=args.percent, layers=args.layers)
        compressed = Built(
            "compressed",
            tmp / "yolov4-s-pruned.onnx",
            f"yolov4-s pruned on the fly: {args.layers} residual blocks, then {args.percent:g} % "
            "of channels by BN gamma (round to 8)",
            size,
            channels,
            tuple(classes),
            result.params_after,
        )
        export_onnx(result.model.eval(), compressed.path)
        how = {
            "compressed_source": "pruned on the fly (trainer.compress.layer_prune.prune)",
            "prune": {
                "percent": args.percent,
                "layers": args.layers,
                "blocks_dropped": list(result.blocks),
                "channels_removed_fraction": None
                if result.plan is None
                else r2(result.plan.removed_fraction),
                "params_before": result.params_before,
                "params_after": result.params_after,
                "gammas": "uniform(0, 1), seed 0 (random init has every gamma at 1)",
            },
        }
    print(
        f"models ready in {time.perf_counter() - t0:.0f} s: unpruned "
        f"{unpruned.path.stat().st_size / 2**20:.1f} MiB, compressed "
        f"{compressed.path.stat().st_size / 2**20:.1f} MiB",
        flush=True,
    )
    return compressed, unpruned, how


def build_tiny(tmp: Path) -> Built:
    """The agent tests' model: yolov4-n at 64 px, 1 channel, 2 classes (seed 0)."""
    from trainer.export import export_onnx

    model = calibrated("yolov4-n", 64, 1, TINY_CLASSES, spread_gammas=False)
    path = tmp / "tiny.onnx"
    export_onnx(model, path)
    return Built(
        "tiny",
        path,
        "yolov4-n at 64 px, 1 channel, 2 classes (the agent tests' tiny model)",
        64,
        1,
        TINY_CLASSES,
        model.spec.num_params(),
    )


def manifest_of(built: Built, version: str = "1.0.0", golden=None):
    from slimspect.manifest import manifest_for_file

    return manifest_for_file(
        built.path,
        name=f"bench-{built.tag}",
        version=version,
        format="onnx-fp32",
        input={
            "width": built.input_size,
            "height": built.input_size,
            "channels": built.channels,
            "letterbox": True,
        },
        class_names=list(built.class_names),
        thresholds=THRESHOLDS,
        golden=golden,
    )


def detector(built: Built, threads: int):
    """A Detector on the file as it is (no signature: the runtime does not verify)."""
    from edge_agent.runtime import Detector
    from edge_agent.settings import RuntimeSettings
    from slimspect.store import FetchedModel

    fetched = FetchedModel(
        manifest=manifest_of(built),
        key_id="",
        directory=built.path.parent,
        model_path=built.path,
        manifest_path=built.path.parent / "manifest.json",
        signature_path=built.path.parent / "manifest.sig",
        golden_path=None,
    )
    return Detector(fetched, RuntimeSettings(intra_op_threads=threads, inter_op_threads=1))


def camera_frames(width: int, height: int, count: int = 16) -> list[np.ndarray]:
    """Frames of the agent's synthetic camera (seed 0, defects on 20 % of them)."""
    from edge_agent.cameras import SyntheticSource

    source = SyntheticSource(width, height, frames=None, defect_rate=0.2, seed=0)
    return [source.read().image for _ in range(count)]


def parse_frame(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


# --- 1. frames per second -----------------------------------------------------------------


def time_models(models: list[Built], threads: int, frames, warmup: int, repeats: int):
    """Per model: full detect() ms, ORT ms, detections; alternating as the docstring says."""
    times: dict[str, dict[str, list[float]]] = {
        m.tag: {"frame_ms": [], "ort_ms": [], "detections": []} for m in models
    }

    def one(det, tag: str, i: int) -> None:
        image = frames[i % len(frames)]
        t0 = time.perf_counter()
        inf = det.detect(image)
        times[tag]["frame_ms"].append((time.perf_counter() - t0) * 1000.0)
        times[tag]["ort_ms"].append(inf.inference_ms)
        times[tag]["detections"].append(len(inf.detections))

    if threads == 1:
        dets = {m.tag: detector(m, threads) for m in models}
        for i in range(warmup):
            for d in dets.values():
                d.detect(frames[i % len(frames)])
        for i in range(repeats):
            order = list(dets.items()) if i % 2 == 0 else list(dets.items())[::-1]
            for tag, d in order:
                one(d, tag, i)
        del dets
    else:
        n_rounds = max(1, min(5, repeats))
        shares = [repeats // n_rounds + (r < repeats % n_rounds) for r in range(n_rounds)]
        done = 0
        for r, share in enumerate(shares):
            for m in models if r % 2 == 0 else models[::-1]:
                d = detector(m, threads)
                for i in range(warmup):
                    d.detect(frames[i % len(frames)])
                for i in range(share):
                    one(d, m.tag, done + i)
                del d
            done += share
    out = {}
    for tag, t in times.items():
        median = statistics.median(t["frame_ms"])
        out[tag] = {
            "frame_ms_median": r2(median),
            "frame_ms_p90": r2(pct(t["frame_ms"], 90)),
            "ort_ms_median": r2(statistics.median(t["ort_ms"])),
            "pre_post_ms_median": r2(
                statistics.median(np.subtract(t["frame_ms"], t["ort_ms"]).tolist())
            ),
            "fps": r2(1000.0 / median),
            "fps_per_core": r2(1000.0 / median / threads),
            "detections_per_frame_mean": r2(statistics.fmean(t["detections"])),
            "runs": len(t["frame_ms"]),
        }
    return out


def bench_fps(args, tmp: Path) -> dict[str, Any]:
    compressed, unpruned, how = build_pair(args, tmp)
    frames = camera_frames(*parse_frame(args.frame))
    models = [compressed, unpruned]
    before = loadavg()
    by_threads = {}
    for t in (1, 2):
        res = time_models(models, t, frames, args.warmup, args.repeats)
        res["ratio_fps_compressed_vs_unpruned"] = round(
            res["compressed"]["fps"] / res["unpruned"]["fps"], 3
        )
        by_threads[str(t)] = res
        print(
            f"fps, {t} thread(s): compressed {res['compressed']['fps']:.1f} "
            f"({res['compressed']['fps_per_core']:.1f}/core, "
            f"{res['compressed']['frame_ms_median']:.1f} ms), unpruned "
            f"{res['unpruned']['fps']:.1f} ({res['unpruned']['fps_per_core']:.1f}/core, "
            f"{res['unpruned']['frame_ms_median']:.1f} ms): x"
            f"{res['ratio_fps_compressed_vs_unpruned']:.2f}",
            flush=True,
        )
    return {
        "measured_at": now_iso(),
        "path": "edge_agent.runtime.Detector.detect: preprocess (letterbox, normalise) + "
        "ONNX Runtime session.run + slimspect.detection.postprocess (decode, NMS)",
        "session": "CPUExecutionProvider, intra_op_num_threads=N, inter_op_num_threads=1, "
        "ORT_ENABLE_ALL (edge_agent.runtime)",
        "alternation": "1 thread: frame by frame, both sessions open, order swapped every "
        "frame; 2 threads: 5 rounds of blocks, one session open at a time, order reversed "
        "each round, warm-up per block",
        "frames": f"{args.frame} gray, the agent's synthetic camera (seed 0, 20 % with a "
        "drawn defect), 16 frames cycled",
        "thresholds": THRESHOLDS,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "models": {
            m.tag: {
                "what": m.description,
                "input": f"{m.input_size}x{m.input_size}x{m.channels}",
                "params": m.params,
                "onnx_mib": round(m.path.stat().st_size / 2**20, 2),
            }
            for m in models
        },
        **how,
        "weights": "random (seed 0), BatchNorm statistics calibrated on 8 synthetic images; "
        "speed does not depend on the weights except through detections per frame",
        "threads": by_threads,
        "loadavg_before": before,
        "loadavg_after": loadavg(),
    }


# --- 2. capture-to-ack latency --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[str]:
    """A private redis-server on a free loopback port (no RDB, no AOF); yields its URL."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    argv += ["no", "--dir", str(directory)]
    log = (directory / "redis.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start (see {log.name})") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def aggregator(directory: Path, redis_url: str) -> Iterator[int]:
    """``slimspect aggregator serve`` on a free port (its own process: no shared GIL)."""
    script = Path(sys.executable).with_name("slimspect")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "slimspect.cli"]
    port = free_port()
    argv = cmd + ["aggregator", "serve", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--redis-url", redis_url, "--metrics-port", "0"]
    log = (directory / "aggregator.log").open("wb")
    env = {**os.environ, "SLIMSPECT_AGGREGATOR_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    "the aggregator exited:\n"
                    + (directory / "aggregator.log").read_text(errors="replace")[-2000:]
                )
            with socket.socket() as s, contextlib.suppress(OSError):
                s.connect(("127.0.0.1", port))
                break
            if time.monotonic() > deadline:
                raise SystemExit("the aggregator did not listen within 60 s")
            time.sleep(0.1)
        yield port
    finally:
        stop(proc)
        log.close()


def signed_model_dir(built: Built, folder: Path, keys: Path, threads: int) -> Path:
    """A model copy as ``model.path`` takes it: manifest (with a golden image and the
    detections the runtime gives on it), its signature, the model."""
    import cv2

    from slimspect.detection import to_records
    from slimspect.manifest import sha256_file
    from slimspect.signing import load_private_key, sign

    folder.mkdir(parents=True)
    shutil.copy2(built.path, folder / "model.onnx")
    golden = folder / "golden.png"
    cv2.imwrite(str(golden), camera_frames(160, 120, 1)[0])
    local = Built(**{**built.__dict__, "path": folder / "model.onnx"})
    found = detector(local, threads).detect(cv2.imread(str(golden), cv2.IMREAD_UNCHANGED))
    sha, _ = sha256_file(golden)
    manifest = manifest_of(
        local,
        golden={
            "sha256": sha,
            "expected": [d.model_dump() for d in to_records(found.detections, built.class_names)],
        },
    )
    data = manifest.canonical_json()
    (folder / "manifest.json").write_bytes(data)
    (folder / "manifest.sig").write_bytes(sign(data, load_private_key(keys / "signing.key")))
    return folder


def timed_spool_class():
    """A Spool that stamps when each event is taken for sending and when its ack arrives."""
    from edge_agent.spool import Spool

    class TimedSpool(Spool):
        sent: ClassVar[dict[int, tuple[str, int, float]]] = {}
        acked: ClassVar[dict[int, float]] = {}
        spooled: ClassVar[list[tuple[str, int]]] = []

        def append(self, event, *, position=None):
            TimedSpool.spooled.append((event.camera, event.captured_at_ms))
            return super().append(event, position=position)

        def take(self, *, after_id, max_events, max_bytes):
            rows = super().take(after_id=after_id, max_events=max_events, max_bytes=max_bytes)
            now = time.time()
            for row in rows:
                TimedSpool.sent.setdefault(
                    row.id, (row.event.camera, row.event.captured_at_ms, now)
                )
            return rows

        def remove(self, ids):
            ids = list(ids)
            now = time.time()  # the uplink calls remove() only for an acknowledged batch
            for i in ids:
                TimedSpool.acked.setdefault(i, now)
            return super().remove(ids)

    return TimedSpool


def choose_latency_model(args, fps_result: dict | None, tmp: Path) -> tuple[Built, str]:
    need = args.cameras * args.camera_fps * 1.2
    if args.latency_model == "tiny":
        return build_tiny(tmp), "asked for (--latency-model tiny)"
    compressed, unpruned, _ = build_pair(args, tmp)
    chosen = compressed if args.latency_model in ("auto", "compressed") else unpruned
    if args.latency_model != "auto":
        return chosen, f"asked for (--latency-model {args.latency_model})"
    t = str(args.latency_threads)
    if fps_result is not None and t in fps_result["threads"]:
        fps = fps_result["threads"][t]["compressed"]["fps"]
        source = "measured by --fps in this run"
    else:
        frames = camera_frames(*parse_frame(args.camera_frame))
        fps = time_models([compressed], args.latency_threads, frames, 3, 15)["compressed"]["fps"]
        source = "probed (15 frames)"
    if fps >= need:
        return (
            compressed,
            f"compressed yolov4-s: {fps:.1f} fps at {t} thread(s) ({source}) >= {need:g}",
        )
    return build_tiny(tmp), (
        f"the compressed yolov4-s cannot keep {args.cameras} x {args.camera_fps:g} FPS: "
        f"{fps:.1f} fps at {t} thread(s) ({source}) < {need:g} (cameras x fps + 20 % "
        "headroom), so the tests' tiny model runs instead"
    )


async def one_agent_run(args, settings, agent_mod):
    """Runs the agent with a TimedSpool; returns what it stamped, the window, skips in it."""
    timed = timed_spool_class()
    original = agent_mod.Spool
    agent_mod.Spool = timed
    try:
        agent = agent_mod.Agent(settings)
        task = asyncio.create_task(agent.run())
        started = asyncio.ensure_future(agent.started.wait())
        await asyncio.wait({task, started}, timeout=180, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        if not agent.started.is_set():
            raise SystemExit("the agent did not start within 180 s")
        await agent.slot.ready.wait()
        reg = agent.metrics.registry

        def skips() -> dict[str, float]:
            name = "slimspect_agent_frames_skipped_total"
            return {
                c.id: reg.get_sample_value(name, {"camera": c.id}) or 0.0 for c in settings.cameras
            }

        t0 = time.time()
        window = (t0 + args.warmup_seconds, t0 + args.warmup_seconds + args.seconds)
        await asyncio.sleep(args.warmup_seconds)
        first = skips()
        await asyncio.sleep(args.seconds)
        skipped = {c: n - first[c] for c, n in skips().items()}
        await asyncio.sleep(2.0 + 2 * settings.uplink.batch_max_delay_s)  # the window's acks
        agent.stop()
        await asyncio.wait_for(task, 60)
    finally:
        agent_mod.Spool = original
    return timed.sent, timed.acked, timed.spooled, window, skipped


async def latency_scenarios(args, data: dict, redis_url: str, modes: list[str]):
    """One agent run per spool mode, one after the other on ONE event loop (grpc.aio)."""
    import redis.asyncio as aioredis

    import edge_agent.agent as agent_mod
    from edge_agent.settings import load_settings
    from services.aggregator.auth import RedisTokenStore

    out = {}
    for mode in modes:
        station = f"bench-edge-{mode.lower()}"
        client = aioredis.Redis.from_url(redis_url)
        try:
            token = await RedisTokenStore(client).add(station)
        finally:
            await client.aclose()
        values = {
            **data,
            "station": station,
            "token": token,
            "state_dir": f"{data['state_dir']}-{mode.lower()}",
            "spool": {"synchronous": mode},
        }
        settings = load_settings(None, **values)
        out[mode] = (settings, *await one_agent_run(args, settings, agent_mod))
    return out


def latency_figures(args, settings, sent, acked, spooled, window, skipped) -> dict[str, Any]:
    start, end = window
    in_window = {i: v for i, v in sent.items() if start * 1000 <= v[1] < end * 1000}
    produced = [c for c, ms in spooled if start * 1000 <= ms < end * 1000]
    lat_ms, to_send_ms, to_ack_ms = [], [], []
    per_camera: dict[str, int] = {}
    for i, (camera, captured_ms, sent_at) in in_window.items():
        if i not in acked:
            continue
        per_camera[camera] = per_camera.get(camera, 0) + 1
        lat_ms.append(acked[i] * 1000 - captured_ms)
        to_send_ms.append(sent_at * 1000 - captured_ms)
        to_ack_ms.append((acked[i] - sent_at) * 1000)
    if not lat_ms:
        raise SystemExit("no event of the window was acked: see the aggregator log")
    return {
        "spool_synchronous": settings.spool.synchronous,
        "events": len(lat_ms),
        "events_per_s_per_camera": {c: r2(n / args.seconds) for c, n in sorted(per_camera.items())},
        "frames_per_s_per_camera": {
            c: r2((produced.count(c) + skipped[c]) / args.seconds) for c in sorted(skipped)
        },
        "frames_skipped_in_window": skipped,
        "events_not_acked": len(produced) - len(lat_ms),
        "capture_to_ack_ms": {
            "p50": r2(pct(lat_ms, 50)),
            "p90": r2(pct(lat_ms, 90)),
            "p99": r2(pct(lat_ms, 99)),
            "max": r2(max(lat_ms)),
        },
        "capture_to_send_ms": {"p50": r2(pct(to_send_ms, 50)), "p99": r2(pct(to_send_ms, 99))},
        "send_to_ack_ms": {"p50": r2(pct(to_ack_ms, 50)), "p99": r2(pct(to_ack_ms, 99))},
    }


def bench_latency(args, tmp: Path, fps_result: dict | None) -> dict[str, Any]:
    from edge_agent.settings import UplinkSettings
    from slimspect.signing import generate_keypair

    built, why = choose_latency_model(args, fps_result, tmp)
    print(f"latency model: {built.tag} ({why})", flush=True)
    generate_keypair(tmp / "keys")
    model_dir = signed_model_dir(built, tmp / "model-copy", tmp / "keys", args.latency_threads)
    w, h = parse_frame(args.camera_frame)
    modes = [m.strip().upper() for m in args.latency_synchronous.split(",")]
    uplink: dict[str, Any] = {}
    if args.batch_max_delay is not None:
        uplink["batch_max_delay_s"] = args.batch_max_delay
    before = loadavg()
    with redis_server(tmp) as redis_url, aggregator(tmp, redis_url) as port:
        data = {
            "state_dir": str(tmp / "state"),
            "uplink": {"endpoint": f"127.0.0.1:{port}", **uplink},
            "store": {
                "endpoint": "127.0.0.1:9",  # never used: the model comes from model.path
                "bucket": "slimspect",
                "trusted_keys": [str(tmp / "keys" / "signing.pub")],
            },
            "model": {"path": str(model_dir)},
            "runtime": {"intra_op_threads": args.latency_threads, "inter_op_threads": 1},
            "cameras": [
                {
                    "id": f"cam{i}",
                    "type": "synthetic",
                    "fps": args.camera_fps,
                    "width": w,
                    "height": h,
                    "seed": i,
                }
                for i in range(args.cameras)
            ],
            "metrics": {"port": None},
            "log_level": "WARNING",
        }
        runs = asyncio.run(latency_scenarios(args, data, redis_url, modes))
    u = UplinkSettings(endpoint="127.0.0.1:1", **uplink)
    result: dict[str, Any] = {
        "measured_at": now_iso(),
        "model": built.description,
        "model_choice": why,
        "runtime_threads": args.latency_threads,
        "cameras": args.cameras,
        "camera_fps": args.camera_fps,
        "camera": f"synthetic (live: skips when inspection falls behind), {args.camera_frame} gray",
        "seconds": args.seconds,
        "warmup_seconds": args.warmup_seconds,
        "uplink": {
            "batch_max_events": u.batch_max_events,
            "batch_max_delay_s": u.batch_max_delay_s,
            "max_inflight_batches": u.max_inflight_batches,
        },
        "setup": "agent in this process (edge_agent.agent.Agent), aggregator "
        "(`slimspect aggregator serve`) and a private redis-server each their own process, "
        "all on this machine over loopback; one agent run per spool.synchronous, in turn; "
        "latency = ack received by the agent (Spool.remove entry, stamped by a subclass) - "
        "captured_at_ms; capture_to_send: until the event was taken into a batch "
        "(queue, inference, spool write, batching wait)",
        "runs": {},
    }
    for mode, (settings, sent, acked, spooled, window, skipped) in runs.items():
        fig = latency_figures(args, settings, sent, acked, spooled, window, skipped)
        result["runs"][mode] = fig
        c = fig["capture_to_ack_ms"]
        print(
            f"capture-to-ack, spool {mode}: p50 {c['p50']:.1f} ms, p99 {c['p99']:.1f} ms over "
            f"{fig['events']} events ({fig['events_per_s_per_camera']} events/s per camera, "
            f"skipped {fig['frames_skipped_in_window']}, not acked {fig['events_not_acked']}); "
            f"to send p50 {fig['capture_to_send_ms']['p50']:.1f} ms, send to ack p50 "
            f"{fig['send_to_ack_ms']['p50']:.1f} ms",
            flush=True,
        )
    result["loadavg_before"] = before
    result["loadavg_after"] = loadavg()
    return result


# --- 3. spool -------------------------------------------------------------------------------


class EventMix:
    """Agent-like events: 80 % clean, 20 % with 1-3 detections and one JPEG-sized crop
    (2-6 KiB) on the first; 640x480, two cameras, reproducible from the seed."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.crops = [b"\xff\xd8\xff\xe0" + self.rng.bytes(2048 + 64 * i) for i in range(64)]

    def event(self, i: int, base_ms: int):
        from edge_agent.inspector import uuid7
        from slimspect.v1 import inspection_pb2 as pb

        rng = self.rng
        detections = []
        if rng.random() < 0.2:
            for k in range(int(rng.integers(1, 4))):
                x, y = float(rng.uniform(0, 500)), float(rng.uniform(0, 380))
                c = int(rng.integers(0, len(CLASSES)))
                detections.append(
                    pb.Detection(
                        box=pb.Box(x1=x, y1=y, x2=x + 80, y2=y + 60),
                        score=float(rng.uniform(0.25, 1)),
                        class_id=c,
                        class_name=CLASSES[c],
                        crop_jpeg=self.crops[int(rng.integers(0, 64))] if k == 0 else b"",
                    )
                )
        ms = base_ms + i * 17
        return pb.InspectionEvent(
            event_id=uuid7(ms),
            station="bench-edge-st1",
            camera=f"cam{i % 2}",
            captured_at_ms=ms,
            model_name="steel-yolo",
            model_version="1.2.0",
            image_width=640,
            image_height=480,
            detections=detections,
            inference_ms=float(rng.uniform(10, 40)),
            frame_count=1,
        )


def spool_files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def drop_cache(path: Path) -> None:
    """Evicts the spool's files (only them) from the page cache: fsync, then DONTNEED."""
    for p in spool_files(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def write_rate(directory: Path, synchronous: str, count: int, events) -> float:
    from edge_agent.spool import Spool

    path = directory / f"write-{synchronous}-{time.monotonic_ns()}.sqlite"
    spool = Spool(path, max_bytes=SPOOL_MAX_BYTES, synchronous=synchronous)
    try:
        t0 = time.perf_counter()
        for e in events[:count]:
            spool.append(e)
        elapsed = time.perf_counter() - t0
    finally:
        spool.close()
        for p in spool_files(path):
            p.unlink()
    return count / elapsed


def child(argv: list[str]) -> None:
    """The spool's child processes: ``fill PATH N crash|clean`` and ``open PATH``."""
    from edge_agent.spool import Spool

    what, path = argv[0], Path(argv[1])
    if what == "fill":
        n, how = int(argv[2]), argv[3]
        mix, base = EventMix(1), int(time.time() * 1000)
        spool = Spool(path, max_bytes=SPOOL_MAX_BYTES, synchronous="NORMAL")
        for i in range(n):
            spool.append(mix.event(i, base))
        stats = spool.stats()
        print(json.dumps({"depth": stats.depth, "bytes": stats.bytes}), flush=True)
        if how == "clean":
            spool.close()
        os._exit(0)  # crash: no close, the WAL is left as a kill -9 leaves it
    if what == "open":
        t0 = time.perf_counter()
        spool = Spool(path, max_bytes=SPOOL_MAX_BYTES)  # the agent's default: FULL
        t1 = time.perf_counter()
        for camera in ("cam0", "cam1"):
            spool.cursor(camera)
        backlog = spool.backlog(after_id=0)
        t2 = time.perf_counter()
        rows = spool.take(after_id=0, max_events=64, max_bytes=4 * 2**20)
        t3 = time.perf_counter()
        depth = spool.stats().depth
        spool.close()
        print(
            json.dumps(
                {
                    "open_ms": (t1 - t0) * 1000,
                    "cursors_backlog_ms": (t2 - t1) * 1000,
                    "first_batch_ms": (t3 - t2) * 1000,
                    "ready_ms": (t3 - t0) * 1000,
                    "depth": depth,
                    "backlog": backlog,
                    "batch": len(rows),
                }
            ),
            flush=True,
        )
        return
    raise SystemExit(f"unknown child command {what!r}")


def run_child(*argv: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *argv],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def copy_spool(source: Path, target: Path) -> None:
    for p in spool_files(target):
        p.unlink()
    for p in spool_files(source):
        shutil.copyfile(p, target.parent / p.name.replace(source.name, target.name))
    drop_cache(target)  # fsyncs; the cold case keeps it dropped, the warm one reads it back


def filesystem_of(path: Path) -> str:
    best, fs = "", "?"
    real = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _dev, mount, kind, *_ = line.split()
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                best
            ):
                best, fs = mount, kind
    return f"{fs} ({best})"


def bench_spool(args, tmp: Path) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="spool-", dir=args.spool_dir or tmp))
    before = loadavg()
    mix, base = EventMix(0), int(time.time() * 1000)
    events = [mix.event(i, base) for i in range(args.write_events)]
    sizes = [e.ByteSize() for e in events]
    rates: dict[str, list[float]] = {"FULL": [], "NORMAL": []}
    for r in range(args.spool_repeats):
        for mode in ("FULL", "NORMAL") if r % 2 == 0 else ("NORMAL", "FULL"):
            rates[mode].append(write_rate(directory, mode, args.write_events, events))
    write = {
        mode: {
            "events_per_s_median": r2(statistics.median(v)),
            "events_per_s_min": r2(min(v)),
            "events_per_s_max": r2(max(v)),
        }
        for mode, v in rates.items()
    }
    write["ratio_normal_vs_full"] = round(
        write["NORMAL"]["events_per_s_median"] / write["FULL"]["events_per_s_median"], 2
    )
    print(
        f"spool append: FULL {write['FULL']['events_per_s_median']:.0f} events/s, NORMAL "
        f"{write['NORMAL']['events_per_s_median']:.0f} events/s ({args.write_events} events x "
        f"{args.spool_repeats})",
        flush=True,
    )

    recovery: dict[str, Any] = {}
    for how in ("crash", "clean"):
        pristine = directory / f"filled-{how}.sqlite"
        t0 = time.perf_counter()
        filled = run_child("fill", str(pristine), str(args.events), how)
        fill_s = time.perf_counter() - t0
        files = {
            p.name.replace(pristine.name, "spool"): p.stat().st_size for p in spool_files(pristine)
        }
        runs: dict[str, list[dict]] = {"cold": [], "warm": []}
        target = directory / "spool.sqlite"
        for r in range(args.spool_repeats):
            for cache in ("cold", "warm") if r % 2 == 0 else ("warm", "cold"):
                copy_spool(pristine, target)
                if cache == "warm":
                    for p in spool_files(target):
                        p.read_bytes()  # into the page cache, as after a process restart
                runs[cache].append(run_child("open", str(target)))
        for p in spool_files(pristine) + spool_files(target):
            p.unlink()
        recovery[how] = {
            "filled": filled,
            "fill_s": r2(fill_s),
            "files_bytes": files,
            **{
                cache: {
                    key: r2(statistics.median(x[key] for x in v))
                    for key in ("ready_ms", "open_ms", "cursors_backlog_ms", "first_batch_ms")
                }
                | {"ready_ms_max": r2(max(x["ready_ms"] for x in v))}
                for cache, v in runs.items()
            },
            "check": {"depth": runs["cold"][0]["depth"], "batch": runs["cold"][0]["batch"]},
        }
        print(
            f"recovery after {'kill -9' if how == 'crash' else 'a clean stop'} with "
            f"{filled['depth']} events: ready in {recovery[how]['cold']['ready_ms']:.0f} ms cold, "
            f"{recovery[how]['warm']['ready_ms']:.0f} ms warm",
            flush=True,
        )
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "measured_at": now_iso(),
        "filesystem": filesystem_of(directory.parent),
        "events": "80 % clean, 20 % with 1-3 detections and one 2-6 KiB crop; "
        f"mean {statistics.fmean(sizes):.0f} B serialized",
        "write": {
            "events_per_repeat": args.write_events,
            "repeats": args.spool_repeats,
            "how": "Spool.append, one transaction per event (as the agent), WAL, fresh spool "
            "per repeat, FULL and NORMAL alternating",
            **write,
        },
        "recovery": {
            "events": args.events,
            "repeats": args.spool_repeats,
            "how": "a fresh process per repeat: Spool() (FULL), cursor() of 2 cameras, "
            "backlog(0), take(64 events, 4 MiB); ready_ms = all of it. crash: filled then "
            "os._exit without close (WAL left); clean: closed (checkpointed). cold: the "
            "copy's pages dropped from the page cache (posix_fadvise), warm: read in first",
            **recovery,
        },
        "loadavg_before": before,
        "loadavg_after": loadavg(),
    }


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--fps", action="store_true", help="frames per second per core")
    p.add_argument("--latency", action="store_true", help="capture-to-ack latency")
    p.add_argument("--spool", action="store_true", help="spool write rate and recovery")
    g = p.add_argument_group("fps")
    g.add_argument("--compressed", type=Path, help="a compressed model (.onnx) to time")
    g.add_argument("--size", type=int, default=224, help="input px (without --compressed)")
    g.add_argument("--percent", type=float, default=50.0, help="channels pruned, %%")
    g.add_argument("--layers", type=int, default=2, help="residual blocks pruned")
    g.add_argument("--frame", default="640x480", help="camera frame WxH")
    g.add_argument("--repeats", type=int, default=30, help="timed frames per model and threads")
    g.add_argument("--warmup", type=int, default=5)
    g = p.add_argument_group("latency")
    g.add_argument("--seconds", type=float, default=30.0, help="measured window")
    g.add_argument("--warmup-seconds", type=float, default=3.0)
    g.add_argument("--cameras", type=int, default=2)
    g.add_argument("--camera-fps", type=float, default=30.0)
    g.add_argument(
        "--camera-frame",
        default="320x240",
        help="synthetic camera WxH (its default; drawing 640x480 frames costs ~6 ms of CPU "
        "each here, CPU a real camera would not take from the agent)",
    )
    g.add_argument(
        "--latency-model", choices=("auto", "compressed", "unpruned", "tiny"), default="auto"
    )
    g.add_argument(
        "--latency-threads",
        type=int,
        default=1,
        help="intra-op threads of the agent (1: the other core serves cameras, aggregator "
        "and Redis, which share this machine)",
    )
    g.add_argument(
        "--latency-synchronous",
        default="FULL,NORMAL",
        help="spool.synchronous of the agent runs, in turn (FULL is the agent's default)",
    )
    g.add_argument(
        "--batch-max-delay", type=float, help="uplink.batch_max_delay_s (default: the agent's)"
    )
    g = p.add_argument_group("spool")
    g.add_argument("--events", type=int, default=100_000, help="events spooled for recovery")
    g.add_argument("--write-events", type=int, default=2000, help="appends per write repeat")
    g.add_argument("--spool-repeats", type=int, default=5)
    g.add_argument("--spool-dir", type=Path, help="where the spools go (default: a temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if not (args.fps or args.latency or args.spool):
        args.fps = args.latency = args.spool = True

    t0 = time.perf_counter()
    data: dict[str, Any] = {}
    if args.out.exists():
        with contextlib.suppress(ValueError):
            data = json.loads(args.out.read_text())
    data["machine"] = machine()
    fps_result = None
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        if args.fps:
            fps_result = data["fps"] = bench_fps(args, _mk(tmp, "fps"))
        if args.latency:
            data["latency"] = bench_latency(args, _mk(tmp, "latency"), fps_result)
        if args.spool:
            data["spool"] = bench_spool(args, _mk(tmp, "spool"))
    data["seconds_last_run"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.out} in {data['seconds_last_run']:.0f} s")


def _mk(tmp: str, name: str) -> Path:
    path = Path(tmp) / name
    path.mkdir()
    return path


if __name__ == "__main__":
    main()
