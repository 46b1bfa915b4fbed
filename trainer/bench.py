"""CPU inference latency of an exported model in ONNX Runtime, and the model's size and cost.

:func:`ort_latency` times what a station does per frame: one ``session.run`` on a batch of
one, with a fixed thread budget (``intra_op_num_threads``; one inter-op thread, sequential
execution, full graph optimisation). Pre- and post-processing are not included.
:func:`model_profile` gives parameters, fp32 MiB and GFLOPs (:mod:`trainer.model.profile`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from trainer.model.profile import count_params, fp32_mib, gflops


def _hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, (int, np.integer)):
        return int(input_size), int(input_size)
    h, w = input_size
    return int(h), int(w)


def ort_session_options(threads: int):
    """SessionOptions of a timing run: ``threads`` intra-op, 1 inter-op, sequential, ALL."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def ort_latency(
    onnx_path: str | Path,
    threads: int,
    input_size: int | Sequence[int],
    channels: int,
    warmup: int = 5,
    repeats: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Time ``repeats`` single-image runs after ``warmup`` untimed ones.

    ``input_size``: one int (square) or ``(H, W)``; ``channels``: the model's input
    channels. The input is one fixed random (1, channels, H, W) float32 image in [0, 1].

    Returns ``{"median_ms", "p90_ms", "mean_ms", "min_ms", "fps" (1000 / median),
    "threads", "repeats", "warmup"}``.
    """
    import onnxruntime as ort

    if threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"need threads >= 1, repeats >= 1, warmup >= 0; got {threads}, {repeats}, {warmup}"
        )
    h, w = _hw(input_size)
    session = ort.InferenceSession(
        str(onnx_path), ort_session_options(threads), providers=["CPUExecutionProvider"]
    )
    feed = {
        session.get_inputs()[0].name: np.random.default_rng(seed).random(
            (1, channels, h, w), dtype=np.float32
        )
    }
    for _ in range(warmup):
        session.run(None, feed)
    times_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times_ms.append((time.perf_counter() - start) * 1000.0)
    median = statistics.median(times_ms)
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(times_ms, 90)),
        "mean_ms": statistics.fmean(times_ms),
        "min_ms": min(times_ms),
        "fps": 1000.0 / median if median > 0 else float("inf"),
        "threads": int(threads),
        "repeats": int(repeats),
        "warmup": int(warmup),
    }


def model_profile(
    model: nn.Module,
    onnx_path: str | Path | None = None,
    input_size: int | Sequence[int] | None = None,
) -> dict[str, Any]:
    """Size and cost of ``model`` (a spec-built detector, or any conv net with ``input_size``).

    Returns ``{"params", "size_mb", "onnx_mb", "gflops", "input_size"}``: ``size_mb`` is
    the fp32 state (parameters plus BatchNorm statistics, MiB), ``onnx_mb`` the size of the
    exported file in MiB when ``onnx_path`` is given (BatchNorm folded into the convs, so a
    little smaller), else None; GFLOPs for one image at ``input_size`` (default: the spec's).
    """
    spec = getattr(model, "spec", None)
    if input_size is None and spec is not None:
        input_size = spec.input_size
    return {
        "params": count_params(model),
        "size_mb": fp32_mib(model),
        "onnx_mb": Path(onnx_path).stat().st_size / 2**20 if onnx_path is not None else None,
        "gflops": gflops(model, input_size),
        "input_size": input_size,
    }
