"""Helpers every benchmark script shares: results JSON, tables, machine facts, peak memory."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
#: The 1-minute load when the benchmark process started (recorded beside the load at the end).
LOAD_AT_START = os.getloadavg()[0]
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "avx512_bf16", "amx_int8", "amx_bf16", "neon", "asimd", "asimddp", "i8mm", "sve")


def cpu() -> dict[str, Any]:
    """The CPU model and the SIMD flags that decide which kernels run (int8, FAISS)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and model in ("", platform.machine(),
                                                                           platform.processor()):
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    except OSError:
        pass
    return {"model": model, "arch": platform.machine(),
            "simd": [flag for flag in SIMD_FLAGS if flag in flags]}


def commit() -> str:
    """The git commit the benchmark ran at (with ``+dirty`` when the tree had changes)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


#: The commit the benchmark started at (the tree may move on while it runs).
COMMIT_AT_START = commit()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import numpy as np

    info: dict[str, Any] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "platform": platform.platform(), "numpy": np.__version__,
                            "when": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": COMMIT_AT_START,
                            "cpu": cpu(), "threads": _threads(),
                            "load_1min": {"before": LOAD_AT_START, "after": os.getloadavg()[0]}}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    return info


def _threads() -> dict[str, Any]:
    """Thread settings in force: the environment's and torch's."""
    threads: dict[str, Any] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
                               if k in os.environ}
    try:
        import torch

        threads["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    return threads


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_results(name: str, payload: dict[str, Any], *, quick: bool | None = None,
                  seeds: list[int] | None = None) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically, with the conditions it ran under:
    the machine facts (commit, CPU model and SIMD flags, threads, 1-minute load before and after)
    and, when given, whether the run was quick or full and its seeds."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    conditions: dict[str, Any] = {}
    if quick is not None:
        conditions["mode"] = "quick" if quick else "full"
    if seeds is not None:
        conditions["seeds"] = list(seeds)
    tmp.write_text(json.dumps({"machine": machine(), **conditions, **payload}, indent=2,
                              default=float))
    tmp.replace(path)
    return path


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Print rows of dicts as a Rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*[_fmt(row.get(column)) for column in columns])
    Console().print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)
