"""How much recall do the HNSW storage codes themselves lose? (No graph: exact search over codes.)

    python benchmarks/index_codes_bench.py [--size 200000] [--queries 2000]

For each FAISS scalar quantiser (SQ4, SQ6, SQ8, SQfp16), with and without a random rotation in
front (``RR256``), builds a flat code index over ``--size`` jittered-real vectors (see
benchmarks/index_data.py), searches exactly over the codes and reports recall@10 against exact
float search. This is the ceiling an HNSW graph over those codes can reach; ``choose.py`` uses
it (``STORAGE_OPTIONS``). Writes benchmarks/results/index_codes_bench.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import index_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    base, queries, _ = index_data.jittered_set(args.size, n_queries=10_000)
    queries = queries[: args.queries]
    truth = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    rows = []
    for code in ("SQ4", "SQ6", "SQ8", "SQfp16"):
        for rotate in (False, True):
            factory = f"RR{index_data.DIM},{code}" if rotate else code
            index = faiss.index_factory(index_data.DIM, factory, faiss.METRIC_INNER_PRODUCT)
            start = time.perf_counter()
            index.train(base[:50_000])
            index.add(base)
            found = index.search(queries, 10)[1]
            recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
            rows.append({"codes": code, "rotate": rotate, "recall10": round(recall, 4),
                         "bytes_per_vector": index_data.DIM * {"SQ4": 0.5, "SQ6": 0.75, "SQ8": 1,
                                                               "SQfp16": 2}[code],
                         "seconds": round(time.perf_counter() - start, 1)})
            print(f"{factory:12s} recall@10 over codes = {recall:.4f}", flush=True)
    out = HERE / "results" / "index_codes_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"size": len(base), "queries": len(queries), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
