"""Run the benchmarks one after another (each alone on the machine, as the speed ones need).

    python benchmarks/run_all.py [--quick] [--only core,learned,...]

Groups, in the order they run (see docs/benchmarks.md for what each script measures):

* ``core``      embedding speed, quality of the built-in embedders, indexes, photo -> top-10
* ``learned``   hash codes vs floats, fine-tuning, reduction, unsupervised models, activations
* ``serve``     the REST service under load (prepares its project on first use)
* ``personal``  handcrafted features, personalised picks, shop the look
* ``beyond``    words with pictures, category-first, clusters, near-duplicates
* ``report``    ``lookalike report`` over the built-in embedders and the trained models

Each script prints its table and writes ``benchmarks/results/<name>.json``. ``--quick`` is
passed to the scripts that have it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROUPS: dict[str, list[list[str]]] = {
    "core": [["embed_speed.py"], ["quality.py"], ["index_bench.py"], ["query_latency.py"]],
    "learned": [["hash_bench.py"], ["finetune_bench.py"], ["reduction_bench.py"],
                ["unsupervised_bench.py"], ["activation_study.py"]],
    "serve": [["load_test.py"], ["watch_latency.py"]],
    "personal": [["handcrafted_quality.py"], ["recs_bench.py"], ["look_bench.py"]],
    "beyond": [["text_bench.py"], ["words_bench.py"],
               ["category_first_bench.py"], ["clusters_bench.py"],
               ["dedup_bench.py"]],
    "report": [["lookalike", "report", "--models-dir", "benchmarks/.cache",
                "--out", "benchmarks/results/report"]],
}


def _has_quick(script: str) -> bool:
    help_text = subprocess.run([sys.executable, str(HERE / script), "--help"],
                               capture_output=True, text=True).stdout
    return "--quick" in help_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick where supported")
    parser.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups")
    args = parser.parse_args()
    failed = []
    for group in args.only.split(","):
        if group not in GROUPS:
            sys.exit(f"unknown group {group!r}; groups: {', '.join(GROUPS)}")
        for command in GROUPS[group]:
            if command[0] == "lookalike":  # the console script beside this interpreter
                argv = [str(Path(sys.executable).parent / "lookalike"), *command[1:]]
                argv += ["--quick"] if args.quick else []
            else:
                extra = ["--quick"] if args.quick and _has_quick(command[0]) else []
                argv = [sys.executable, str(HERE / command[0]), *command[1:], *extra]
            print(f"== [{group}] {' '.join(argv[1:])}", flush=True)
            if subprocess.run(argv, cwd=HERE.parent).returncode:
                failed.append(" ".join(command))
    if failed:
        sys.exit(f"failed: {'; '.join(failed)}")


if __name__ == "__main__":
    main()
