"""Ray Data engine vs the single process: embedding throughput and peak memory on one machine.

    python benchmarks/ray_bench.py --quick     # the first 4,000 products, 112 px
    python benchmarks/ray_bench.py             # all 44,072 products, 224 px (the default size)

The products are ingested once into a temporary project (not timed). Then each engine embeds
the whole catalogue from an empty embedding cache, in its own subprocess, with
``Project.index(engine=...)``:

* ``local`` -- the single-process path (decode threads + one ONNX Runtime session);
* ``ray``   -- ``engine="ray"``: a local Ray started in the subprocess (timed separately as
               ``ray_start_s``) and one model actor per CPU;
* ``ray-shards`` (with ``--shards``) -- the same, the actors writing Parquet vector shards
               (``shards=``) that the project then reads into its cache.

Measured per run: wall seconds of ``Project.index`` and img/s; for Ray also the end-to-end
figure with the cluster start; CPU seconds of the whole process tree (driver, Ray's GCS and
raylet, the actors) and img per CPU-second, which is what one core delivers and stays
meaningful when other jobs share the machine; the peak of the summed RSS and PSS of the process
tree, sampled every 0.5 s with psutil. The Ray cost is reported as the ratio of img/s and of img
per CPU-second to the single process, at the full size and at the margin (the rate between a
tenth of the products and all of them, which drops the fixed start-up cost out). Engines
alternate ``--repeats`` times.

Results: benchmarks/results/ray_bench-quick.json (``ray_bench.json`` for the full run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import print_table, write_results  # noqa: E402


def worker(engine: str, project_dir: str, image_size: int, cpus: int) -> None:
    """One embedding run (in its own process); prints its timings as a JSON line."""
    from lookalike import Project

    options: dict[str, Any] = {}
    shards = Path(project_dir) / "vector-shards" if engine == "ray-shards" else None
    engine = "ray" if shards is not None else engine
    start = time.perf_counter()
    ray_start = 0.0
    if engine == "ray":
        from lookalike.models.ray_engine import RayOptions, ray_session

        session = ray_session(RayOptions(num_cpus=cpus))
        session.__enter__()
        ray_start = time.perf_counter() - start
    began = time.perf_counter()
    summary = Project(project_dir).index("efficientnet-lite0", progress=False,
                                         embedder_options={"image_size": image_size},
                                         engine=engine, engine_options=options or None,
                                         shards=shards)
    index_s = time.perf_counter() - began
    if engine == "ray":
        session.__exit__(None, None, None)
    print(json.dumps({"index_s": index_s, "ray_start_s": ray_start, "added": summary.added,
                      "failed": len(summary.failed)}), flush=True)


class TreeSampler:
    """Peak summed RSS/PSS and total CPU seconds of a process and all its descendants."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_rss = self.peak_pss = 0.0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            rss = pss = 0.0
            for proc in procs:
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        self.cpu[proc.pid] = times.user + times.system
                        info = proc.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", info.rss)
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, rss / 2**20)
            self.peak_pss = max(self.peak_pss, pss / 2**20)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": self.peak_rss, "peak_pss_mb": self.peak_pss,
                "cpu_s": sum(self.cpu.values())}


def run_engine(engine: str, project: Path, image_size: int, cpus: int) -> dict[str, Any]:
    import shutil

    for folder in ("embeddings", "indexes", "vector-shards"):  # from an empty cache each time
        shutil.rmtree(project / folder, ignore_errors=True)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", engine, str(project),
                             str(image_size), str(cpus)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    sampler = TreeSampler(proc.pid)
    out, _ = proc.communicate()
    wall = time.perf_counter() - began
    tree = sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} run failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    images = result["added"]
    return {"engine": engine, "images": images, "index_s": round(result["index_s"], 2),
            "img_per_s": round(images / result["index_s"], 2),
            "ray_start_s": round(result["ray_start_s"], 2),
            "img_per_s_with_start": round(images / (result["index_s"] + result["ray_start_s"]), 2),
            "process_wall_s": round(wall, 2), "cpu_s": round(tree["cpu_s"], 1),
            "img_per_cpu_s": round(images / max(tree["cpu_s"], 1e-9), 2),
            "peak_rss_mb": round(tree["peak_rss_mb"]), "peak_pss_mb": round(tree["peak_pss_mb"]),
            "failed": result["failed"]}


def _cost(rows: list[dict[str, Any]], images: int) -> dict[str, float]:
    """Fraction of each rate Ray loses against the single process (best runs at ``images``)."""
    local = [r for r in rows if r["engine"] == "local" and r["images"] == images]
    ray = [r for r in rows if r["engine"] == "ray" and r["images"] == images]

    def best(group: list[dict[str, Any]], key: str) -> float:
        return max(r[key] for r in group)

    cost = {key: round(1 - best(ray, key) / best(local, key), 4)
            for key in ("img_per_s", "img_per_s_with_start", "img_per_cpu_s")}
    cost["peak_pss_ratio"] = round(min(r["peak_pss_mb"] for r in ray)
                                   / min(r["peak_pss_mb"] for r in local), 3)
    return cost


def _marginal(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per engine, the rate between the small and the big catalogue (best run of each): the
    steady-state img/s and img per CPU-second once start-up costs (Ray's daemons, actors
    loading the model, the model's first call) are paid."""
    out = {}
    for engine in sorted({r["engine"] for r in rows}):
        runs = [r for r in rows if r["engine"] == engine]
        sizes = sorted({r["images"] for r in runs})
        small = min((r for r in runs if r["images"] == sizes[0]), key=lambda r: r["index_s"])
        big = min((r for r in runs if r["images"] == sizes[-1]), key=lambda r: r["index_s"])
        images = big["images"] - small["images"]
        out[engine] = {
            "images": images,
            "img_per_s": round(images / max(big["index_s"] - small["index_s"], 1e-9), 2),
            "img_per_cpu_s": round(images / max(big["cpu_s"] - small["cpu_s"], 1e-9), 2),
            "fixed_cpu_s": round(small["cpu_s"] - small["images"] * (big["cpu_s"] - small["cpu_s"])
                                 / images, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4,000 products at 112 px")
    parser.add_argument("--n", type=int, default=None, help="products (default 4,000 / all)")
    parser.add_argument("--image-size", type=int, default=None, help="default 112 / 224")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shards", action="store_true",
                        help="also time --engine ray --shards (engine ray-shards)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], int(args.worker[2]), int(args.worker[3]))
        return
    import pandas as pd

    from lookalike import Project
    from lookalike.catalogue.sources import require_products_parquet

    n = args.n or (4000 if args.quick else None)
    size = args.image_size or (112 if args.quick else 224)
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        frame = pd.read_parquet(require_products_parquet())
        frame = frame.head(n) if n else frame
        manifest = Path(tmp) / "products.parquet"
        frame.to_parquet(manifest)
        projects = {}
        os.setpriority(os.PRIO_PROCESS, 0, 19)  # ingest (not timed) at nice 19, runs at 0
        for count in (len(frame) // 10, len(frame)):  # a tenth too: the fixed cost drops out
            frame.head(count).to_parquet(manifest)
            projects[count] = Path(tmp) / f"project-{count}"
            Project(projects[count]).ingest(manifest, progress=False)
        del frame
        os.setpriority(os.PRIO_PROCESS, 0, 0)
        rows = []
        for _ in range(args.repeats):
            for count, project in projects.items():
                for engine in ("local", "ray") + (("ray-shards",) if args.shards else ()):
                    rows.append(run_engine(engine, project, size, args.cpus))
                    print(rows[-1], flush=True)
    big = max(projects)
    cost, marginal = _cost(rows, big), _marginal(rows)
    cost["marginal_img_per_s"] = round(1 - marginal["ray"]["img_per_s"]
                                       / marginal["local"]["img_per_s"], 4)
    cost["marginal_img_per_cpu_s"] = round(1 - marginal["ray"]["img_per_cpu_s"]
                                           / marginal["local"]["img_per_cpu_s"], 4)
    if "ray-shards" in marginal:  # the same cost with the actors writing shards
        for key in ("img_per_s", "img_per_cpu_s"):
            cost[f"shards_marginal_{key}"] = round(1 - marginal["ray-shards"][key]
                                                   / marginal["local"][key], 4)
    print_table(f"Ray vs single process ({big} products, {size} px)", rows)
    print("Ray cost (fraction of throughput lost):", cost)
    name = "ray_bench-quick" if args.quick else "ray_bench"
    if args.n and args.n != (4000 if args.quick else None):
        name += f"-n{args.n}"
    path = write_results(name, {"command": " ".join(["python", *sys.argv]), "products": n or "all",
                                "image_size": size, "embedder": "efficientnet-lite0 (onnx int8)",
                                "cpus": args.cpus, "runs": rows, "marginal": marginal,
                                "ray_cost": cost},
                         quick=args.quick, seeds=[])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
