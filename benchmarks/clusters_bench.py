"""Catalogue clusters (paper 003): K-means over the whole products catalogue.

For each embedder and k (20; 45 = the number of sub-categories; 141 = the number of article
types), seeded K-means with FAISS (spherical) and scikit-learn MiniBatchKMeans: purity and NMI
against article_type and sub_category, time, and whether a second run with the same seed gives
the same assignment. Baseline in the same run: a random assignment with the same cluster sizes.
Writes a picture grid of the most central items of the largest clusters
(``benchmarks/results/clusters-<embedder>.html``).

    python benchmarks/clusters_bench.py                                   # Lite0 + HSV
    python benchmarks/clusters_bench.py --embedders hsv-histogram --ks 20,45
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _beyond_common import index_name, products_project  # noqa: E402
from _common import peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.recommend.clusters import (  # noqa: E402
    ClusterReport,
    central_members,
    kmeans,
    nmi,
    purity,
    write_cluster_grid,
)

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedders", default="efficientnet-lite0,hsv-histogram")
    parser.add_argument("--ks", default="20,45,141")
    parser.add_argument("--methods", default="faiss,minibatch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid-k", type=int, default=45)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows = []
    grids = {}
    for embedder in args.embedders.split(","):
        project, name = products_project(embedder)
        loaded = project.searcher(name)
        frame = project.store.frame()
        frame = frame[frame.index.isin(set(loaded.hashes))]
        ids = list(frame.index)
        vectors = loaded.vectors_of(ids, project.store)
        labels_of = {c: frame[c].astype(str).to_numpy() for c in ("category", "sub_category")}
        for k in [int(x) for x in args.ks.split(",")]:
            for method in args.methods.split(","):
                started = time.perf_counter()
                labels, centroids = kmeans(vectors, k, seed=args.seed, method=method)
                seconds = time.perf_counter() - started
                again, _ = kmeans(vectors, k, seed=args.seed, method=method)
                shuffled = np.random.default_rng(args.seed).permutation(labels)
                row = {"embedder": embedder, "k": k, "method": method,
                       "seconds": round(seconds, 2),
                       "deterministic": bool((labels == again).all())}
                for column, classes in labels_of.items():
                    short = "type" if column == "category" else "sub"
                    row[f"purity {short}"] = purity(labels, classes)
                    row[f"NMI {short}"] = nmi(labels, classes)
                    row[f"random purity {short}"] = purity(shuffled, classes)
                    row[f"random NMI {short}"] = nmi(shuffled, classes)
                rows.append(row)
                if k == args.grid_k and method == "faiss":
                    sizes = np.bincount(labels, minlength=k).tolist()
                    central = central_members(vectors, labels, centroids, 10)
                    report = ClusterReport(
                        index=name, k=k, seed=args.seed, method=method, ids=ids, labels=labels,
                        centroids=centroids, sizes=sizes,
                        purity={"category": row["purity type"],
                                "sub_category": row["purity sub"]},
                        nmi={"category": row["NMI type"], "sub_category": row["NMI sub"]},
                        central=[[ids[r] for r in c] for c in central])
                    grids[embedder] = str(write_cluster_grid(
                        RESULTS / f"clusters-{name}.html", report, frame, limit=30))
    print_table("K-means clusters of the products catalogue (44,072 items)", rows)
    # One JSON per embedder set and method set, so runs split to fit a time budget do not
    # overwrite each other: clusters_bench-<embedders>[-<methods>].json
    tag = "-".join(index_name(e) for e in args.embedders.split(","))
    if args.methods != "faiss,minibatch":
        tag += "-" + args.methods.replace(",", "-")
    print(write_results(f"clusters_bench-{tag}", {"rows": rows, "grids": grids,
                                                  "seed": args.seed,
                                                  "peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main()
