"""Run every benchmark of the core one after another (each alone on the machine, as they need).

    python benchmarks/run_all.py [--quick]

Each script prints its table and writes ``benchmarks/results/<name>.json``; see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORE = [
    ["embed_speed.py"],
    ["quality.py"],
    ["index_bench.py"],
    ["query_latency.py"],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick where supported")
    args = parser.parse_args()
    failed = []
    for command in CORE:
        extra = ["--quick"] if args.quick and command[0] != "query_latency.py" else []
        print(f"== {' '.join(command + extra)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / command[0]), *command[1:], *extra]).returncode:
            failed.append(command[0])
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
