"""Binary codes vs float search: paper 000's hash layer (eqs. 7-8) and LSH (paper 001), measured.

For each dataset (class-match protocol: test queries against the train gallery):

- ``float32 exact``: the trained ``cnn`` embedder's features in the ``exact`` index (the baseline);
- ``cnn-hash{b}``: a hash layer of ``b`` bits added to that CNN and trained jointly with it for
  ``--hash-epochs`` epochs, searched in the ``binary`` index by Hamming distance only, and with
  the top ``--candidates`` re-ranked by Euclidean distance on the float features (floats
  memory-mapped from disk, as in deployment);
- ``lsh{b}``: random-hyperplane LSH over the same CNN features, with and without re-ranking.

Columns: P@10 and mAP@100, vector bytes per item (what the searched representation costs),
measured index bytes per item in RAM (``memory_bytes()``, ids and attributes included), and
queries per second through ``VectorIndex.search`` (k=100, all queries in one call).
Finally a 1M-code FAISS ``IndexBinaryFlat`` scan is timed beside a 1M x 128 float32 flat scan.

Trained models are cached in ``benchmarks/.cache/hash_bench/`` (``--retrain`` ignores them); the
training time of the default ``cnn`` config is reported (the budget is 15 minutes on 2 cores).

    python benchmarks/hash_bench.py                               # both datasets, all bits
    python benchmarks/hash_bench.py --datasets fashion-mnist --bits 64
    python benchmarks/hash_bench.py --scan-only                   # just the 1M-code timing
    python benchmarks/hash_bench.py --datasets fashion-mnist --cnn-option head=cosine \
        --cnn-option margin=0.2 --cnn-option augment=flip+shift --name hash_bench-fmnist-cosine

Writes ``benchmarks/results/hash_bench.json`` and ``hash_bench.md``.

``--select`` runs the benchmark protocol for the float ``cnn`` instead (no hash layer, no scan):
the :data:`CNN_CANDIDATES` configs (or ``--candidate`` strings) train on a stratified sample of
train-minus-validation (the validation split is carved from train, seeded and saved under
``benchmarks/results/splits/``), each with and without ``test_time_flip``, scored on validation
queries against that sample; the best trains on the full train split once per ``--seeds`` seed
and reads the test split once each (``hash_bench-<dataset>-protocol.json``):

    python benchmarks/hash_bench.py --select --datasets fashion-mnist --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.evaluate import metrics  # noqa: E402
from lookalike.evaluate.report import markdown_table  # noqa: E402
from lookalike.index.base import create_index, load_index  # noqa: E402
from lookalike.models import base  # noqa: E402
from lookalike.commands.train import parse_option  # noqa: E402
from lookalike.models.cnn import CNNEmbedder  # noqa: E402
from lookalike.models.datasets import (  # noqa: E402
    ImageTensors,
    fashion_mnist_tensors,
    frame_tensors,
)
from lookalike.models.hashing import CNNHashEmbedder, HyperplaneCoder  # noqa: E402
from lookalike.storage import atomic_write_text  # noqa: E402

NAME = "hash_bench"
CACHE = Path(__file__).resolve().parent / ".cache" / NAME
TARGETS = {"fashion-mnist": {"P@10": 0.93, "mAP@100": 0.90}, "products": {"P@10": 0.85}}


#: The cnn configs ``--select`` compares (fixed epochs; the time budget is a safety net only).
CNN_CANDIDATES = (
    "head=cosine,margin=0.2,convs_per_block=2,augment=flip+shift,epochs=12,max_minutes=120",
    "head=softmax,augment=flip,epochs=12,max_minutes=120",
)

CNN_MODEL_OPTIONS = {"activation", "fc_activation", "conv_channels", "hidden", "embedding_dim",
                     "batch_norm", "dropout", "convs_per_block", "head", "cosine_scale", "margin",
                     "seed"}


# ---- data ---------------------------------------------------------------------------------------
def load(dataset: str, limit: int | None = None
         ) -> tuple[ImageTensors, list[str], ImageTensors, list[str], dict[str, Any]]:
    """(train tensors, train labels, test tensors, test labels, cnn options) of one dataset;
    ``limit`` samples that many train (and a tenth as many test) items for a quick run."""
    query_limit = None if limit is None else max(1, limit // 10)
    if dataset == "fashion-mnist":
        train = fashion_mnist_tensors("train", limit=limit)
        test = fashion_mnist_tensors("test", limit=query_limit)
        labels = [str(v) for v in train.labels.tolist()], [str(v) for v in test.labels.tolist()]
        return train, labels[0], test, labels[1], {"image_size": [28, 28], "channels": 1}
    if dataset == "products":
        from lookalike.catalogue.sources import load_products_frame

        train_frame = load_products_frame(split="train")
        test_frame = load_products_frame(split="test")
        if limit is not None:
            train_frame = train_frame.sample(n=min(limit, len(train_frame)), random_state=0)
            test_frame = test_frame.sample(n=min(query_limit, len(test_frame)), random_state=0)
        train = frame_tensors(train_frame, "article_type")
        # test-only classes have no label code; queries need only their names
        test = frame_tensors(test_frame, None)
        return (train, train_frame["article_type"].astype(str).tolist(), test,
                test_frame["article_type"].astype(str).tolist(), {"label_column": "article_type"})
    raise SystemExit(f"unknown dataset {dataset!r}; use fashion-mnist or products")


def cached(folder: Path, key: dict[str, Any], build: Any, retrain: bool
           ) -> tuple[Any, dict[str, Any]]:
    """Load the model saved under ``folder`` for ``key``, or ``build()`` and save it.

    Returns the model and its training record (seconds, stop reason, per-epoch history)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = folder.with_name(f"{folder.name}-{digest}")
    if not (path / "bench.json").is_file() or retrain:
        started = time.perf_counter()
        model = build()
        seconds = time.perf_counter() - started
        shutil.rmtree(path, ignore_errors=True)
        model.save(path)
        atomic_write_text(path / "bench.json", json.dumps({"key": key, "train_seconds": seconds}))
    record = json.loads((path / "training.json").read_text())
    record["train_seconds"] = json.loads((path / "bench.json").read_text())["train_seconds"]
    return base.load(path), record


# ---- measuring ------------------------------------------------------------------------------------
def measure(index: Any, queries: np.ndarray, query_labels: list[str],
            gallery_label: dict[str, str], n_relevant: np.ndarray, k: int = 100) -> dict[str, Any]:
    started = time.perf_counter()
    hits = index.search(queries, k)
    seconds = time.perf_counter() - started
    relevant = np.zeros((len(queries), k), dtype=bool)
    for q, result in enumerate(hits):
        row = [gallery_label[i] == query_labels[q] for i in result.ids]
        relevant[q, :len(row)] = row
    per_query = metrics.per_query_metrics(relevant, n_relevant, ks=(1, 10), map_at=100)
    means = metrics.mean_metrics(per_query)
    return {"P@10": means["P@10"], "mAP@100": means["mAP@100"],
            "index_bytes_per_item": index.memory_bytes() / len(index),
            "queries_per_s": len(queries) / seconds}


def binary_rows(method: str, coder: HyperplaneCoder, gallery: np.ndarray, queries: np.ndarray,
                ids: list[str], query_labels: list[str], gallery_label: dict[str, str],
                n_relevant: np.ndarray, candidates: int, workdir: Path) -> list[dict[str, Any]]:
    """Hamming-only and Hamming + re-rank rows for one coder (re-rank floats memory-mapped)."""
    dim = gallery.shape[1]
    codes_only = create_index("binary", dim, coder=coder, rerank=False, store_vectors=False)
    codes_only.add(ids, gallery)
    rows = [{"method": method, "search": "hamming", "vector_bytes": coder.bits // 8,
             **measure(codes_only, queries, query_labels, gallery_label, n_relevant)}]
    reranked = create_index("binary", dim, coder=coder, candidates=candidates)
    reranked.add(ids, gallery)
    folder = workdir / method
    reranked.save(folder)
    mapped = load_index(folder, mmap=True)
    rows.append({"method": method, "search": f"hamming top-{candidates} + euclidean re-rank",
                 "vector_bytes": coder.bits // 8, "disk_bytes": dim * 4,
                 **measure(mapped, queries, query_labels, gallery_label, n_relevant),
                 "index_bytes_per_item_floats_in_ram": reranked.memory_bytes() / len(reranked)})
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def run_dataset(dataset: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict]:
    train, train_labels, test, test_labels, cnn_options = load(dataset, args.limit)
    print(f"{dataset}: {len(train)} gallery, {len(test)} queries", flush=True)
    training = {"threads": args.threads, "progress": args.progress}
    if args.epochs is not None:
        training["epochs"] = args.epochs
    for text in args.cnn_option:  # model options go to the CNN, the rest to its training run
        key, value = parse_option(text)
        (cnn_options if key in CNN_MODEL_OPTIONS else training)[key] = value

    cnn, cnn_record = cached(
        CACHE / dataset / "cnn", {"cnn": cnn_options, "training": training, "limit": args.limit},
        lambda: CNNEmbedder(**cnn_options).fit_tensors(train, **training), args.retrain)
    print(f"  cnn: trained in {cnn_record['train_seconds']:.0f} s, "
          f"{len(cnn_record['history'])} epochs ({cnn_record['stopped']})", flush=True)
    ids = [str(i) for i in range(len(train))]
    gallery_label = dict(zip(ids, train_labels))
    counts: dict[str, int] = {}
    for label in train_labels:
        counts[label] = counts.get(label, 0) + 1
    n_relevant = np.array([counts.get(label, 0) for label in test_labels])
    gallery = cnn.embed_tensors(train.images)
    queries = cnn.embed_tensors(test.images)

    exact = create_index("exact", cnn.dim)
    exact.add(ids, gallery)
    rows = [{"method": "cnn float32", "search": "exact", "vector_bytes": cnn.dim * 4,
             **measure(exact, queries, test_labels, gallery_label, n_relevant)}]
    print(f"  float: P@10 {rows[0]['P@10']:.3f} mAP@100 {rows[0]['mAP@100']:.3f}", flush=True)
    workdir = CACHE / dataset / "indexes"
    models = {"cnn": cnn_record}
    for bits in args.bits:
        hash_training = {**training, "epochs": args.hash_epochs,
                         "learning_rate": args.hash_learning_rate}
        hashed, models[f"cnn-hash{bits}"] = cached(
            CACHE / dataset / f"cnn-hash{bits}",
            {"from": cnn.embedder_id, "bits": bits, "training": hash_training},
            lambda bits=bits: CNNHashEmbedder.from_cnn(cnn, bits).fit_tensors(
                train, **hash_training), args.retrain)
        hash_gallery = hashed.embed_tensors(train.images)
        hash_queries = hashed.embed_tensors(test.images)
        new = binary_rows(f"cnn-hash{bits}", hashed.coder(), hash_gallery, hash_queries, ids,
                          test_labels, gallery_label, n_relevant, args.candidates, workdir)
        new += binary_rows(f"lsh{bits}", HyperplaneCoder.random(cnn.dim, bits, seed=args.seed),
                           gallery, queries, ids, test_labels, gallery_label, n_relevant,
                           args.candidates, workdir)
        for row in new:
            print(f"  {row['method']:<12} {row['search']:<40} P@10 {row['P@10']:.3f} "
                  f"mAP@100 {row['mAP@100']:.3f} {row['queries_per_s']:.0f} q/s", flush=True)
        rows += new
    for row in rows:
        row["dataset"] = dataset
        row["P@10 vs float"] = row["P@10"] - rows[0]["P@10"]
        row["memory_ratio"] = rows[0]["vector_bytes"] / row["vector_bytes"]
    return rows, models


def select_cnn(dataset: str, args: argparse.Namespace) -> Path:
    """The protocol for the float ``cnn`` of ``dataset`` (see the module docstring)."""
    from _protocol import select_then_test

    train, train_labels, test, test_labels, base_options = load(dataset, args.limit)

    def fit(candidate: str, rows: np.ndarray, seed: int) -> CNNEmbedder:
        options, training = dict(base_options), {"threads": args.threads,
                                                 "progress": args.progress}
        for text in candidate.split(","):
            key, value = parse_option(text)
            (options if key in CNN_MODEL_OPTIONS else training)[key] = value
        options["seed"] = seed
        rows_key = hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:12]
        model, record = cached(CACHE / dataset / "protocol-cnn",
                               {"cnn": options, "training": training, "rows": rows_key,
                                "limit": args.limit},
                               lambda: CNNEmbedder(**options).fit_tensors(train.subset(rows),
                                                                          **training),
                               args.retrain)
        print(f"  cnn {candidate} seed {seed}: {record['train_seconds']:.0f} s, "
              f"{len(record['history'])} epochs ({record['stopped']})", flush=True)
        return model

    def embed(model: CNNEmbedder, variant: str, split: str, rows: np.ndarray) -> np.ndarray:
        model.test_time_flip = variant == "test_time_flip"
        images = (train if split == "train" else test).images
        return model.embed_tensors(images[torch.as_tensor(rows)])

    quick = args.limit is not None
    return select_then_test(
        name=args.name or f"{NAME}-{dataset}-protocol{'-quick' if quick else ''}",
        dataset=dataset if not quick else f"{dataset}-limit{args.limit}",
        train_ids=[str(i) for i in range(len(train))], train_labels=train_labels,
        test_labels=test_labels, candidates=args.candidate or list(CNN_CANDIDATES),
        variants=["plain", "test_time_flip"], fit=fit, embed=embed, seeds=args.seeds,
        select_items=args.select_items, quick=quick,
        extra={"model": "cnn (float32, exact search)", "threads": args.threads,
               "limit": args.limit})


def scan_timing(n: int, bits: int, dim: int, n_queries: int, seed: int) -> list[dict[str, Any]]:
    """ms per query of a FAISS flat Hamming scan over ``n`` codes, beside a float32 flat scan.

    The vectors are the index benchmark's jittered real vectors (benchmarks/index_data.py:
    PCA-256 of real photos plus spectrum-shaped noise); the codes are their random-hyperplane
    (LSH) bits, so the scan sees real code statistics. ``dim`` is kept for the float row.
    """
    import faiss
    from index_data import jittered_set

    from lookalike.models.hashing import HyperplaneCoder

    base, queries, _ = jittered_set(n, n_queries=max(n_queries, 1000), seed=seed)
    queries = queries[:n_queries]
    coder = HyperplaneCoder.random(base.shape[1], bits, seed=seed)
    out = []
    binary = faiss.IndexBinaryFlat(bits)
    for start in range(0, n, 100_000):
        binary.add(coder.codes(base[start:start + 100_000]))
    query_codes = coder.codes(queries)
    out.append({"scan": f"IndexBinaryFlat {bits}-bit", "items": n, "bytes_per_item": bits // 8,
                **_time_scan(binary, query_codes)})
    del binary
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    out.append({"scan": f"IndexFlatIP float32 {base.shape[1]}-d", "items": n,
                "bytes_per_item": base.shape[1] * 4, **_time_scan(flat, queries)})
    return out


def _time_scan(index: Any, queries: np.ndarray, k: int = 10) -> dict[str, float]:
    index.search(queries[:4], k)  # warm-up
    cpu = time.process_time()
    started = time.perf_counter()
    index.search(queries, k)
    batch = (time.perf_counter() - started) / len(queries)
    batch_cpu = (time.process_time() - cpu) / len(queries)
    singles = queries[:50]
    started = time.perf_counter()
    for query in singles:
        index.search(query[None], k)
    single = (time.perf_counter() - started) / len(singles)
    return {"ms_per_query_batched": batch * 1e3, "ms_per_query_single": single * 1e3,
            "cpu_ms_per_query_batched": batch_cpu * 1e3,
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fashion-mnist,products")
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--epochs", type=int, default=None, help="cnn epochs (default config)")
    parser.add_argument("--cnn-option", action="append", default=[],
                        help="KEY=VALUE for the cnn (model option or training option; "
                             "repeatable), e.g. head=cosine or augment=flip+shift")
    parser.add_argument("--hash-epochs", type=int, default=3)
    parser.add_argument("--hash-learning-rate", type=float, default=1e-3)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--scan-items", type=int, default=1_000_000)
    parser.add_argument("--scan-only", action="store_true")
    parser.add_argument("--limit", type=int, default=None,
                        help="quick run: this many gallery items (a tenth as many queries); "
                             "results go to hash_bench-quick.*")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--name", default=None, help="results file stem (default hash_bench, "
                        "or hash_bench-quick with --limit)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--select", action="store_true",
                        help="the protocol for the float cnn: choose on validation, then "
                             "--seeds on the full train split, test read once per seed")
    parser.add_argument("--candidate", action="append", default=[],
                        help="--select: a cnn config 'k=v,k=v' (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--select-items", type=int, default=12000,
                        help="--select: stratified sample of train-minus-validation the "
                             "candidates train on (also their gallery)")
    args = parser.parse_args()
    if args.select:
        torch.set_num_threads(args.threads)
        for dataset in args.datasets.split(","):
            print(f"wrote {select_cnn(dataset, args)}")
        return

    import faiss

    faiss.omp_set_num_threads(args.threads)  # this script's process only
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    if not args.scan_only:
        for dataset in args.datasets.split(","):
            dataset_rows, dataset_models = run_dataset(dataset, args)
            rows += dataset_rows
            models[dataset] = dataset_models
    scans = scan_timing(args.scan_items, 64, 128, 1000, args.seed)
    columns = ["dataset", "method", "search", "P@10", "P@10 vs float", "mAP@100", "vector_bytes",
               "memory_ratio", "index_bytes_per_item", "queries_per_s"]
    if rows:
        print_table("Class-match retrieval: float vs binary codes", [
            {c: row.get(c) for c in columns} for row in rows])
    print_table(f"Scan of {args.scan_items:,} items (2 threads)", scans)
    targets = {}
    for dataset, goal in TARGETS.items():
        float_row = next((r for r in rows if r["dataset"] == dataset and r["search"] == "exact"),
                         None)
        if float_row:
            targets[dataset] = {name: {"target": value, "measured": float_row[name],
                                       "met": float_row[name] >= value}
                                for name, value in goal.items()}
    name = args.name or (NAME if args.limit is None else f"{NAME}-quick")
    previous_path = RESULTS / f"{name}.json"
    kept = []
    if args.scan_only and previous_path.is_file():
        # a scan-only run re-times the scan and keeps the retrieval rows of the last full run
        previous = json.loads(previous_path.read_text())
        rows, models = previous.get("rows", []), previous.get("models", {})
        targets = previous.get("targets", {})
        kept = ["rows", "models", "targets"] if rows else []
    markdown = "## Float vs binary codes (class match, test vs train)\n\n"
    markdown += markdown_table([{c: row.get(c) for c in columns} for row in rows]) if rows else ""
    markdown += f"\n## FAISS scan of {args.scan_items:,} items\n\n" + markdown_table(scans)
    atomic_write_text(RESULTS / f"{name}.md", markdown)
    path = write_results(name, {"settings": vars(args), "rows": rows, "scan": scans,
                                "models": models, "targets": targets,
                                "kept_from_earlier_run": kept, "peak_rss_mb": peak_rss_mb()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
