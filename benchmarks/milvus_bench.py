"""FAISS HNSW in-process vs Milvus HNSW over gRPC, side by side in one run, plus photo -> top-10.

Two data sets, each measured on both sides (one local Milvus 2.3 standalone server for the run):

* ``products``: the real catalogue's EfficientNet-Lite0 vectors (1,280-d), from the shared
  products project (benchmarks/_beyond_common.py: the whole catalogue ingested and embedded once,
  cached in benchmarks/.cache). Index = the train split, queries = ``--queries`` test-split
  products (never in the index).
* ``synthetic``: ``--synthetic-n`` x 256 vectors of ``index_data.jittered_set`` (sampled around
  real product / Fashion-MNIST vectors) and ``--queries`` of its held-out queries. 1M is the
  target; a shared 2-core machine runs what it can in the time (default 200k) -- the JSON says.

Both sides use HNSW with M=16 and efConstruction=100 over unit vectors (inner product = cosine).
Per side: build time (Milvus: upserts, flush, index finished), load time (FAISS: read the file;
Milvus: ``load_index`` = reconnect + live checks), resident memory (FAISS: this process's RSS
growth when reading the index; Milvus: the server process tree's RSS before the upserts and with
the collection loaded), and an ef sweep (recall@10 against exact search, q/s, p50/p99, one query
at a time from one thread); the reported point is the smallest ef reaching recall@10 >= 0.95.
Milvus reads use Session consistency (the default); Strong at the same ef is measured beside it.
Before any Milvus timing the server is left to settle (``settle``: its process tree under 0.25
cores over 5 s), because it keeps handing segments over and compacting for minutes after the
index reports Finished; the JSON records the wait and the idle cores.

``end_to_end``: what a user waits for. ``Project.search(photo bytes, k=10)`` -- decode, embed
with Lite0, search, item details from the catalogue store -- over a FAISS HNSW index and over a
Milvus index of the same whole catalogue, each at its own ef for recall 0.95, alternating per
photo so load drifts hit both; plus ``embed_query`` alone. Also the CPU time per query of this
process (decode, embed, search or gRPC, details) and of the Milvus server tree (over the whole
alternating loop, so it includes the idle server's own background ticks).

Preparation (embedding the catalogue, vectors, ground truth) runs at nice 19; timed phases
(builds, loads, queries) and the end-to-end indexes' builds at nice 0.

    python benchmarks/milvus_bench.py                       # products + 200k synthetic
    python benchmarks/milvus_bench.py --synthetic-n 1000000
    python benchmarks/milvus_bench.py --quick               # 100 queries, 50k synthetic
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from _milvus_parts import bench_faiss, bench_milvus, release, renice, truth  # noqa: E402

SEED = 0
EMBEDDER = "efficientnet-lite0"


def products(n_queries: int):
    """(project, base ids, base vectors, query vectors, query photo bytes)."""
    from _beyond_common import products_project

    project, name = products_project(EMBEDDER, progress=False)
    loaded = project.searcher(name)  # the vectors behind the shared index
    frame = project.store.frame()
    train = list(frame.index[frame["split"] == "train"])
    test = list(frame.index[frame["split"] == "test"])
    picked = sorted(np.random.default_rng(SEED).choice(len(test), n_queries, replace=False))
    query_ids = [test[i] for i in picked]
    base = np.ascontiguousarray(loaded.vectors_of(train, project.store), np.float32)
    queries = np.ascontiguousarray(loaded.vectors_of(query_ids, project.store), np.float32)
    photos = [Path(frame.loc[i, "image_path"]).read_bytes() for i in query_ids]
    return project, base, queries, photos


def synthetic(n: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    import index_data

    base, queries, _ = index_data.jittered_set(n, max(n_queries, 1000))
    return np.ascontiguousarray(base, np.float32), np.ascontiguousarray(queries[:n_queries])


def side_by_side(base: np.ndarray, queries: np.ndarray, server, collection: str,
                 folder: Path) -> dict:
    renice(19)
    start = time.perf_counter()
    want = truth(base, queries)
    print(f"{collection}: {len(base)} x {base.shape[1]}, truth in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    faiss_side = bench_faiss(base, queries, want, folder)
    milvus_side = bench_milvus(base, queries, want, server, collection, folder)
    release(server.uri, collection)
    return {"n": len(base), "dim": int(base.shape[1]), "queries": len(queries),
            "faiss_hnsw": faiss_side, "milvus_hnsw": milvus_side}


def end_to_end(project, photos: list[bytes], server, ef_faiss: int, ef_milvus: int) -> dict:
    from _milvus_parts import settle, tree_cpu_s, wait_indexed

    renice(0)
    renice(0, [server.pid])
    names = {"faiss": "e2e-faiss-hnsw", "milvus": "e2e-milvus"}
    project.index(EMBEDDER, kind="hnsw", name=names["faiss"], progress=False,
                  index_options={"M": 16, "ef_construction": 100, "ef_search": ef_faiss,
                                 "storage": "Flat", "rotate": False})
    project.index(EMBEDDER, kind="milvus", name=names["milvus"], progress=False,
                  index_options={"uri": server.uri, "collection": "e2e", "timeout": 600,
                                 "ef_construction": 100, "ef_search": ef_milvus})
    wait_indexed(server.uri, "e2e")
    settled = settle(server.pid)
    times: dict[str, list[float]] = {"faiss": [], "milvus": [], "embed_only": []}
    cpu = dict.fromkeys(times, 0.0)  # this process's CPU seconds (all threads) per phase
    for side in ("faiss", "milvus"):
        project.search(photos[0], k=10, index=names[side])  # load + warm up
    server_cpu = tree_cpu_s(server.pid)
    for n, photo in enumerate(photos):
        for side in (("faiss", "milvus") if n % 2 else ("milvus", "faiss")):
            start, cpu_start = time.perf_counter(), time.process_time()
            project.search(photo, k=10, index=names[side])
            times[side].append(time.perf_counter() - start)
            cpu[side] += time.process_time() - cpu_start
        start, cpu_start = time.perf_counter(), time.process_time()
        project.embed_query(photo, index=names["faiss"])
        times["embed_only"].append(time.perf_counter() - start)
        cpu["embed_only"] += time.process_time() - cpu_start
    server_cpu = tree_cpu_s(server.pid) - server_cpu
    out: dict = {}
    for side, values in times.items():
        ms = np.array(values) * 1000
        out[side] = {"p50_ms": round(float(np.percentile(ms, 50)), 2),
                     "p99_ms": round(float(np.percentile(ms, 99)), 2),
                     "mean_ms": round(float(ms.mean()), 2),
                     "client_cpu_ms_per_query": round(1000 * cpu[side] / len(photos), 2)}
    out["milvus"]["server_cpu_ms_per_query"] = round(1000 * server_cpu / len(photos), 2)
    for stat in ("p50_ms", "mean_ms"):
        out[f"milvus_overhead_{stat[:-3]}_pct"] = round(
            100 * (out["milvus"][stat] / out["faiss"][stat] - 1), 1)
    return {"photos": len(photos), "k": 10, "ef": {"faiss": ef_faiss, "milvus": ef_milvus},
            "consistency": "Session", **settled, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="100 queries, 50k synthetic")
    args = parser.parse_args()
    if args.quick:
        args.queries, args.synthetic_n = 100, 50_000
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the local server on a kill
    from lookalike.index.milvus_server import LocalMilvus

    renice(19)
    project, base, queries, photos = products(args.queries)
    name = "milvus_side_by_side-quick" if args.quick else "milvus_side_by_side"
    payload = {"command": " ".join(["python", "benchmarks/milvus_bench.py", *sys.argv[1:]]),
               "hnsw": {"M": 16, "efConstruction": 100, "k": 10},
               "client": "one thread, one query per call (plus an 8-thread q/s for Milvus)",
               "priorities": "preparation at nice 19, builds and timed phases at nice 0",
               "data": {"products": f"{EMBEDDER} vectors of the real catalogue: train split "
                                    "indexed, test-split queries",
                        "synthetic": "index_data.jittered_set (256-d)"},
               "phases_done": []}

    def save(phase: str) -> None:  # after every phase: a late phase cut short keeps the rest
        payload["phases_done"].append(phase)
        print(write_results(name, payload, quick=args.quick, seeds=[SEED]), flush=True)

    with tempfile.TemporaryDirectory(prefix="milvus-bench-") as tmp:
        folder = Path(tmp)
        server = LocalMilvus(folder / "server").start()
        try:
            payload["server_start_s"] = round(server.start_seconds, 1)
            payload["products"] = side_by_side(base, queries, server, "products", folder)
            save("products")
            chosen = {side: (payload["products"][f"{side}_hnsw"]["at_recall_0.95"] or {})
                      .get("ef", 128) for side in ("faiss", "milvus")}
            payload["end_to_end"] = end_to_end(project, photos, server, chosen["faiss"],
                                               chosen["milvus"])
            save("end_to_end")
            release(server.uri, "e2e")
            del base, queries
            renice(19)
            base, queries = synthetic(args.synthetic_n, args.queries)
            payload["synthetic"] = side_by_side(base, queries, server, "synthetic", folder)
            save("synthetic")
        finally:
            server.stop()
            project.close()


if __name__ == "__main__":
    main()
