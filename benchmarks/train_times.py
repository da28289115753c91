"""Default training configs against the 15-minute budget: ``lookalike train METHOD`` with no
options, on the whole products catalogue (39,603 train photos at 60x80).

Each method runs as its own ``lookalike train METHOD --json`` process on the shared products
project (``benchmarks/.cache/beyond-products``, see ``_beyond_common.py``), so the time is what a
user waits for: reading the catalogue, decoding the images, training and saving. Its peak
resident memory comes from the operating system (``os.wait4``). Results are written after every
method; a re-run skips methods already measured unless ``--rerun`` is given.

    python benchmarks/train_times.py                         # every learner
    python benchmarks/train_times.py --methods cnn,infogan
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _beyond_common import PROJECT_DIR, products_project  # noqa: E402
from _common import RESULTS, print_table, write_results  # noqa: E402

METHODS = ("cnn", "cnn-hash", "finetune", "autoencoder", "conv-autoencoder", "infogan", "pca",
           "projection")
BUDGET_MINUTES = 15.0


def _stages(result: dict[str, Any]) -> tuple[str | None, int | None]:
    """(why training stopped, epochs run) from a trainer's result, nested stages included."""
    for stage in (result, result.get("stage2") or {}):
        if "stopped" in stage:
            return stage["stopped"], len(stage.get("history", []))
    return None, None


def run_method(method: str, project: Path, threads: int) -> dict[str, Any]:
    name = f"bench-default-{method}"
    # Files, not pipes: a child that fills a pipe nobody reads until it exits would hang.
    with tempfile.TemporaryFile("w+") as output, tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "lookalike.cli", "train", method, "--name", name, "--project",
             str(project), "--json"], stdout=output, stderr=errors, text=True,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        _, status, usage = os.wait4(child.pid, 0)  # wait4: this child's own peak memory
        seconds = time.perf_counter() - started
        returncode = os.waitstatus_to_exitcode(status)
        child.returncode = returncode  # already reaped: keep Popen from waiting again
        output.seek(0)
        errors.seek(0)
        text, error = output.read(), errors.read()
    if returncode != 0:
        return {"method": method, "error": error.strip().splitlines()[-1:] or ["failed"],
                "minutes": round(seconds / 60, 2)}
    summary = json.loads(text)
    stopped, epochs = _stages(summary.get("result") or {})
    return {"method": method, "embedder": summary["embedder"], "items": summary["items"],
            "minutes": round(seconds / 60, 2), "train_minutes": round(summary["seconds"] / 60, 2),
            "stopped": stopped, "epochs": epochs,
            "within_budget": seconds / 60 <= BUDGET_MINUTES,
            "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "load_1m_after": round(os.getloadavg()[0], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rerun", action="store_true", help="measure methods already measured")
    parser.add_argument("--name", default="train_times")
    args = parser.parse_args(argv)

    products_project("efficientnet-lite0", progress=False)  # ingested once; pca needs its vectors
    previous_path = RESULTS / f"{args.name}.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    # Rows of earlier runs are kept (in METHODS order) and replaced only by a new measurement.
    measured = {row["method"]: row for row in previous.get("rows", []) if "error" not in row}
    for method in args.methods.split(","):
        if method in measured and not args.rerun:
            continue
        print(f"training {method} with its default config ...", flush=True)
        measured[method] = run_method(method, PROJECT_DIR, args.threads)
        print(f"  {measured[method]}", flush=True)
        order = {name: i for i, name in enumerate(METHODS)}
        rows = sorted(measured.values(), key=lambda row: order.get(row["method"], len(order)))
        write_results(args.name, {
            "protocol": "`lookalike train METHOD --json` with no options on the products "
                        "project (39,603 train photos, 60x80), one process per method; minutes "
                        "= wall time of that process", "budget_minutes": BUDGET_MINUTES,
            "threads": args.threads, "rows": rows})
    print_table(f"default training configs (budget {BUDGET_MINUTES:.0f} min)",
                list(measured.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
