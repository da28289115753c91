"""Words that know the catalogue: "like this, but in red / for women / but sandals".

Gallery: the train products of the real catalogue (photos + titles); queries: test photos. Each
query photo (article type T, colour C, gender G) is asked for something the train gallery holds
>= 10 items of (drawn with a seeded generator):

* **colour** -- another colour C' of type T (words ``in <c'>``); hit = type T *and* colour C';
* **gender** -- another gender G' of type T (``for <g'>``); hit = type T *and* gender G';
* **type** -- another type T' of the same sub-category (``but <t'>``); hit = type T'.

Methods, P@10 each: the photo alone; today's weighted fusion of the photo and the words' MiniLM
embedding (w = 0.5); attribute-aware words (:mod:`lookalike.recommend.understood`: understood
values filter, the photo's category kept by a vote of its nearest products) and the same
without keeping the photo's category.

The vote depth (``TYPE_VOTES``) and whether to keep the photo's category are chosen on a
validation split carved from train (seeded; its ids go into the JSON; its items are excluded from
the gallery of the validation queries) and reported on test.

    python benchmarks/words_bench.py --quick                    # 150 queries a scenario
    python benchmarks/words_bench.py --image-size 112           # quicker embedding
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _beyond_common import PROJECT_DIR, N_PRODUCTS, index_name  # noqa: E402
from _common import peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.evaluate.metrics import mean  # noqa: E402
from lookalike.index.base import Filters  # noqa: E402
from lookalike.project import Project  # noqa: E402
from lookalike.recommend.text_search import (  # noqa: E402
    build_text_index,
    fused_search_many,
    load_text_index,
)
from lookalike.recommend.understood import search_understood  # noqa: E402
from lookalike.recommend.words import understand  # noqa: E402

GALLERY = Filters.of(split="train")
VOTES = (5, 10, 20)
MIN_ITEMS = 10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def open_project(embedder: str, image_size: int | None) -> tuple[Project, str]:
    """The shared products project with an exact index of ``embedder`` (at ``image_size``)."""
    project = Project(PROJECT_DIR)
    if len(project.store) < N_PRODUCTS:
        project.ingest("products", progress=True)
    name = index_name(embedder) + (f"-{image_size}" if image_size else "")
    options = {"image_size": image_size} if image_size else None
    if name not in project.indexes():
        project.index(embedder, kind="exact", name=name, embedder_options=options)
    build_text_index(project, index=name, progress=True)
    return project, name


def make_queries(ids, rows, counts, rng) -> dict[str, list[tuple[str, str, Any]]]:
    """scenario -> [(query id, words, target)] for the ids that have an option."""
    out: dict[str, list[tuple[str, str, Any]]] = {"colour": [], "gender": [], "type": []}
    by_type, by_sub = counts
    for item_id in ids:
        kind, colour, gender, sub = rows[item_id]
        options = sorted(c for (t, c), n in by_type["colour"].items()
                         if t == kind and n >= MIN_ITEMS and c != colour)
        if options:
            c = options[rng.integers(len(options))]
            out["colour"].append((item_id, f"in {c.lower()}", (kind, c)))
        options = sorted(g for (t, g), n in by_type["gender"].items()
                         if t == kind and n >= MIN_ITEMS and g != gender)
        if options:
            g = options[rng.integers(len(options))]
            out["gender"].append((item_id, f"for {g.lower()}", (kind, g)))
        options = sorted(t for (s, t), n in by_sub.items()
                         if s == sub and n >= MIN_ITEMS and t != kind)
        if options:
            t = options[rng.integers(len(options))]
            out["type"].append((item_id, f"but {t.lower()}", t))
    return out


def precision(found: list[list[str]], queries, scenario: str, rows) -> float:
    """Mean P@10 of the hit rule of ``scenario`` (``type+colour``: the asked type in the query
    photo's own colour -- does the photo still count?)."""
    values = []
    for ids, (qid, _, target) in zip(found, queries):
        if scenario == "type+colour":
            target = (target, rows[qid][1])
        hits = 0
        for item_id in ids[:10]:
            kind, colour, gender, _ = rows[item_id]
            if scenario in ("colour", "type+colour"):
                hits += (kind, colour) == target
            elif scenario == "gender":
                hits += (kind, gender) == target
            else:
                hits += kind == target
        values.append(hits / 10)
    return mean(values)


def run_methods(project, name, queries, scenario, rows, extra_exclude, settings) -> list[dict]:
    """P@10 of every method over one scenario's queries."""
    loaded = project.loaded_index(name)
    text_index = load_text_index(project, name)
    qids = [q[0] for q in queries]
    vectors = loaded.vectors_of(qids, project.store)
    exclude = [[q, *extra_exclude] for q in qids]
    vocabulary = project.vocabulary()
    rows_out = []

    def add(method: str, found: list[list[str]], seconds: float) -> None:
        row = {"scenario": scenario, "method": method, "queries": len(queries),
               "P@10": round(precision(found, queries, scenario, rows), 4)}
        if scenario == "type":
            row["P@10 type+photo colour"] = round(precision(found, queries, "type+colour",
                                                            rows), 4)
        rows_out.append({**row, "queries/s": round(len(queries) / max(seconds, 1e-9), 1)})

    t = time.perf_counter()
    hits = loaded.index.search(vectors, k=10, filters=GALLERY, exclude=exclude)
    add("photo alone", [h.ids for h in hits], time.perf_counter() - t)
    t = time.perf_counter()
    words = text_index.text_model.embed_texts([q[1] for q in queries])
    hits = fused_search_many(text_index.index, text_index.image_dim, text_index.text_dim,
                             vectors, words, 0.5, 10, GALLERY, exclude)
    add("today's fusion (w=0.5)", [h.ids for h in hits], time.perf_counter() - t)
    for label, keep, votes in settings:
        t = time.perf_counter()
        found = []
        for n, (qid, text, _) in enumerate(queries):
            meaning = understand(text, vocabulary)
            answer = search_understood(project, meaning, vector=vectors[n], k=10,
                                       filters=GALLERY, index=name, exclude=exclude[n],
                                       keep_type=keep, type_votes=votes)
            found.append([r.id for r in answer.results])
        add(label, found, time.perf_counter() - t)
    return rows_out


def gallery_counts(gallery, subs) -> tuple[dict[str, dict], dict]:
    """Item counts of (type, colour) and (type, gender), and of (sub-category, type)."""
    return ({"colour": gallery.groupby(["category", "colour"]).size().to_dict(),
             "gender": gallery.groupby(["category", "gender"]).size().to_dict()},
            gallery.assign(sub=subs.loc[gallery.index]).groupby(["sub", "category"])
            .size().to_dict())


def choose(val_rows: list[dict]) -> str:
    """The understood-words setting with the best mean P@10 over the scenarios (ties: the
    shorter name, i.e. the simpler setting)."""
    by_method: dict[str, list[float]] = {}
    for r in val_rows:
        if r["method"].startswith("words understood"):
            by_method.setdefault(r["method"], []).append(r["P@10"])
    return max(by_method, key=lambda m: (round(mean(by_method[m]), 4), -len(m)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("--image-size", type=int, default=None,
                        help="embed at this size (e.g. 112: quicker; default: the model's)")
    parser.add_argument("--quick", action="store_true", help="150 queries a scenario")
    parser.add_argument("--queries", type=int, default=0, help="queries a scenario (0: all)")
    parser.add_argument("--val-size", type=int, default=1500, help="train items carved out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    limit = args.queries or (150 if args.quick else 0)

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    project, name = open_project(args.embedder, args.image_size)
    loaded = project.loaded_index(name)
    frame = project.store.frame()
    frame = frame[frame.index.isin(set(loaded.hashes))]
    subs = frame["sub_category"] if "sub_category" in frame else frame["category"]
    rows = {i: (str(t), str(c), str(g), str(s)) for i, t, c, g, s in zip(
        frame.index, frame["category"], frame["colour"], frame["gender"], subs)}
    train = sorted(frame.index[frame["split"] == "train"])
    test = sorted(frame.index[frame["split"] == "test"])
    val = sorted(rng.choice(train, size=min(args.val_size, len(train) // 10), replace=False))
    val_set = set(val)
    counts = gallery_counts(frame.loc[[i for i in train if i not in val_set]], subs)

    def pick(queries):
        out = {}
        for scenario, qs in queries.items():
            if limit and len(qs) > limit:
                qs = [qs[n] for n in sorted(rng.choice(len(qs), size=limit, replace=False))]
            out[scenario] = qs
        return out

    val_queries = pick(make_queries(val, rows, counts, rng))
    settings = [(f"words understood (keep type, {v} votes)", True, v) for v in VOTES]
    settings.append(("words understood (no keep type)", False, VOTES[0]))
    log(f"validation: {', '.join(f'{s} {len(q)}' for s, q in val_queries.items())} queries")
    val_rows = []
    for scenario, queries in val_queries.items():
        val_rows += run_methods(project, name, queries, scenario, rows, val, settings)
    chosen = choose(val_rows)
    chosen_setting = next(s for s in settings if s[0] == chosen)
    print_table("validation (train split carved out)", val_rows)
    log(f"chosen on validation: {chosen}")

    counts_test = gallery_counts(frame.loc[train], subs)
    test_queries = pick(make_queries(test, rows, counts_test, rng))
    test_rows = []
    for scenario, queries in test_queries.items():
        test_rows += run_methods(project, name, queries, scenario, rows, [],
                                 [chosen_setting, ("words understood (no keep type)", False,
                                                   chosen_setting[2])]
                                 if chosen_setting[1] else [chosen_setting])
    print_table(f"test ({args.embedder}, image size {args.image_size or 'default'})", test_rows)
    examples = {s: [q[1] for q in qs[:5]] for s, qs in test_queries.items()}
    suffix = f"-{args.queries}q" if args.queries else "-quick" if args.quick else ""
    print(write_results(f"words_bench-{name}{suffix}", {
        "embedder": args.embedder, "image_size": args.image_size, "index": name,
        "gallery": len(train), "validation_ids": val, "validation": val_rows,
        "chosen_on_validation": chosen, "test": test_rows, "examples": examples,
        "min_items": MIN_ITEMS, "votes_swept": list(VOTES), "queries_per_scenario": limit or "all",
        "command": "python " + " ".join(sys.argv), "peak_rss_mb": round(peak_rss_mb(), 1)},
        quick=bool(limit), seeds=[args.seed]))


if __name__ == "__main__":
    main()
