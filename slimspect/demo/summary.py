"""The demo's closing summary: the bench table, defects per class and station, the fleet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["bench_table", "defects_table", "print_summary", "stations_table"]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def defects_table(stats: dict[str, Any], title: str) -> Table:
    """``/v1/stats`` grouped by class or station, with a total row."""
    table = Table(title=title)
    for column in ("group", "frames", "defect frames", "defects", "defect rate"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group in [*stats["groups"], {**stats["total"], "key": "total"}]:
        table.add_row(
            group["key"],
            str(group["frames"]),
            "-" if group.get("defect_frames") is None else str(group["defect_frames"]),
            str(group["defects"]),
            _rate(group.get("defect_rate")),
        )
    return table


def stations_table(stations: list[dict[str, Any]]) -> Table:
    table = Table(title="stations")
    for column in ("station", "status", "model", "version", "FPS"):
        table.add_column(column)
    for s in stations:
        fps = (s.get("fleet") or {}).get("fps")
        table.add_row(
            s["station"],
            s["status"],
            s.get("model_name") or "-",
            s.get("model_version") or "-",
            "-" if fps is None else f"{fps:.1f}",
        )
    return table


def bench_table(rows: list[dict[str, Any]], title: str) -> Table:
    """The pipeline's bench rows (``bench.json``), with size and speed against the first."""
    table = Table(title=title)
    for column in ("stage", "params (M)", "MiB", "ms 1t", "ms 2t", "mAP50", "size x", "speed x"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    base = rows[0] if rows else {}

    def num(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    def ratio(row: dict[str, Any], key: str) -> str:
        a, b = base.get(key), row.get(key)
        return f"{a / b:.2f}" if a and b else "-"

    for row in rows:
        table.add_row(
            row["stage"],
            "-" if row.get("params") is None else f"{row['params'] / 1e6:.3f}",
            num(row, "size_mb", ".2f"),
            num(row, "latency_ms_1t", ".1f"),
            num(row, "latency_ms_2t", ".1f"),
            num(row, "map50", ".4f"),
            ratio(row, "size_mb"),
            ratio(row, "latency_ms_2t"),
        )
    return table


def print_summary(
    console: Console,
    *,
    bench_json: Path | None,
    by_class: dict[str, Any],
    by_station: dict[str, Any],
    stations: list[dict[str, Any]],
    dashboard: str,
    state_dir: Path,
    keep_up: bool = True,
) -> None:
    if bench_json is not None and bench_json.exists():
        bench = json.loads(bench_json.read_text())
        console.print(bench_table(bench["rows"], "the model, stage by stage"))
        console.print(
            f"published format: {bench.get('default_format')} ({bench.get('default_reason')}); "
            f"the whole table: {bench_json.with_suffix('.md')}"
        )
    console.print(defects_table(by_class, "defects per class (last 24 h)"))
    console.print(defects_table(by_station, "defects per station (last 24 h)"))
    console.print(stations_table(stations))
    console.print(f"dashboard: [bold]{dashboard}[/]")
    if keep_up:
        console.print(
            f"the stack keeps running; use it from a shell with `source {state_dir}/env.sh`, "
            f"stop it with `slimspect down --state-dir {state_dir}`"
        )
