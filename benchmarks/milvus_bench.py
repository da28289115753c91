"""FAISS HNSW in-process vs Milvus HNSW over gRPC (the ``milvus`` index kind).

Quick mode (default): products shape: the 40,072 real product vectors of
``index_data.real_set`` (PCA-256 of the product photos) lifted to 1,280 dimensions (the size of
EfficientNet-Lite0 features) by a random map with orthonormal columns, which keeps every cosine,
so neighbours are real while memory and distance costs are those of 1,280-d; 300 of its held-out
queries. (Random unit vectors were tried first: at 1,280-d they have no neighbour structure and
HNSW recall@10 stayed below 0.3 at ef=256, so they say nothing; embedding 44k photos with
Lite0 takes longer than this run may.) ``--full``: 1M x 256 vectors from
``index_data.jittered_set`` (sampled around real product vectors) and 1,000 of its queries.

Both sides use HNSW with M=16 and efConstruction=100 over unit vectors (inner product = cosine).
For each side: build time (Milvus: upsert, flush and wait for the index), load time (FAISS:
read the index file; Milvus: ``MilvusIndex.load`` = reconnect + live checks), and for a sweep of
ef: recall@10 against exact search, single-query q/s and p50/p99 latency, one query at a time
from one client thread. The reported point per side is the smallest ef reaching recall@10 >=
0.95. Milvus' resident memory is the server process tree's RSS (psutil) after the searches.

    python benchmarks/milvus_bench.py            # quick, starts a local server in a temp folder
    python benchmarks/milvus_bench.py --full     # 1M x 256
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

EFS = (16, 32, 64, 128, 256)
K = 10
SEED = 0


def _data(full: bool) -> tuple[np.ndarray, np.ndarray]:
    import index_data

    if full:
        base, queries, _ = index_data.jittered_set(1_000_000, 1_000)
        return np.ascontiguousarray(base, np.float32), np.ascontiguousarray(queries[:1000],
                                                                            np.float32)
    base, queries, _ = index_data.real_set(44_072)  # 40,072 + 4,000 real product vectors
    rng = np.random.default_rng(SEED)  # lift 256-d to 1,280-d: orthonormal columns keep cosines
    lift, _ = np.linalg.qr(rng.standard_normal((1280, base.shape[1])))
    lift = lift.T.astype(np.float32)
    return np.ascontiguousarray(base @ lift), np.ascontiguousarray(queries[:300] @ lift)


def _truth(base: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    return flat.search(queries, K)[1]


def _recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t)) / K for f, t in zip(found, truth)]))


def _sweep(search, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    rows = []
    for ef in EFS:
        search(queries[:5], ef)  # warm up
        latencies, found = [], []
        for q in queries:
            start = time.perf_counter()
            found.append(search(q[None], ef)[0])
            latencies.append(time.perf_counter() - start)
        latencies = np.array(latencies) * 1000
        rows.append({"ef": ef, "recall@10": round(_recall(found, truth), 4),
                     "qps": round(len(queries) / (latencies.sum() / 1000), 1),
                     "p50_ms": round(float(np.percentile(latencies, 50)), 3),
                     "p99_ms": round(float(np.percentile(latencies, 99)), 3)})
        print(rows[-1], flush=True)
        if rows[-1]["recall@10"] >= 0.99:
            break
    return rows


def _chosen(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r["recall@10"] >= 0.95), None)


def bench_faiss(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, folder: Path) -> dict:
    import faiss

    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(base.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 100
    index.add(base)
    build = time.perf_counter() - start
    path = folder / "faiss.index"
    faiss.write_index(index, str(path))
    start = time.perf_counter()
    index = faiss.read_index(str(path))
    load = time.perf_counter() - start

    def search(q: np.ndarray, ef: int) -> list[list[int]]:
        params = faiss.SearchParametersHNSW(efSearch=max(ef, K))
        return index.search(q, K, params=params)[1].tolist()

    rows = _sweep(search, queries, truth)
    return {"build_s": round(build, 2), "load_s": round(load, 3), "sweep": rows,
            "at_recall_0.95": _chosen(rows), "index_file_mb": round(path.stat().st_size / 2**20, 1)}


def _threaded_qps(search, queries: np.ndarray, threads: int) -> float:
    """Queries per second with ``threads`` client threads, one query per call."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda q: search(q[None]), queries))
    return round(len(queries) / (time.perf_counter() - start), 1)


def _server_rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                 / 2**20, 1)


def bench_milvus(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, uri: str,
                 folder: Path, pid: int | None) -> dict:
    from lookalike.index.base import create_index, load_index

    rss_empty = _server_rss_mb(pid) if pid else None
    ids = [str(i) for i in range(len(base))]
    start = time.perf_counter()
    index = create_index("milvus", base.shape[1], "bench", uri=uri, collection="bench",
                         ef_construction=100, timeout=600)
    for lo in range(0, len(base), 10_000):
        index.add(ids[lo:lo + 10_000], base[lo:lo + 10_000])
    upsert = time.perf_counter() - start
    index.save(folder / "milvus")
    from pymilvus import MilvusClient

    raw = MilvusClient(uri=uri)
    raw.flush("bench")  # seal the segments so the HNSW index is built over all of them
    while True:  # wait until the HNSW index covers every sealed row
        info = raw.describe_index("bench", "vector")
        if int(info.get("pending_index_rows", 0)) == 0 and info.get("state") == "Finished":
            break
        time.sleep(1)
    build = time.perf_counter() - start
    raw.close()
    index.close()
    start = time.perf_counter()
    index = load_index(folder / "milvus")
    load = time.perf_counter() - start

    def search(q: np.ndarray, ef: int) -> list[list[int]]:
        index.params["ef_search"] = ef
        return [[int(i) for i in hits.ids] for hits in index.search(q, K)]

    rows = _sweep(search, queries, truth)
    chosen = _chosen(rows) or rows[-1]
    index.params["consistency"] = "Bounded"  # the same ef without Strong's wait
    bounded = _sweep(lambda q, ef: search(q, chosen["ef"]), queries[:100], truth[:100])[0]
    index.params["consistency"] = "Strong"
    threaded = _threaded_qps(lambda q: search(q, chosen["ef"]), queries, threads=8)
    return {"upsert_s": round(upsert, 2), "build_s": round(build, 2), "load_s": round(load, 3),
            "sweep": rows, "at_recall_0.95": _chosen(rows),
            "bounded_at_that_ef_100_queries": bounded,
            "strong_at_that_ef_8_client_threads_qps": threaded,
            "server_rss_mb_empty": rss_empty,
            "server_rss_mb_loaded": _server_rss_mb(pid) if pid else None}


def consistency_and_restart(server, folder: Path, dim: int) -> dict:
    """Read-your-writes under Bounded vs Strong consistency, and what a restart costs: server
    start, then ``load_index`` (reconnect, wait for the collection to load, first Strong read)."""
    from pymilvus import MilvusClient

    from lookalike.index.base import load_index

    index = load_index(folder / "milvus")
    raw = MilvusClient(uri=server.uri)
    seen = {}
    rng = np.random.default_rng(SEED)
    for level in ("Bounded", "Strong"):
        item = f"fresh-{level}"
        index.add([item], rng.standard_normal((1, dim)).astype(np.float32))
        rows = raw.query("bench", filter=f'id == "{item}"', output_fields=["id"],
                         consistency_level=level)
        seen[level] = len(rows)
    raw.close()
    index.save(folder / "milvus")
    index.close()
    server.stop()
    server.start()
    start = time.perf_counter()
    load_index(folder / "milvus").close()
    return {"found_right_after_insert": seen, "server_start_s": round(server.start_seconds, 1),
            "load_after_restart_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1M x 256 instead of 44k x 1280")
    parser.add_argument("--uri", help="an existing Milvus server (default: start a local one)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the local server on a kill
    base, queries = _data(args.full)
    print(f"{len(base)} x {base.shape[1]} vectors, {len(queries)} queries", flush=True)
    truth = _truth(base, queries)
    with tempfile.TemporaryDirectory(prefix="milvus-bench-") as tmp:
        folder = Path(tmp)
        faiss_result = bench_faiss(base, queries, truth, folder)
        server = None
        if args.uri is None:
            from lookalike.index.milvus_server import LocalMilvus

            server = LocalMilvus(folder / "server").start()
        try:
            milvus_result = bench_milvus(base, queries, truth, args.uri or server.uri, folder,
                                         server.pid if server else None)
            if server is not None:
                milvus_result["first_start_s"] = round(server.start_seconds, 1)
                milvus_result.update(consistency_and_restart(server, folder, base.shape[1]))
        finally:
            if server is not None:
                server.stop()
    payload = {"data": {"n": len(base), "dim": int(base.shape[1]), "queries": len(queries),
                        "vectors": "jittered real (index_data)" if args.full
                        else "real product PCA-256 lifted to 1,280-d (cosines kept)"},
               "hnsw": {"M": 16, "efConstruction": 100, "k": K},
               "client": "one thread, one query per call",
               "faiss_hnsw": faiss_result, "milvus_hnsw": milvus_result}
    name = "milvus_bench-1m" if args.full else "milvus_bench"
    print(write_results(name, payload, quick=not args.full, seeds=[SEED]))


if __name__ == "__main__":
    main()
