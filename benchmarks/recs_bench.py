"""Personalised picks from a history: centroid vs kNN vote vs latent SVM, with simulated shoppers.

No public event log matches these product photos, so shoppers are **simulated** from the real
attributes (seeded):

- a hidden taste: a gender, a usage (Casual, Ethnic, Formal, Sports, ...), 1-3 article types
  and a colour family (:data:`lookalike.recommend.scenes.COLOUR_FAMILIES`), with at least 30
  matching train photos and 5 matching test photos;
- 20 views from the **train** split: each is a random not-yet-viewed photo matching the taste
  with probability 0.8, and a random train photo (noise) otherwise;
- the next items: 5 **test** photos matching the taste.

For history lengths 1, 3, 5, 10 and 20 (the first h views) every method recommends 10 items
*from the train split* (a ``split=train`` filter inside the index search; seen items excluded).
A recommended item is relevant when it has the gender, article type and base colour of one of
the shopper's held-out next items (the class-match idea of the retrieval benchmarks: the test
photos themselves are never recommendable). Reported: HR@10, NDCG@10 (binary gains, ideal =
all relevant train items), and taste precision (share of the 10 matching the hidden taste).
A random recommender (10 random unseen train items) is measured in the same run as the baseline.

The catalogue is the shared products project of the other benchmarks
(``benchmarks/.cache/beyond-products``, built once through the public API).

    python benchmarks/recs_bench.py                       # 200 shoppers, efficientnet + phog+hsv
    python benchmarks/recs_bench.py --quick               # 40 shoppers
    python benchmarks/recs_bench.py --embedders efficientnet-lite0 --shoppers 500

Writes ``benchmarks/results/recs_bench[-quick].{json,md,png}``. Finished rows are checkpointed
in ``benchmarks/.cache/checkpoints/``: an interrupted run continues where it stopped when run
again with the same settings (delete the checkpoint to start over).
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
from _common import RESULTS, peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.evaluate.metrics import hit_rate_at_k, mean, ndcg_at_k  # noqa: E402
from lookalike.evaluate.report import markdown_table, plot_lines  # noqa: E402
from lookalike.index.base import Filters  # noqa: E402
from lookalike.recommend.personal import InstanceCache, recommend  # noqa: E402
from lookalike.recommend.scenes import Taste, simulate_shoppers  # noqa: E402

METHODS = ("centroid", "knn-vote", "latent-svm")
LENGTHS = (1, 3, 5, 10, 20)
K = 10
CHECKPOINTS = Path(__file__).resolve().parent / ".cache" / "checkpoints"


def simulate(frame, n_shoppers: int, seed: int) -> list[dict[str, Any]]:
    """Shoppers with a hidden taste, 20 views from train and 5 next items from test
    (:func:`lookalike.recommend.scenes.simulate_shoppers`)."""
    return [{"taste": s.taste, "views": s.views, "next": s.next_items}
            for s in simulate_shoppers(frame, n_shoppers, seed, noise=0.2, views=20,
                                       next_items=5)]


def relevant_sets(frame, shoppers: list[dict[str, Any]]) -> list[set[str]]:
    """Per shopper, the train items sharing gender, article type and colour with a next item."""
    by_id = frame.set_index("id")
    train = frame[frame["split"] == "train"]
    groups = train.groupby(["gender", "article_type", "base_colour"])["id"].apply(set).to_dict()
    out = []
    for shopper in shoppers:
        keys = {(by_id.at[i, "gender"], by_id.at[i, "article_type"], by_id.at[i, "base_colour"])
                for i in shopper["next"]}
        out.append(set().union(*(groups.get(key, set()) for key in keys)))
    return out


def run(project, index: str, frame, shoppers: list[dict[str, Any]], seed: int,
        negatives: int, done: dict[str, dict[str, Any]] | None = None,
        save=None) -> list[dict[str, Any]]:
    """Every (history length, method) row for one index. Rows already in ``done`` (a
    checkpoint of an interrupted run with the same settings) are reused; ``save(row)`` is
    called after each new row."""
    by_id = frame.set_index("id")
    train_ids = frame.loc[frame["split"] == "train", "id"].to_numpy()
    only_train = Filters.of(split="train")
    cache = InstanceCache(max_items=20000)
    rng = np.random.default_rng(seed + 1)
    rows = []
    truths = relevant_sets(frame, shoppers)
    for length in LENGTHS:
        for method in ("random", *METHODS):
            key = f"{index}/{length}/{method}"
            if done and key in done:
                rows.append(done[key])
                print(f"  {key}: from the checkpoint")
                continue
            lists, seconds = [], 0.0
            for shopper in shoppers:
                history = shopper["views"][:length]
                started = time.perf_counter()
                if method == "random":
                    pool = rng.choice(train_ids, size=K + length, replace=False)
                    ids = [str(i) for i in pool if str(i) not in history][:K]
                else:
                    options = {"cache": cache, "negatives": negatives} \
                        if method == "latent-svm" else {}
                    ids = [r.id for r in recommend(project, history, k=K, method=method,
                                                   filters=only_train, index=index, seed=seed,
                                                   **options)]
                seconds += time.perf_counter() - started
                lists.append(ids)
            flags, counts, taste_hits = [], [], []
            for shopper, truth, ids in zip(shoppers, truths, lists):
                relevant = [i in truth for i in ids]
                flags.append(relevant + [False] * (K - len(relevant)))
                counts.append(len(truth - set(shopper["views"][:length])))
                taste: Taste = shopper["taste"]
                taste_hits.append(float(taste.matches(by_id.loc[ids].reset_index()).mean()))
            flags_array = np.array(flags, dtype=bool)
            rows.append({"index": index, "history": length, "method": method,
                         f"HR@{K}": mean(hit_rate_at_k(flags_array, K)),
                         f"NDCG@{K}": mean(ndcg_at_k(flags_array, np.array(counts), K)),
                         "taste_precision": float(np.mean(taste_hits)),
                         "ms_per_shopper": 1000 * seconds / len(shoppers)})
            print(f"  {index} h={length:2d} {method:10s} HR@10 {rows[-1]['HR@10']:.3f} "
                  f"NDCG@10 {rows[-1]['NDCG@10']:.3f} ({rows[-1]['ms_per_shopper']:.0f} ms)",
                  flush=True)
            if save is not None:
                save(key, rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shoppers", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="40 shoppers")
    parser.add_argument("--embedders", default="efficientnet-lite0,phog+hsv-histogram")
    parser.add_argument("--negatives", type=int, default=100, help="latent SVM negatives")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from lookalike.catalogue.sources import load_products_frame

    torch.set_num_threads(args.threads)
    n = 40 if args.quick else args.shoppers
    frame = load_products_frame().drop(columns=["image_jpeg"])
    for column in ("gender", "usage", "article_type", "base_colour"):
        frame[column] = frame[column].fillna("").astype(str)
    shoppers = simulate(frame, n, args.seed)
    print(f"{n} simulated shoppers, e.g. {shoppers[0]['taste'].to_json()}")
    # Checkpoint: rows of an interrupted run with the same settings are reused, so the full
    # run can be done in several commands of a few minutes each.
    checkpoint = CHECKPOINTS / f"recs_bench-{n}-{args.seed}-{args.negatives}.json"
    done = json.loads(checkpoint.read_text()) if checkpoint.is_file() else {}

    def save(key: str, row: dict[str, Any]) -> None:
        done[key] = row
        CHECKPOINTS.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(json.dumps(done))

    rows = []
    for embedder in [e.strip() for e in args.embedders.split(",") if e.strip()]:
        project, index = products_project(embedder, progress=False)
        rows += run(project, index, frame, shoppers, args.seed, args.negatives, done, save)
    print_table(f"simulated shoppers ({n}), top-{K} from the train split", rows)
    best = {}
    for row in rows:
        key = (row["index"], row["history"])
        if row["method"] != "random" and row[f"NDCG@{K}"] > best.get(key, ("", -1))[1]:
            best[key] = (row["method"], row[f"NDCG@{K}"])
    suffix = "-quick" if args.quick else ""
    out = write_results(f"recs_bench{suffix}", {
        "protocol": {"shoppers": n, "views": 20, "noise": 0.2, "next_items": 5, "k": K,
                     "gallery": "train split", "held_out": "test split",
                     "relevant": "same gender, article_type and base_colour as a held-out item",
                     "seed": args.seed, "latent_svm_negatives": args.negatives},
        "rows": rows,
        "winner_by_ndcg": [{"index": k[0], "history": k[1], "method": v[0], "NDCG@10": v[1]}
                           for k, v in sorted(best.items())],
        "peak_rss_mb": peak_rss_mb()})
    (RESULTS / f"recs_bench{suffix}.md").write_text(
        f"Simulated shoppers ({n}), 10 picks from the train split; relevant = same gender, "
        "article type and colour as a held-out test item.\n\n"
        + markdown_table(rows, ["index", "history", "method", f"HR@{K}", f"NDCG@{K}",
                                "taste_precision", "ms_per_shopper"]))
    for index in dict.fromkeys(row["index"] for row in rows):
        plot_lines(RESULTS / f"recs_bench{suffix}-{index}.png",
                   [r for r in rows if r["index"] == index], x="history", y=f"NDCG@{K}",
                   hue="method", title=f"Personalised picks ({index})",
                   xlabel="history length (views)", ylim=(0, 1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
