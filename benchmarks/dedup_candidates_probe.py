"""How deep must the copies detector's candidate lists be on the whole catalogue?

On the *validation* set of ``dedup_bench.py --combined --full`` (all 39,603 train-split products
+ 2,000 copies with 1-4 edits, seed 101; no test copies are read), the share of planted
(copy, original) pairs that reach the verifier when each photo gathers its ``k`` nearest
embeddings (cosine >= 0.80, as :class:`~lookalike.catalogue.copies.CopySettings`) together with
its 5 nearest perceptual hashes within 22 bits, for several ``k``, and how many candidate pairs
that makes (the verification cost grows with it).

    python benchmarks/dedup_candidates_probe.py --embeddings-from benchmarks/.cache/beyond-products
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _dedup_combined as combined  # noqa: E402
from _common import write_results  # noqa: E402
from dedup_bench import embedding_cache  # noqa: E402

from lookalike.catalogue.copies import CopySettings, candidate_pairs  # noqa: E402
from lookalike.catalogue.sources import load_products_frame  # noqa: E402
from lookalike.models.base import create  # noqa: E402

DEPTHS = (5, 10, 20, 40)


def knn_pairs(vectors: np.ndarray, k: int, min_cosine: float) -> np.ndarray:
    """``(i, j)`` pairs of each row's ``k`` nearest other rows with cosine >= ``min_cosine``."""
    import faiss

    scores, found = faiss.knn(vectors, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    rows = np.repeat(np.arange(len(vectors)), k + 1)
    found, scores = found.reshape(-1), scores.reshape(-1)
    keep = (found >= 0) & (found != rows) & (scores >= min_cosine)
    return np.stack([rows[keep], found[keep]], axis=1).astype(np.int64)


def planted_pairs(vectors: np.ndarray, data: dict) -> dict:
    """Per number of edits: the median cosine of a copy to its original, the share of copies
    whose cosine to it is >= 0.80, and the share whose original is among the copy's 5 / 10 /
    20 / 40 nearest photos at any cosine."""
    import faiss

    designed = np.asarray(data["designed"])
    originals, copies = designed[:, 0], designed[:, 1]
    cosine = np.einsum("ij,ij->i", vectors[originals], vectors[copies])
    _, found = faiss.knn(vectors[copies], vectors, 41, metric=faiss.METRIC_INNER_PRODUCT)
    rank = np.asarray([int(np.flatnonzero(row == o)[0]) if (row == o).any() else 99
                       for row, o in zip(found, originals)])  # rank 0 is the copy itself
    groups = np.asarray(data["groups"])
    out = {}
    for group in sorted(set(data["groups"])):
        inside = groups == group
        out[group] = {"median_cosine": round(float(np.median(cosine[inside])), 4),
                      "cosine_at_least_0.80": round(float((cosine[inside] >= 0.8).mean()), 4),
                      **{f"original_within_{k}": round(float((rank[inside] <= k).mean()), 4)
                         for k in (5, 10, 20, 40)}}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("--embeddings-from", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--depths", default=",".join(map(str, DEPTHS)),
                        help="embedding neighbours per photo to try, comma-separated")
    args = parser.parse_args()

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    embedder = create(args.embedder)
    seed = args.seed + 101  # dedup_bench --combined's validation seed
    data = combined.build_set(load_products_frame(), "train", 100_000, 2000, seed)
    data = combined.prepare(data, embedder, args.threads, embedding_cache(args, embedder))
    vectors = np.ascontiguousarray(data["vectors"], dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    settings = CopySettings()
    rows = []
    for k in (int(d) for d in args.depths.split(",")):
        pairs = candidate_pairs(data["codes"], settings,
                                knn_pairs(vectors, k, settings.min_cosine))
        found = set(map(tuple, pairs.tolist()))
        hit = np.asarray([tuple(sorted(map(int, d))) in found for d in data["designed"]])
        groups = np.asarray(data["groups"])
        rows.append({"neighbours": k, "candidates": int(len(pairs)),
                     "candidate_recall": round(float(hit.mean()), 4),
                     "by_edits": {g: round(float(hit[groups == g].mean()), 4)
                                  for g in sorted(set(data["groups"]))}})
        print(rows[-1], flush=True)
    planted = planted_pairs(vectors, data)
    print(planted, flush=True)
    print(write_results("dedup_candidates_probe", {
        "set": {"split": "train (validation)", "catalogue": data["n_catalogue"],
                "copies": len(data["designed"]), "seed": seed},
        "phash": {"neighbours": settings.phash_neighbours, "radius": settings.phash_radius},
        "min_cosine": settings.min_cosine, "embedder": args.embedder, "rows": rows,
        "planted": planted,
        "seconds": round(time.perf_counter() - started, 1), "threads": args.threads},
        quick=False, seeds=[seed]))


if __name__ == "__main__":
    main()
