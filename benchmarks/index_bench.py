"""Benchmark the vector indexes: build time, queries/s, recall@10, resident memory, filters.

Default (``--compare``): one protocol, one process per size (see benchmarks/_index_protocol.py):
the automatic choice (``choose_index``), the old default (rotated SQ8 HNSW) and plain
HNSW16-Flat, HNSW ones built with the same efConstruction (160), each tuned on a seeded
validation split of the queries (ef_search, or nprobe x k_factor) for recall@10 >= 0.95 and then
read once on the test split (q/s, p50/p99, memory). Results: benchmarks/results/<name>.json.

    python benchmarks/index_bench.py --sizes 1000000 --name index_bench-compare-1m
    python benchmarks/index_bench.py --sizes 40000 --name index_bench-compare-40k
    python benchmarks/index_bench.py --quick                          # 40k + 200k, ~3 min
    python benchmarks/index_bench.py --explore-ivf --sizes 1000000    # IVF build parameters

``--legacy`` runs the older per-variant layout below (fresh subprocess per build and per query
phase, filters, ef sweeps on all queries):

    python benchmarks/index_bench.py --legacy --sizes 40000 --variants numpy,hnsw-default

Variants (each row beside the numpy baseline measured in the same run):

* ``numpy``        brute force: query blocks @ vectors.T + argpartition (the baseline);
* ``faiss-exact``  :class:`ExactIndex` (IndexIDMap2 over IndexFlatIP);
* ``hnsw16-flat``  :class:`HNSWIndex` over float vectors, M=16, efConstruction=40 (plain FAISS
  IndexHNSWFlat, the reference from the design brief);
* ``hnsw-default`` :class:`HNSWIndex` with its defaults (those ``choose_index`` gives for a
  large index: random rotation + SQ8 codes, M=16);
* ``hnsw16-sq8``   the same without the rotation (optional, shows what rotating buys);
* ``hnsw-efc160``  the defaults with a wider build beam (optional, shows what build time buys).

Every index is built in its own subprocess and saved; a second fresh subprocess loads it and
measures the resident-set growth (RSS delta), then times batched searches with ``--threads``
FAISS/BLAS threads. Besides wall-clock q/s, ``bound q/s`` = threads x queries / process CPU
time: what the search reaches with the cores to itself, a figure that stays meaningful when other
jobs share the machine (the 1-minute load average is recorded beside it). Recall@10 is against exact float search. Filtered rows use a ``price``
attribute drawn uniformly from 0..999 (independent of the vectors): ``price <= 99`` passes 10%,
``price == 0`` passes 0.1%. Data: see benchmarks/index_data.py. Results go to
benchmarks/results/index_bench.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _index_protocol as protocol  # noqa: E402  (benchmarks/ is not a package)
import index_data  # noqa: E402
from _common import write_results  # noqa: E402

VARIANTS = {
    "numpy": None,
    "faiss-exact": ("exact", {}),
    "hnsw16-flat": ("hnsw", {"M": 16, "storage": "Flat", "rotate": False, "ef_construction": 40}),
    "hnsw-default": ("hnsw", {}),
    "hnsw16-sq8": ("hnsw", {"storage": "SQ8", "rotate": False}),
    "hnsw-efc160": ("hnsw", {"ef_construction": 160}),  # slower build, better graph
}
DEFAULT_VARIANTS = "numpy,faiss-exact,hnsw16-flat,hnsw-default"
#: Filters measured: name -> (attribute, value or (low, high)). "category" is correlated with
#: the vectors (a real class), the price ones are not.
FILTERS = {"10%": ("price", (0, 99)), "0.1%": ("price", (0, 0)), "category": ("category", None)}
CATEGORY = {"jittered": "Sneaker", "real": "Tshirts"}  # ~6% and ~16% of the index
SLOW_QUERIES = 1000  # brute-force variants at large sizes search only this many queries


rss_bytes = protocol.rss_bytes
recall_at_10 = protocol.recall_at_10


def set_threads(threads: int) -> None:
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    threadpool_limits(threads)


# ---- data preparation (parent process) ----------------------------------------------------------
def prepare(size: int, n_queries: int, folder: Path) -> dict:
    """Write base/queries/prices/ground truths for ``size`` into ``folder`` (cached)."""
    import faiss

    done = folder / "meta.json"
    if done.is_file():
        meta = json.loads(done.read_text())
        if meta["n_queries"] == (min(n_queries, 4000) if size <= 40_000 else n_queries):
            return meta
    folder.mkdir(parents=True, exist_ok=True)
    if size <= 40_000:
        base, queries, categories = index_data.real_set(size, n_queries=min(n_queries, 4000))
        source = f"{len(base):,} real product-photo vectors (PCA-256 of pixels); queries: other products"
        category = CATEGORY["real"]
    else:
        base, queries, categories = index_data.jittered_set(size, n_queries=n_queries)
        source = (f"{size:,} vectors jittered around 103,701 real vectors (PCA-256 of Fashion-MNIST "
                  "and product photos); queries: jittered held-out real vectors")
        category = CATEGORY["jittered"]
    prices = np.random.default_rng(7).integers(0, 1000, len(base))
    np.save(folder / "prices.npy", prices)
    np.save(folder / "categories.npy", categories.astype(str))
    meta = {"size": len(base), "n_queries": len(queries), "source": source, "category": category}
    t = time.perf_counter()
    truth = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    for name in FILTERS:
        passing = np.flatnonzero(filter_mask(name, meta, folder))
        head = queries[:SLOW_QUERIES]
        rows = faiss.knn(head, base[passing], min(10, len(passing)),
                         metric=faiss.METRIC_INNER_PRODUCT)[1]
        np.save(folder / f"truth-{name}.npy", passing[rows])
    np.save(folder / "base.npy", base)
    np.save(folder / "queries.npy", queries)
    np.save(folder / "truth.npy", truth)
    meta["ground_truth_s"] = round(time.perf_counter() - t, 1)
    done.write_text(json.dumps(meta))
    return meta


def filter_mask(name: str, meta: dict, folder: Path) -> np.ndarray:
    column, bounds = FILTERS[name]
    if column == "category":
        return np.load(folder / "categories.npy") == meta["category"]
    prices = np.load(folder / "prices.npy")
    return (prices >= bounds[0]) & (prices <= bounds[1])


def filter_object(name: str, meta: dict):  # noqa: ANN201 - lookalike Filters
    from lookalike.index.base import Filters

    column, bounds = FILTERS[name]
    if column == "category":
        return Filters.of(category=meta["category"])
    return Filters(ranges={"price": bounds})


# ---- workers (fresh subprocesses) ---------------------------------------------------------------
def worker_build(data: Path, variant: str, out: Path, threads: int) -> dict:
    from lookalike.index.base import create_index

    set_threads(threads)
    kind, params = VARIANTS[variant]
    base, ids, attributes = protocol.load_items(data)
    index = create_index(kind, base.shape[1], embedder_id="bench", **params)
    start = time.perf_counter()
    for lo in range(0, len(base), 250_000):  # batches, as a catalogue would be fed
        index.add(ids[lo: lo + 250_000], np.asarray(base[lo: lo + 250_000]),
                  attributes[lo: lo + 250_000])
    build_s = time.perf_counter() - start
    if out.exists():
        shutil.rmtree(out)
    index.save(out)
    return {"build_s": round(build_s, 1), "memory_bytes": index.memory_bytes(),
            "params": index.params}


def _numpy_search(base: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    out = []
    k = min(k, len(base))
    for lo in range(0, len(queries), 256):
        scores = queries[lo: lo + 256] @ base.T
        top = (np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(base)
               else np.tile(np.arange(len(base)), (len(scores), 1)))
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out.extend(np.take_along_axis(top, order, axis=1).tolist())
    return out


def _warm_up() -> None:
    """Import and exercise every library once so the RSS delta counts only the index."""
    import tempfile

    import pyarrow.parquet  # noqa: F401

    from lookalike.index.base import create_index, load_index

    rng = np.random.default_rng(0)
    small = {"exact": {}, "hnsw": {"train_size": 200}, "ivf": {"train_size": 200, "nlist": 16}}
    for kind, params in small.items():
        tiny = create_index(kind, index_data.DIM, **params)
        tiny.add([str(i) for i in range(300)], rng.standard_normal((300, index_data.DIM)),
                 [{"price": i} for i in range(300)])
        with tempfile.TemporaryDirectory() as folder:
            tiny.save(folder)
            load_index(folder).search(rng.standard_normal((4, index_data.DIM)), 10)
    _ = rng.standard_normal((300, 256)).astype(np.float32) @ rng.standard_normal((256, 300)).astype(np.float32)


def worker_query(data: Path, variant: str, index_folder: Path, threads: int, n_queries: int,
                 ef_sweep: list[int], mmap: bool) -> dict:
    from lookalike.index.base import load_index

    set_threads(threads)
    _warm_up()
    queries = np.load(data / "queries.npy")[:n_queries]
    truth = np.load(data / "truth.npy")[:n_queries]
    meta = json.loads((data / "meta.json").read_text())
    gc.collect()
    before = rss_bytes()
    if variant == "numpy":
        base = np.load(data / "base.npy")  # fully in memory
        index = None
    else:
        index = load_index(index_folder, expected_embedder_id="bench", mmap=mmap)
    gc.collect()
    loaded = rss_bytes() - before

    cpu_seconds = [0.0]  # process CPU time of the last run (see "bound q/s" in the docstring)

    def run(batch: np.ndarray, name: str | None = None) -> tuple[list, float]:
        mask = filter_mask(name, meta, data) if name else None  # (outside the timing)
        cpu_start = time.process_time()
        start = time.perf_counter()
        if index is None:
            if name is None:
                found = _numpy_search(base, batch, 10)
            else:
                passing = np.flatnonzero(mask)
                rows = _numpy_search(base[passing], batch, 10)
                found = [passing[r].tolist() for r in rows]
        else:
            hits = index.search(batch, 10, filters=filter_object(name, meta) if name else None)
            found = [[int(i[5:]) for i in h.ids] for h in hits]
        cpu_seconds[0] = time.process_time() - cpu_start
        return found, time.perf_counter() - start

    def bound_qps(count: int) -> float:
        # What the run reaches with the cores to itself: threads / CPU time per query. Spinning
        # OpenMP threads only add CPU time, so under load this errs low, never high.
        return round(threads * count / max(cpu_seconds[0], 1e-9), 1)

    run(queries[:100])  # warm-up (page in, thread pools)
    found, seconds = run(queries)
    result = {"queries": len(queries), "qps": round(len(queries) / seconds, 1),
              "bound_qps": bound_qps(len(queries)), "load_avg_1m": round(os.getloadavg()[0], 2),
              "recall10": round(recall_at_10(found, truth), 4),
              "rss_delta_bytes": loaded, "rss_after_search_bytes": rss_bytes() - before}
    if mmap:
        return result
    result["filtered"] = {}
    for name in FILTERS:
        head = queries[:SLOW_QUERIES]
        expected = np.load(data / f"truth-{name}.npy")
        found, seconds = run(head, name)
        result["filtered"][name] = {
            "share": round(float(np.mean(filter_mask(name, meta, data))), 4),
            "qps": round(len(head) / seconds, 1),
            "recall10": round(recall_at_10(found, expected), 4),
            "short_results": int(sum(len(f) < min(10, len(e)) for f, e in zip(found, expected)))}
    if index is not None and index.kind == "hnsw" and ef_sweep:
        result["ef_sweep"] = []
        for ef in ef_sweep:
            index.params["ef_search"] = ef
            found, seconds = run(queries)
            result["ef_sweep"].append({"ef_search": ef, "qps": round(len(queries) / seconds, 1),
                                       "bound_qps": bound_qps(len(queries)),
                                       "recall10": round(recall_at_10(found, truth), 4)})
    return result


def spawn(*args: str) -> dict:
    """Run this script as a worker in a fresh interpreter and return its JSON result."""
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- driver -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="40000,1000000")
    parser.add_argument("--quick", action="store_true", help="40k + 200k, 2,000 queries, no ef sweep")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--ef-sweep", default="16,32,48,64,96,128")
    parser.add_argument("--out", default=str(HERE / "results" / "index_bench.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mmap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--legacy", action="store_true", help="the per-variant layout")
    parser.add_argument("--explore-ivf", action="store_true",
                        help="sweep IVF build parameters on the validation queries")
    parser.add_argument("--name", default="", help="results name (default by mode)")
    args = parser.parse_args()

    if args.worker and args.phase == "rss":
        print(json.dumps(worker_rss(Path(args.index), args.threads)))
        return
    if not args.worker and not args.legacy:
        compare(args)
        return
    if args.worker:
        data, index_folder = Path(args.data), Path(args.index)
        sweep = [int(x) for x in args.ef_sweep.split(",") if x]
        if args.phase == "build":
            result = worker_build(data, args.variant, index_folder, args.threads)
        else:
            result = worker_query(data, args.variant, index_folder, args.threads, args.n, sweep,
                                  args.mmap)
        print(json.dumps(result))
        return

    sizes = [40_000, 200_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    n_queries = 2000 if args.quick else args.queries
    sweep = "" if args.quick else args.ef_sweep
    variants = [v.strip() for v in args.variants.split(",")]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    from lookalike.index.choose import choose_index

    set_threads(args.threads)
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "threads": args.threads, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "sizes": {}}
    total = time.perf_counter()
    for size in sizes:
        data = index_data.cache_dir() / f"bench-{size}"
        meta = prepare(size, n_queries, data)
        raw_bytes = meta["size"] * index_data.DIM * 4
        choice = choose_index(meta["size"], index_data.DIM)
        entry = {"data": meta, "raw_vector_bytes": raw_bytes,
                 "choose_index": {"kind": choice.kind, "params": choice.params,
                                  "reason": choice.reason}, "rows": []}
        print(f"\n== {meta['size']:,} x {index_data.DIM}: {meta['source']}", flush=True)
        for variant in variants:
            folder = data / f"index-{variant}"
            row: dict = {"variant": variant}
            if VARIANTS[variant] is not None:
                row.update(spawn("--phase", "build", "--data", str(data), "--variant", variant,
                                 "--index", str(folder), "--threads", str(args.threads)))
            slow = VARIANTS[variant] is None or VARIANTS[variant][0] == "exact"
            count = min(meta["n_queries"], SLOW_QUERIES) if slow and size > 100_000 else meta["n_queries"]
            row.update(spawn("--phase", "query", "--data", str(data), "--variant", variant,
                             "--index", str(folder), "--threads", str(args.threads), "--n",
                             str(count), "--ef-sweep", sweep if variant.startswith("hnsw") else ""))
            if variant == "hnsw-default":
                mapped = spawn("--phase", "query", "--data", str(data), "--variant", variant,
                               "--index", str(folder), "--threads", str(args.threads), "--n",
                               str(count), "--mmap")
                row["rss_delta_mmap_bytes"] = mapped["rss_delta_bytes"]
                row["rss_after_search_mmap_bytes"] = mapped["rss_after_search_bytes"]
            row["memory_ratio_vs_raw"] = round(row["rss_delta_bytes"] / raw_bytes, 3)
            entry["rows"].append(row)
            print(f"  {variant:13s} " + ", ".join(
                f"{key}={row[key]}" for key in ("build_s", "qps", "recall10", "rss_delta_bytes")
                if key in row), flush=True)
        baseline = next((r for r in entry["rows"] if r["variant"] == "numpy"), None)
        for row in entry["rows"]:
            if baseline:
                row["qps_vs_numpy"] = round(row["qps"] / baseline["qps"], 2)
        report["sizes"][str(meta["size"])] = entry
    report["total_s"] = round(time.perf_counter() - total, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_tables(report)
    print(f"\nwrote {out} ({report['total_s']:.0f} s)")


def worker_rss(index_folder: Path, threads: int) -> dict:
    """Resident-set growth of a fresh process loading the index (libraries warmed up first)."""
    from lookalike.index.base import load_index

    set_threads(threads)
    _warm_up()
    gc.collect()
    before = rss_bytes()
    index = load_index(index_folder)
    gc.collect()
    return {"rss_delta_bytes": rss_bytes() - before, "items": len(index)}


def _ivf_combos(size: int) -> list[dict]:
    """IVF build-time combinations explored (search knobs are swept for each)."""
    from lookalike.index.choose import ivf_params

    nlist = ivf_params(size, index_data.DIM)["nlist"]
    return [{"nlist": nlist, "pq": 64}, {"nlist": nlist, "pq": 32},
            {"nlist": nlist, "pq": 64, "refine": "SQ6"}, {"nlist": 2 * nlist, "pq": 64}]


def compare(args: argparse.Namespace) -> None:
    """The one-protocol comparison (module docstring), or the IVF parameter exploration."""
    from rich.console import Console

    console = Console()
    set_threads(args.threads)
    sizes = [40_000, 200_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    n_queries = 2000 if args.quick else args.queries
    report: dict = {"threads": args.threads, "target_recall10": protocol.TARGET,
                    "ef_construction": protocol.EF_CONSTRUCTION, "split_seed": protocol.SPLIT_SEED,
                    "sizes": {}}
    total = time.perf_counter()
    for size in sizes:
        data = index_data.cache_dir() / f"bench-{size}"
        meta = prepare(size, n_queries, data)
        validation, test = protocol.split_queries(data, meta["n_queries"], meta["n_queries"] // 4)
        entry: dict = {"data": meta, "raw_vector_bytes": meta["size"] * index_data.DIM * 4,
                       "validation_queries": len(validation), "test_queries": len(test)}
        console.print(f"\n== {meta['size']:,} x {index_data.DIM}: {meta['source']}")
        if args.explore_ivf:
            entry["explore"] = protocol.explore_ivf(data, _ivf_combos(meta["size"]), validation,
                                                    args.threads, console.print)
            for row in entry["explore"]:
                console.print(f"  {row['combo']}: build {row['build_s']} s, "
                              f"{row['memory_bytes'] / 1e6:,.0f} MB, best {row['best']}")
        else:
            chosen = protocol.variants(meta["size"], index_data.DIM)
            built = protocol.build_all(data, chosen, console.print)
            rows = protocol.measure(data, built, validation, test, args.threads, console.print)
            for row, facts in zip(rows, built.values()):
                fresh = spawn("--phase", "rss", "--index", facts["folder"], "--data", str(data),
                              "--threads", str(args.threads))
                row["rss_delta_fresh_bytes"] = fresh["rss_delta_bytes"]
                row["memory_ratio_fresh_vs_raw"] = round(fresh["rss_delta_bytes"]
                                                         / entry["raw_vector_bytes"], 3)
            entry["rows"] = rows
            _print_compare(console, meta["size"], rows)
        report["sizes"][str(meta["size"])] = entry
    report["total_s"] = round(time.perf_counter() - total, 1)
    name = args.name or ("index_bench-explore-ivf" if args.explore_ivf else "index_bench-compare")
    path = write_results(name + ("-quick" if args.quick and not args.name else ""), report,
                         quick=args.quick, seeds=[protocol.SPLIT_SEED, 0, 1, 7])
    console.print(f"wrote {path} ({report['total_s']:.0f} s)")


def _print_compare(console: object, size: int, rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title=f"{size:,} x 256: tuned on validation for recall@10 >= "
                        f"{protocol.TARGET}, read once on test")
    for column in ("variant", "setting", "build s", "val recall", "test recall", "q/s",
                   "bound q/s", "p50 ms", "p99 ms", "RSS x raw", "fresh RSS x raw", "load"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["variant"], str(r["setting"]), str(r["build_s"]),
                      f"{r['validation_recall10']:.3f}", f"{r['recall10']:.3f}", f"{r['qps']:,.0f}",
                      f"{r['bound_qps']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['memory_ratio_vs_raw']:.2f}", f"{r['memory_ratio_fresh_vs_raw']:.2f}",
                      str(r["load_avg_1m"]))
    console.print(table)  # type: ignore[attr-defined]


def print_tables(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=170)
    for size, entry in report["sizes"].items():
        table = Table(title=f"{int(size):,} x 256, {report['threads']} threads "
                            f"(raw floats {entry['raw_vector_bytes'] / 1e6:,.0f} MB)")
        columns = ["variant", "build s", "q/s", "bound q/s", "load", "x numpy", "recall@10", "RSS MB", "x raw",
                   "memory_bytes MB"]
        for name in FILTERS:
            columns += [f"{name}: q/s", f"{name}: recall"]
        for column in columns:
            table.add_column(column, justify="left" if column == "variant" else "right")
        for row in entry["rows"]:
            filtered = row.get("filtered", {})
            table.add_row(
                row["variant"], str(row.get("build_s", "-")), f"{row['qps']:,.0f}",
                f"{row['bound_qps']:,.0f}" if "bound_qps" in row else "-",
                str(row.get("load_avg_1m", "-")), str(row.get("qps_vs_numpy", "-")), f"{row['recall10']:.3f}",
                f"{row['rss_delta_bytes'] / 1e6:,.0f}", f"{row['memory_ratio_vs_raw']:.2f}",
                f"{row['memory_bytes'] / 1e6:,.0f}" if "memory_bytes" in row else "-",
                *[cell for name in FILTERS for cell in (
                    f"{filtered[name]['qps']:,.0f}" if name in filtered else "-",
                    f"{filtered[name]['recall10']:.3f}" if name in filtered else "-")])
        console.print(table)
        for row in entry["rows"]:
            if "ef_sweep" in row:
                console.print(f"  {row['variant']} ef sweep: " + ", ".join(
                    f"ef={p['ef_search']}: {p['recall10']:.3f} @ {p['qps']:,.0f} q/s"
                    f" (bound {p.get('bound_qps', 0):,.0f})"
                    for p in row["ef_sweep"]))
            if "rss_delta_mmap_bytes" in row:
                console.print(f"  {row['variant']} loaded with mmap=True: RSS +"
                              f"{row['rss_delta_mmap_bytes'] / 1e6:,.0f} MB after load, +"
                              f"{row['rss_after_search_mmap_bytes'] / 1e6:,.0f} MB after searching")
        shares = entry["rows"][0].get("filtered", {})
        console.print("  filters: " + ", ".join(
            f"{name} = {FILTERS[name][0]} {entry['data'].get('category') if name == 'category' else FILTERS[name][1]}"
            f" ({shares[name]['share']:.2%} pass)" for name in shares))
        console.print(f"  choose_index -> {entry['choose_index']['kind']}: "
                      f"{entry['choose_index']['reason']}")


if __name__ == "__main__":
    main()
