"""Category-first search (paper 001) vs plain search on the real products catalogue.

Queries: the 4,469 test photos; gallery: the 39,603 train photos; relevant = same article_type.
A linear probe (scikit-learn LogisticRegression) on the index's embeddings, trained on the train
split, predicts each query's category; the search then runs inside the top-1 category, the
top-2, or -- when the probe is unsure -- the whole gallery. Rows:

* plain search (the baseline, same run);
* always top-1, always top-2 (no fallback);
* adaptive: top-1 / top-2 / everything by confidence; the two thresholds are chosen on 3,000
  held-out *train* items with a probe fitted on the rest of train (never on test);
* the true category as a filter (an upper bound no real query has).

Reported: P@10, mAP@100, queries/s (probe included), the share of queries whose searched
categories missed the true one, and the probe's top-1/top-2 accuracy.

    python benchmarks/category_first_bench.py                          # Lite0
    python benchmarks/category_first_bench.py --embedder hsv-histogram
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _beyond_common import products_project  # noqa: E402
from _common import peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.errors import LookalikeError  # noqa: E402
from lookalike.evaluate.metrics import average_precision_at_k, mean, precision_at_k  # noqa: E402
from lookalike.index.base import Filters  # noqa: E402
from lookalike.recommend.category_first import (  # noqa: E402
    CategoryProbe,
    decide,
    load_category_probe,
    probe_accuracy,
    search_vectors,
    train_category_probe,
)

GALLERY = Filters.of(split="train")
TOP1_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)  # 1.01 = never top-1
TOP2_GRID = (0.5, 0.6, 0.7, 0.8, 0.9, 1.01)


def _saved(load):  # noqa: ANN001, ANN202 - a loader that may find nothing
    try:
        return load()
    except (LookalikeError, OSError, ValueError):
        return None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def evaluate(hits, query_types, types, n_relevant) -> dict[str, float]:
    relevant = np.zeros((len(hits), 100), dtype=bool)
    for n, h in enumerate(hits):
        for r, item_id in enumerate(h.ids[:100]):
            relevant[n, r] = types[item_id] == query_types[n]
    return {"P@10": mean(precision_at_k(relevant, 10)),
            "mAP@100": mean(average_precision_at_k(relevant, n_relevant, 100))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("--holdout", type=int, default=3000)
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retrain", action="store_true", help="fit the probes again")
    args = parser.parse_args()

    import faiss
    import torch
    from sklearn.linear_model import LogisticRegression

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    project, name = products_project(args.embedder)
    loaded = project.searcher(name)
    frame = project.store.frame()
    frame = frame[frame.index.isin(set(loaded.hashes))]
    types = frame["category"].astype(str).to_dict()
    train_ids = list(frame.index[frame["split"] == "train"])
    test_ids = list(frame.index[frame["split"] == "test"])
    counts = frame.loc[train_ids, "category"].value_counts()

    # Both probes are saved and reused by later runs (fitting one on 39,603 x 1,280 Lite0 rows
    # takes 2-6 minutes on 2 shared cores); --retrain fits them again.
    started = time.perf_counter()
    probe = None if args.retrain else _saved(lambda: load_category_probe(project, index=name))
    if probe is None or probe.info.get("max_iter") != args.max_iter:
        probe = train_category_probe(project, index=name, max_iter=args.max_iter)
    probe_seconds = probe.info.get("fit_seconds", time.perf_counter() - started)
    log(f"probe ready ({probe_seconds:.0f} s to fit, {probe.info.get('iterations')} iterations)")

    # thresholds: a probe fitted on train minus a holdout, tuned on the holdout
    holdout = set(rng.choice(train_ids, size=args.holdout, replace=False).tolist())
    fit_ids = [i for i in train_ids if i not in holdout]
    tune_ids = [i for i in train_ids if i in holdout]
    tune_folder = (project.path / "probes" /
                   f"{name}-category-holdout{args.holdout}-seed{args.seed}-it{args.max_iter}")
    tune_probe = None if args.retrain else _saved(lambda: CategoryProbe.load(tune_folder))
    if tune_probe is None or tune_probe.embedder_id != loaded.embedder.embedder_id:
        fit_vectors = loaded.vectors_of(fit_ids, project.store)
        model = LogisticRegression(max_iter=args.max_iter).fit(
            fit_vectors, [types[i] for i in fit_ids])
        tune_probe = CategoryProbe([str(c) for c in model.classes_], model.coef_,
                                   model.intercept_, embedder_id=loaded.embedder.embedder_id)
        tune_probe.save(tune_folder)
    tune_vectors = loaded.vectors_of(tune_ids, project.store)
    tune_types = [types[i] for i in tune_ids]
    tune_relevant = np.array([counts.get(t, 0) for t in tune_types]) - 1
    log(f"tuning probe fitted on {len(fit_ids)} train items")
    tuning_file = tune_folder / "tuning.json"  # reused with the tuning probe (same inputs)
    if tuning_file.is_file() and not args.retrain:
        tuning = json.loads(tuning_file.read_text())
    else:
        # Every threshold pair scopes each query to its top-1, its top-2 or everything, so the
        # three scoped searches run once and each pair only picks per query (the same hits as
        # search_vectors with that pair: exact search, same filters, same top-up).
        exclude = [[i] for i in tune_ids]
        by_scope = {
            "top1": search_vectors(loaded.index, tune_probe, tune_vectors, 100, GALLERY, exclude,
                                   top1_confidence=0.0)[0],
            "top2": search_vectors(loaded.index, tune_probe, tune_vectors, 100, GALLERY, exclude,
                                   top1_confidence=1.01, top2_confidence=0.0)[0],
            "all": loaded.index.search(tune_vectors, k=100, filters=GALLERY, exclude=exclude)}
        tune_proba = tune_probe.predict_proba(tune_vectors)
        tuning = []
        for top1 in TOP1_GRID:
            for top2 in TOP2_GRID:
                scopes = [decide(p, tune_probe.classes, top1_confidence=top1,
                                 top2_confidence=top2).scope for p in tune_proba]
                hits = [by_scope[scope][n] for n, scope in enumerate(scopes)]
                tuning.append({"top1": top1, "top2": top2,
                               **evaluate(hits, tune_types, types, tune_relevant)})
        tuning_file.write_text(json.dumps(tuning))
    chosen = max(tuning, key=lambda r: (r["mAP@100"], r["P@10"]))
    log(f"thresholds chosen on the train holdout: {chosen}")

    queries = loaded.vectors_of(test_ids, project.store)
    query_types = [types[i] for i in test_ids]
    n_relevant = np.array([counts.get(t, 0) for t in query_types])
    rows: list[dict[str, Any]] = []

    def run(method: str, searcher) -> None:
        t = time.perf_counter()
        hits, decisions = searcher()
        seconds = time.perf_counter() - t
        row = {"method": method, **evaluate(hits, query_types, types, n_relevant),
               "queries/s": round(len(test_ids) / seconds, 1)}
        if decisions is not None:
            scoped = [d for d in decisions if d.categories]
            wrong = [d for d, t in zip(decisions, query_types) if d.categories
                     and t not in d.categories]
            row["wrong category"] = len(wrong) / len(test_ids)
            row["scoped share"] = len(scoped) / len(test_ids)
        rows.append(row)
        log(f"{method}: {row}")

    run("plain search (baseline)",
        lambda: (loaded.index.search(queries, k=100, filters=GALLERY), None))
    run("category-first: always top-1",
        lambda: search_vectors(loaded.index, probe, queries, 100, GALLERY, top1_confidence=0.0))
    run("category-first: always top-2",
        lambda: search_vectors(loaded.index, probe, queries, 100, GALLERY,
                               top1_confidence=1.01, top2_confidence=0.0))
    run(f"category-first: adaptive (top1>={chosen['top1']}, top2>={chosen['top2']})",
        lambda: search_vectors(loaded.index, probe, queries, 100, GALLERY,
                               top1_confidence=chosen["top1"], top2_confidence=chosen["top2"]))

    def oracle():
        hits: list = [None] * len(test_ids)
        for kind in sorted(set(query_types)):
            rows_of = [n for n, t in enumerate(query_types) if t == kind]
            found = loaded.index.search(queries[rows_of], k=100,
                                        filters=Filters.of(split="train", category=kind))
            for n, h in zip(rows_of, found):
                hits[n] = h
        return hits, None

    run("true category as filter (upper bound)", oracle)
    accuracy = probe_accuracy(probe, queries, query_types)
    print_table(f"category-first vs plain search ({args.embedder}; {len(test_ids)} test queries, "
                f"{len(train_ids)} gallery; probe top-1 {accuracy['top1_accuracy']:.3f}, "
                f"top-2 {accuracy['top2_accuracy']:.3f})", rows)
    print(write_results(f"category_first_bench-{name}", {
        "embedder": args.embedder, "queries": len(test_ids), "gallery": len(train_ids),
        "probe": {**accuracy, **probe.info, "classes": len(probe.classes),
                  "train_seconds": round(probe_seconds, 1)},
        "thresholds_chosen_on_train_holdout": chosen, "tuning": tuning, "rows": rows,
        "peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main()
