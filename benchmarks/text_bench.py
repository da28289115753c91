"""Words with pictures on the real products catalogue: where titles help and where they hurt.

Gallery: the 39,603 train products (photos + titles, one fused index); queries: test products.

A. **photo + the colour word of another colour** (``search PHOTO --text "red"``): for each test
   photo (type T, colour C) a colour C' != C that T has >= 10 of in the gallery is drawn (seeded);
   a hit is a result of type T *and* colour C'. Compared: the photo alone, the photo with a
   colour *filter* (metadata, no words), the words alone, weighted score fusion and RRF.
B. **more-like-this**: the photo alone vs fused item embeddings (photo + own title); P@10 and
   mAP@100 by article_type, and P@10 by base_colour. Titles name the article type in ~62 % of
   products and the colour in ~89 %, so these numbers are inflated by the titles: they measure
   how much the *catalogue's own words* help, not what a photo alone could do.
C. **words alone** on typed queries built from attribute values ("women red heels"):
   hit = all three attributes match; the MiniLM title search vs a TF-IDF keyword baseline
   (scikit-learn) over the same titles.

Text weights are chosen on 1,000 *train* queries (leave-one-out over the train gallery) and
reported on the test queries, with the whole weight sweep in the JSON.

    python benchmarks/text_bench.py                              # Lite0 (embeds once, cached)
    python benchmarks/text_bench.py --embedder hsv-histogram     # quicker
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _beyond_common import products_project  # noqa: E402
from _common import peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.evaluate.metrics import average_precision_at_k, mean, precision_at_k  # noqa: E402
from lookalike.index.base import Filters  # noqa: E402
from lookalike.recommend.text_search import (  # noqa: E402
    build_text_index,
    fused_search_many,
    load_text_index,
    search_with_text,
)

WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
GALLERY = Filters.of(split="train")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def relevant_matrix(hits, frame, rule) -> np.ndarray:
    """``[n_queries, k]`` bool: ``rule(query_row, result_id)`` per rank (False past the end)."""
    k = max(len(h.ids) for h in hits) if hits else 0
    out = np.zeros((len(hits), k), dtype=bool)
    for n, h in enumerate(hits):
        for r, item_id in enumerate(h.ids):
            out[n, r] = rule(n, item_id)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("--queries", type=int, default=0, help="limit test queries (0 = all)")
    parser.add_argument("--tune-queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=",".join(map(str, WEIGHTS)),
                        help="text weights to sweep (fewer = quicker), e.g. 0.3,0.5,0.7,0.9")
    args = parser.parse_args()
    weights = tuple(float(w) for w in args.weights.split(","))

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    project, name = products_project(args.embedder)
    started = time.perf_counter()
    summary = build_text_index(project, index=name, progress=True)
    build_seconds = time.perf_counter() - started
    loaded = project.searcher(name)
    text_index = load_text_index(project, name)
    fused, image_dim, text_dim = text_index.index, text_index.image_dim, text_index.text_dim

    frame = project.store.frame()
    frame = frame[frame.index.isin(set(loaded.hashes))]
    # plain dicts: looked up once per result, hundreds of thousands of times
    types = frame["category"].astype(str).to_dict()
    colours = frame["colour"].astype(str).to_dict()
    genders = frame["gender"].fillna("").astype(str).to_dict()
    train_ids = list(frame.index[frame["split"] == "train"])
    test_ids = list(frame.index[frame["split"] == "test"])
    if args.queries:
        test_ids = list(rng.choice(test_ids, size=min(args.queries, len(test_ids)),
                                   replace=False))
    tune_ids = list(rng.choice(train_ids, size=min(args.tune_queries, len(train_ids)),
                               replace=False))
    gallery = frame.loc[train_ids]
    per_type_colour = gallery.groupby(["category", "colour"]).size()

    def vectors(ids):
        return (loaded.vectors_of(ids, project.store), text_index.text_vectors_of(project, ids))

    # ---- A: photo + the word of another colour ----------------------------------------------
    colour_words = sorted(set(colours.values()))
    colour_vectors = dict(zip(colour_words,
                              text_index.text_model.embed_texts([c.lower() for c in colour_words])))

    def colour_queries(ids):
        chosen, asked = [], []
        for item_id in ids:
            kind = types[item_id]
            options = [c for (t, c), n in per_type_colour.items()
                       if t == kind and n >= 10 and c != colours[item_id]]
            if options:
                chosen.append(item_id)
                asked.append(options[rng.integers(len(options))])
        return chosen, asked

    def scenario_a(ids, asked, weights, fusions=("weighted", "rrf")) -> list[dict[str, Any]]:
        image_vectors, _ = vectors(ids)
        words = np.stack([colour_vectors[c] for c in asked])
        exclude = [[i] for i in ids]
        hit = lambda n, g: types[g] == types[ids[n]] and colours[g] == asked[n]  # noqa: E731
        same_type = lambda n, g: types[g] == types[ids[n]]  # noqa: E731
        rows = []

        def add(method, weight, hits, seconds):
            rows.append({"method": method, "weight": weight,
                         "P@10 type+colour": mean(precision_at_k(
                             relevant_matrix(hits, frame, hit), 10)),
                         "P@10 type": mean(precision_at_k(
                             relevant_matrix(hits, frame, same_type), 10)),
                         "queries/s": round(len(ids) / seconds, 1)})

        t = time.perf_counter()
        add("photo alone", 0.0, fused_search_many(fused, image_dim, text_dim, image_vectors, None,
                                                  0.0, 10, GALLERY, exclude),
            time.perf_counter() - t)
        t = time.perf_counter()
        filtered = []
        for colour in sorted(set(asked)):
            rows_of = [n for n, c in enumerate(asked) if c == colour]
            found = loaded.index.search(image_vectors[rows_of], k=10,
                                        filters=Filters.of(split="train", colour=colour),
                                        exclude=[exclude[n] for n in rows_of])
            filtered += list(zip(rows_of, found))
        add("photo + colour filter", 0.0, [h for _, h in sorted(filtered, key=lambda x: x[0])],
            time.perf_counter() - t)
        t = time.perf_counter()
        add("words alone", 1.0, fused_search_many(fused, image_dim, text_dim, None, words, 1.0,
                                                  10, GALLERY, exclude),
            time.perf_counter() - t)
        for fusion in fusions:
            for weight in weights:
                t = time.perf_counter()
                hits = fused_search_many(fused, image_dim, text_dim, image_vectors, words, weight,
                                         10, GALLERY, exclude, fusion=fusion)
                add(f"photo + words ({fusion})", weight, hits, time.perf_counter() - t)
        return rows

    # ---- B: more-like-this, plain vs fused item embeddings ----------------------------------
    def scenario_b(ids, weights) -> list[dict[str, Any]]:
        image_vectors, own_text = vectors(ids)
        exclude = [[i] for i in ids]
        n_type = gallery["category"].value_counts()
        n_relevant = np.array([n_type.get(types[i], 0) for i in ids])
        same_type = lambda n, g: types[g] == types[ids[n]]  # noqa: E731
        same_colour = lambda n, g: colours[g] == colours[ids[n]]  # noqa: E731
        rows, per_query = [], {}
        for method, weight in [("photo alone", 0.0)] + [("photo + own title", w)
                                                        for w in weights]:
            t = time.perf_counter()
            hits = fused_search_many(fused, image_dim, text_dim, image_vectors,
                                     own_text if weight else None, weight, 100, GALLERY, exclude)
            seconds = time.perf_counter() - t
            relevant = relevant_matrix(hits, frame, same_type)
            p10 = precision_at_k(relevant, 10)
            per_query[(method, weight)] = p10
            rows.append({"method": method, "weight": weight, "P@10 type": mean(p10),
                         "mAP@100 type": mean(average_precision_at_k(relevant, n_relevant, 100)),
                         "P@10 colour": mean(precision_at_k(
                             relevant_matrix([type(h)(h.ids[:10], h.scores[:10]) for h in hits],
                                             frame, same_colour), 10)),
                         "queries/s": round(len(ids) / seconds, 1)})
        base = per_query[("photo alone", 0.0)]
        for row in rows[1:]:
            p = per_query[(row["method"], row["weight"])]
            row["queries better"] = float((p > base).mean())
            row["queries worse"] = float((p < base).mean())
        return rows

    # ---- C: words alone, typed queries --------------------------------------------------------
    def scenario_c(ids) -> list[dict[str, Any]]:
        from sklearn.feature_extraction.text import TfidfVectorizer

        triples = sorted({(genders[i], colours[i], types[i]) for i in ids if genders[i]})
        counts = gallery.groupby(["gender", "colour", "category"]).size()
        triples = [t for t in triples if counts.get(t, 0) >= 5]
        picks = rng.choice(len(triples), size=min(500, len(triples)), replace=False)
        triples = [triples[p] for p in sorted(picks)]
        texts = [f"{g} {c} {t}".lower() for g, c, t in triples]
        full = lambda n, g: (genders[g], colours[g], types[g]) == triples[n]  # noqa: E731
        type_colour = lambda n, g: (colours[g], types[g]) == triples[n][1:]  # noqa: E731
        rows = []
        t = time.perf_counter()
        words = text_index.text_model.embed_texts(texts)
        hits = fused_search_many(fused, image_dim, text_dim, None, words, 1.0, 10, GALLERY)
        seconds = time.perf_counter() - t
        rows.append(("words alone (MiniLM titles)", hits, seconds))
        t = time.perf_counter()
        vectorizer = TfidfVectorizer(sublinear_tf=True)
        matrix = vectorizer.fit_transform(gallery["title"].fillna(""))
        scores = (vectorizer.transform(texts) @ matrix.T).toarray()  # 500 x gallery, small
        top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        tfidf = [type(hits[0])([train_ids[j] for j in row], list(scores[n, row]))
                 for n, row in enumerate(top)]
        rows.append(("TF-IDF keywords (baseline)", tfidf, time.perf_counter() - t))
        out = []
        for method, found, seconds in rows:
            out.append({"method": method, "queries": len(texts),
                        "P@10 gender+colour+type": mean(precision_at_k(
                            relevant_matrix(found, frame, full), 10)),
                        "P@10 colour+type": mean(precision_at_k(
                            relevant_matrix(found, frame, type_colour), 10)),
                        "queries/s": round(len(texts) / seconds, 1)})
        return out, texts[:10]

    def best_weight(rows, method, metric):
        candidates = [r for r in rows if r["method"] == method]
        return max(candidates, key=lambda r: r[metric])["weight"]

    # tune on train queries, report on test queries
    tune_a_ids, tune_a_asked = colour_queries(tune_ids)
    log(f"tuning on {len(tune_ids)} train queries, weights {weights}")
    tune_a = scenario_a(tune_a_ids, tune_a_asked, weights)
    weight_a = {f: best_weight(tune_a, f"photo + words ({f})", "P@10 type+colour")
                for f in ("weighted", "rrf")}
    tune_b = scenario_b(tune_ids, weights)
    weight_b = best_weight(tune_b, "photo + own title", "P@10 type")

    test_a_ids, test_a_asked = colour_queries(test_ids)
    log(f"weights chosen on train: A {weight_a}, B {weight_b}; testing on {len(test_ids)}")
    test_a_all = scenario_a(test_a_ids, test_a_asked, weights)
    test_a = [r for r in test_a_all if r["method"] in ("photo alone", "photo + colour filter",
                                                       "words alone")
              or (r["method"].startswith("photo + words") and
                  r["weight"] == weight_a[r["method"].split("(")[1][:-1]])]
    log("A done")
    test_b_all = scenario_b(test_ids, weights)
    log("B done")
    test_b = [r for r in test_b_all if r["method"] == "photo alone" or r["weight"] == weight_b]
    test_c, examples = scenario_c(test_ids)

    # one-query latency through the public function (text embedding included)
    photo = project.store.image_path(test_ids[0]).read_bytes()
    search_with_text(project, photo, "red", k=10, index=name)
    t = time.perf_counter()
    for colour in colour_words[:20]:
        search_with_text(project, photo, colour.lower(), k=10, index=name)
    latency_ms = (time.perf_counter() - t) / 20 * 1000

    print_table(f"A. photo + another colour's word ({len(test_a_ids)} test queries; weights "
                f"tuned on train: {weight_a})", test_a)
    print_table(f"B. more-like-this ({len(test_ids)} test queries; title weight {weight_b}, "
                "tuned on train) -- inflated: titles name the type", test_b)
    print_table(f"C. words alone ({test_c[0]['queries']} typed queries, e.g. {examples[:3]})",
                test_c)
    print(f"text index: {summary.size} items, {summary.texts_embedded} titles embedded in "
          f"{build_seconds:.0f} s; one photo+words query {latency_ms:.1f} ms")
    print(write_results(f"text_bench-{name}", {
        "embedder": args.embedder, "gallery": len(train_ids), "test_queries": len(test_ids),
        "tune_queries": len(tune_ids), "weights_swept": list(weights),
        "weights_chosen": {"A": weight_a, "B": weight_b},
        "A_test": test_a, "B_test": test_b, "C_test": test_c, "C_examples": examples,
        "A_test_sweep": test_a_all, "B_test_sweep": test_b_all, "A_tune_sweep": tune_a,
        "B_tune_sweep": tune_b, "text_index_build_s": round(build_seconds, 1),
        "titles_embedded": summary.texts_embedded, "photo_plus_words_query_ms": round(latency_ms, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1)}))


if __name__ == "__main__":
    main()
