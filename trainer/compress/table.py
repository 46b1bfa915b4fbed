"""The compression table: one row per stage (size, cost, CPU latency, mAP), as the paper's.

    from trainer.compress.table import stage_row, write_table, print_table
    rows = [
        stage_row("baseline", checkpoint="runs/train/weights/best.pt", data="data/steel"),
        stage_row("int8", onnx="runs/compress/export/model-int8.onnx", data="data/steel"),
    ]
    write_table(rows, "bench.json", "bench.md", extra={"data": "data/steel"})

What a row measures
-------------------
* ``params``: parameters of the model's spec (the torch model's, BatchNorm included; the
  ONNX file of a row without a checkpoint carries its spec in ``slimspect.spec``).
* ``size_mb``: MiB (2**20 bytes) of the exported ONNX file: the fp32 file for a checkpoint
  (exported to a temporary file; BatchNorm folded) or an fp32 ONNX, the int8 file for an
  int8 ONNX. This is what a station downloads.
* ``gflops``: 2 * conv MACs of one image at the spec's input size (:mod:`trainer.model.profile`).
* ``latency_ms_1t``, ``latency_ms_2t``: median ms of ``repeats`` single-image ONNX Runtime
  runs after ``warmup`` untimed ones, 1 and 2 intra-op threads; the rows of one table are
  timed side by side (:func:`stage_rows`: models alternating, so the ratios hold on a
  noisy machine). Latency is ALWAYS measured on an ONNX file, never on torch: a checkpoint row is
  exported first, so every row is timed the way a station runs it. ``fps_2t`` = 1000 /
  ``latency_ms_2t``.
* ``map50``, ``map50_95``: on ``split`` of ``data``. ONNX rows through ONNX Runtime
  (:func:`trainer.compress.quantize.evaluate_onnx`), checkpoint rows with
  :func:`trainer.validate.validate`; both use the one post-processing of the stations
  (score 0.001, NMS IoU 0.6). None when no data set is given.

The Markdown table adds ratios against the FIRST row (the baseline): ``size x`` = first
size / row size (how many times smaller), ``speed-up x`` = first 2-thread latency / row
2-thread latency, ``mAP50 delta`` = (row mAP50 - first mAP50) in points (x100).
"""

from __future__ import annotations

import math
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ROW_KEYS",
    "machine_info",
    "print_table",
    "ratios",
    "stage_row",
    "stage_rows",
    "table_markdown",
    "write_table",
]

ROW_KEYS = (
    "stage",
    "params",
    "size_mb",
    "gflops",
    "latency_ms_1t",
    "latency_ms_2t",
    "fps_2t",
    "map50",
    "map50_95",
)


def _spec_of_onnx(meta: Mapping[str, Any]):
    from trainer.model import YoloSpec

    spec = meta.get("slimspect.spec")
    if not isinstance(spec, Mapping):
        raise ValueError(  # noqa: TRY004 - a bad file, not a bad argument type
            "the ONNX file carries no slimspect.spec metadata (not a slimspect export)"
        )
    return YoloSpec.from_dict(spec)


def _gflops_of_spec(spec) -> float:
    import torch

    from trainer.model import build, gflops

    with torch.device("meta"):
        model = build(spec)  # shapes only: gflops runs the forward on the meta device
    return gflops(model)


def _export_for_timing(model, meta: Mapping[str, Any], path: Path) -> Path:
    from trainer.export import export_onnx, json_safe

    kept, _ = json_safe(meta)
    return export_onnx(model, path, metadata=kept).path


def stage_row(
    stage: str,
    *,
    checkpoint: str | Path | None = None,
    onnx: str | Path | None = None,
    data: str | Path | None,
    split: str = "val",
    threads: Sequence[int] = (1, 2),
    repeats: int = 20,
    warmup: int = 5,
) -> dict[str, Any]:
    """Measure one stage; see the module docstring. Give ``checkpoint`` or ``onnx`` (or both:
    then the ONNX file is the one timed, sized and evaluated, and the checkpoint only
    gives the parameter count and GFLOPs).

    Returns a dict with exactly :data:`ROW_KEYS` for the default ``threads=(1, 2)``
    (``latency_ms_<t>t`` for each thread count, ``fps_<t>t`` for the largest).
    Raises FileNotFoundError for a missing file, ValueError for a file that is not a
    slimspect checkpoint/export or a data set that does not fit the model.
    """
    source = {"checkpoint": checkpoint, "onnx": onnx}
    return stage_rows(
        [(stage, source)], data=data, split=split, threads=threads, repeats=repeats,
        warmup=warmup,
    )[0]  # fmt: skip


def stage_rows(
    plan: Sequence[tuple[str, Mapping[str, str | Path | None]]],
    *,
    data: str | Path | None,
    split: str = "val",
    threads: Sequence[int] = (1, 2),
    repeats: int = 20,
    warmup: int = 5,
    known: Mapping[str, Mapping[str, Any]] | None = None,
    on_row: Any = None,
) -> list[dict[str, Any]]:
    """Rows of several stages (``plan``: ``(stage, {"checkpoint": ..., "onnx": ...})``), as
    :func:`stage_row` measures one, with their latencies taken side by side: for each
    thread count every model is timed in one :func:`trainer.compress.quantize.
    interleaved_latency` pass (alternating models, so a noisy moment of a shared machine
    falls on all of them, not on one row), after every row's size and mAP.

    ``known``: rows measured before (a resumed stage): their size, cost and mAP are taken
    as they are, only the latency is measured again (with the others). ``on_row(row)`` is
    called with each row once its size, cost and mAP are known (before the timing).
    """
    from trainer.compress.quantize import interleaved_latency

    if not threads or any(int(t) < 1 for t in threads):
        raise ValueError(f"threads must be positive thread counts, got {threads!r}")
    known = known or {}
    rows: list[dict[str, Any]] = []
    timing: dict[tuple[tuple[int, int], int], dict[str, Path]] = {}
    with tempfile.TemporaryDirectory(prefix="slimspect-bench-") as tmp:
        for i, (stage, source) in enumerate(plan):
            row, onnx_path, hw, channels = _measured_row(
                stage, **source, data=data, split=split, export_to=Path(tmp) / f"{i}.onnx",
                known=known.get(stage),
            )  # fmt: skip
            rows.append(row)
            timing.setdefault((hw, channels), {})[stage] = onnx_path
            if on_row is not None:
                on_row(row)
        counts = sorted({int(t) for t in threads})
        for t in counts:
            for (hw, channels), models in timing.items():
                measured = interleaved_latency(
                    models, t, hw, channels, warmup=warmup, repeats=repeats
                )
                for row in rows:
                    if row["stage"] in measured:
                        row[f"latency_ms_{t}t"] = float(measured[row["stage"]]["median_ms"])
                        if t == counts[-1]:  # the fps of the largest thread count only
                            row[f"fps_{t}t"] = float(measured[row["stage"]]["fps"])
    for row in rows:  # the mAPs last, in ROW_KEYS' order
        row["map50"], row["map50_95"] = row.pop("map50"), row.pop("map50_95")
    return rows


def _measured_row(
    stage: str,
    *,
    checkpoint: str | Path | None = None,
    onnx: str | Path | None = None,
    data: str | Path | None,
    split: str,
    export_to: Path,
    known: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], Path, tuple[int, int], int]:
    """``(row without latency, ONNX file to time, (H, W), channels)`` of one stage; a
    checkpoint is exported to ``export_to`` for timing."""
    from trainer.export import read_onnx_metadata

    if checkpoint is None and onnx is None:
        raise ValueError(f"{stage}: give a checkpoint or an ONNX file")
    for path in (checkpoint, onnx):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{stage}: file not found: {path}")

    model = meta = None
    if checkpoint is not None:
        from trainer.model import load_checkpoint

        model, meta = load_checkpoint(checkpoint)
        model.eval()
    if onnx is None:
        assert model is not None and meta is not None
        onnx_path = _export_for_timing(model, meta, export_to)
    else:
        onnx_path = Path(onnx)
    onnx_meta = read_onnx_metadata(onnx_path)
    spec = model.spec if model is not None else _spec_of_onnx(onnx_meta)
    geometry = onnx_meta.get("slimspect.input") or {}
    hw = (
        int(geometry.get("height", spec.input_size)),
        int(geometry.get("width", spec.input_size)),
    )
    channels = int(geometry.get("channels", spec.in_channels))
    if known is not None:
        row = {k: v for k, v in known.items() if not k.startswith(("latency_ms_", "fps_"))}
        return {**row, "stage": stage}, onnx_path, hw, channels
    row: dict[str, Any] = {
        "stage": stage,
        "params": int(spec.num_params()),
        "size_mb": onnx_path.stat().st_size / 2**20,
        "gflops": float(_gflops_of_spec(spec)),
    }
    map50 = map50_95 = None
    if data is not None:
        if onnx is not None:
            from trainer.compress.quantize import evaluate_onnx

            result = evaluate_onnx(onnx_path, data, split)
        else:
            from trainer.validate import validate

            result = validate(model, data, split)
        map50, map50_95 = float(result.map50), float(result.map50_95)
    row["map50"], row["map50_95"] = map50, map50_95
    return row, onnx_path, hw, channels


# --------------------------------------------------------------------------------------
# Ratios and output
# --------------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def ratios(row: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, float | None]:
    """``{"size_x", "speedup_x", "map50_delta_pts"}`` of ``row`` against ``ref`` (the baseline):
    ref size / row size, ref 2-thread latency / row 2-thread latency, (row - ref) mAP50 x 100.
    None where a value is missing or zero."""
    size, rsize = _num(row.get("size_mb")), _num(ref.get("size_mb"))
    lat, rlat = _num(row.get("latency_ms_2t")), _num(ref.get("latency_ms_2t"))
    m, rm = _num(row.get("map50")), _num(ref.get("map50"))
    return {
        "size_x": rsize / size if size and rsize is not None else None,
        "speedup_x": rlat / lat if lat and rlat is not None else None,
        "map50_delta_pts": (m - rm) * 100 if m is not None and rm is not None else None,
    }


def _fmt(v: Any, spec: str, missing: str = "-") -> str:
    f = _num(v)
    return missing if f is None else format(f, spec)


_COLUMNS = (
    "stage",
    "params (M)",
    "size (MiB)",
    "GFLOPs",
    "1 thread (ms)",
    "2 threads (ms)",
    "FPS (2 t)",
    "mAP50",
    "mAP50-95",
    "size x smaller",
    "speed-up x",
    "mAP50 delta (pts)",
)


def _cells(row: Mapping[str, Any], ref: Mapping[str, Any]) -> list[str]:
    r = ratios(row, ref)
    delta = r["map50_delta_pts"]
    return [
        str(row.get("stage")),
        _fmt(_num(row.get("params")) and _num(row.get("params")) / 1e6, ".3f"),
        _fmt(row.get("size_mb"), ".2f"),
        _fmt(row.get("gflops"), ".3f"),
        _fmt(row.get("latency_ms_1t"), ".1f"),
        _fmt(row.get("latency_ms_2t"), ".1f"),
        _fmt(row.get("fps_2t"), ".1f"),
        _fmt(row.get("map50"), ".4f"),
        _fmt(row.get("map50_95"), ".4f"),
        _fmt(r["size_x"], ".2f"),
        _fmt(r["speedup_x"], ".2f"),
        "-" if delta is None else f"{delta:+.2f}",
    ]


def table_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a Markdown table (ratios against the first row)."""
    if not rows:
        raise ValueError("no rows")
    ref = rows[0]
    lines = [
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(_COLUMNS) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(_cells(row, ref)) + " |" for row in rows]
    note = (
        f"Ratios against `{ref.get('stage')}`: size x = its size / the row's, speed-up x = its "
        "2-thread latency / the row's, mAP50 delta in points. Latency: median ONNX Runtime "
        "CPU time of one image (batch 1), pre- and post-processing excluded."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_table(
    rows: Sequence[Mapping[str, Any]],
    json_path: str | Path | None,
    md_path: str | Path | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``{"rows": [...], **extra}`` as JSON (inf/nan as strings) and the Markdown table."""
    from trainer.compress.quantize import write_json

    extra = dict(extra or {})
    if "rows" in extra:
        raise ValueError("extra may not hold a 'rows' key")
    if json_path is not None:
        write_json(json_path, {"rows": [dict(r) for r in rows], **extra})
    if md_path is not None:
        md_path = Path(md_path)
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(table_markdown(rows))


_SHORT = (
    "stage",
    "params",
    "MiB",
    "GFLOPs",
    "ms 1t",
    "ms 2t",
    "FPS 2t",
    "mAP50",
    "mAP50-95",
    "size x",
    "speed x",
    "\u0394mAP50",
)


def print_table(rows: Sequence[Mapping[str, Any]], console=None, title: str | None = None) -> None:
    """The rows as a rich table (ratios against the first row; short headers, explained in
    the caption, so that it fits a terminal)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not rows:
        console.print("no rows")
        return
    table = Table(
        title=title or "compression, stage by stage",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for i, col in enumerate(_SHORT):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for row in rows:
        cells = _cells(row, rows[0])
        params = _num(row.get("params"))
        cells[1] = "-" if params is None else f"{params / 1e6:.2f}M"
        table.add_row(*cells)
    table.caption = (
        f"MiB: ONNX file; ms: ORT CPU median, batch 1, 1 or 2 threads; size x, speed x (2 "
        f"threads), \u0394mAP50 (points): against {rows[0].get('stage')}"
    )
    console.print(table)


def machine_info() -> dict[str, Any]:
    """Where the latencies were measured: CPU model, cores, load average, library versions."""
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg": load,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
