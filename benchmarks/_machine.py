"""What every benchmark records about the machine it ran on (scripts here import it as a
sibling module: they run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(*extras: str) -> str:
    """``"<cpu>; <n> logical CPUs; Python x.y.z; <extras>"``."""
    parts = [cpu_model(), f"{os.cpu_count()} logical CPUs", f"Python {platform.python_version()}"]
    return "; ".join([*parts, *extras])


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages: a shared machine's noise, recorded beside figures."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_facts(loadavg_before: list[float] | None, started: float) -> dict:
    """What a result file says of the conditions of its run: this process's niceness, the
    load average before and after, and the seconds since ``started`` (perf_counter)."""
    import time

    return {
        "pid_nice": os.nice(0),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "seconds": round(time.perf_counter() - started, 1),
    }
