"""Which views of a shopper's photo bring its product among the nearest by embedding?

The candidates of ``search --exact`` (lookalike.recommend.photo_match) are the nearest products
of some views of the query photo; a product outside every list can never be re-ranked first.
On *validation* queries only (train-split products, the shopper edits of
benchmarks/photo_robust_bench.py with its validation seed), this probe ranks the product among
the whole catalogue (44,072) for each view -- the plain photo, the photo without its grey frame
(``trim_border``), straightened (``straighten``), straightened inside a white margin of 3 / 5 / 8 %
(``with_margin``), and the mirrored straightened photo -- and counts the queries whose product
is within depth 5-200 of a view, or of a pair of views (the union of two lists). It also
records how well :func:`~lookalike.recommend.photo_frame.frame_turn` reads the turn.

    python benchmarks/photo_views_probe.py                 # 200 validation queries
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from PIL import ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _beyond_common import products_project  # noqa: E402
from _common import write_results  # noqa: E402
from photo_robust_bench import make_queries, photo_groups  # noqa: E402

from lookalike.recommend.photo_frame import (frame_turn, straighten, trim_border,  # noqa: E402
                                             with_margin)

DEPTHS = (5, 10, 20, 30, 50, 100, 200)


def views(photo) -> dict:
    straight = straighten(photo)
    return {"plain": photo, "trimmed": trim_border(photo), "straightened": straight,
            "straightened + 3% margin": with_margin(straight, 0.03),
            "straightened + 5% margin": with_margin(straight, 0.05),
            "straightened + 8% margin": with_margin(straight, 0.08),
            "straightened, mirrored": ImageOps.mirror(straight)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    project, name = products_project(args.embedder, progress=False)
    frame = project.store.frame()
    train = sorted(frame.index[frame["split"] == "train"])
    seed = args.seed + 11  # photo_robust_bench's validation seed: the same kind of queries
    ids = sorted(np.random.default_rng(seed).choice(train, args.queries, replace=False))
    groups = photo_groups(project)
    searcher = project.searcher(name)
    deepest = max(DEPTHS)
    ranks: dict[str, list[int]] = {}
    turn_errors = []
    started = time.perf_counter()
    for item_id, photo, edits in make_queries(project, ids, seed):
        shown = views(photo)
        vectors = np.asarray(searcher.embedder.embed(list(shown.values())))
        same = groups[item_id]
        for label, hits in zip(shown, searcher.index.search(vectors, k=deepest)):
            rank = next((n for n, i in enumerate(hits.ids) if i in same), deepest)
            ranks.setdefault(label, []).append(rank)
        turn = frame_turn(photo)
        turn_errors.append(abs((turn if turn is not None else 0.0) - edits["degrees"]))
    table = {label: {str(d): int(sum(r < d for r in values)) for d in DEPTHS}
             for label, values in ranks.items()}
    pairs = {f"{a} | {b}": {str(d): int(sum(min(x, y) < d for x, y in zip(ranks[a], ranks[b])))
                            for d in DEPTHS}
             for a, b in itertools.combinations(ranks, 2)}
    for label, row in {**table, **pairs}.items():
        print(f"{label:60s} " + " ".join(f"{d}:{row[str(d)]}" for d in (10, 30, 50)))
    print(write_results("photo_views_probe", {
        "index": name, "gallery": len(frame), "split": "train (validation)",
        "queries": args.queries, "found_within_depth": table, "pairs_within_depth": pairs,
        "turn_error_degrees": {"median": round(float(np.median(turn_errors)), 3),
                               "p90": round(float(np.percentile(turn_errors, 90)), 3),
                               "max": round(float(np.max(turn_errors)), 3)},
        "seconds": round(time.perf_counter() - started, 1), "threads": args.threads},
        quick=False, seeds=[seed]))


if __name__ == "__main__":
    main()
