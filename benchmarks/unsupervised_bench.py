"""Unsupervised embedders (paper 001's autoencoders, paper 004's InfoGAN) vs raw pixels.

Class-match retrieval, test queries against the train gallery, measured with
``lookalike.evaluate.retrieval.evaluate_retrieval`` (P@10 and mAP@100):

- ``fashion-mnist``: 10,000 test queries vs the 60,000 training images, relevant = same class;
- ``products``: the official split of the products Parquet, relevant = same ``article_type``.

Every model trains on the gallery images only, without labels, with its registry default
training config (each capped at 14 minutes by ``max_minutes``; ``--max-minutes`` /
``--epochs`` override). The ``pixels`` embedder (the registry default: 32x32 RGB, cosine) is
measured in the same run as the baseline. Trained models are cached in
``benchmarks/.cache/unsupervised/`` keyed by their settings (``--retrain`` ignores the cache),
so a re-run only re-measures retrieval.

    python benchmarks/unsupervised_bench.py                      # both datasets, all models
    python benchmarks/unsupervised_bench.py --datasets fashion-mnist --models conv-autoencoder
    python benchmarks/unsupervised_bench.py --gan-size 30 40     # InfoGAN on half-size products

Writes ``benchmarks/results/unsupervised_bench.json`` and ``unsupervised_bench.md``.

``--select`` runs the benchmark protocol for one model family (``--models``, first one): its
:data:`SELECT_CANDIDATES` (or ``--candidate`` strings) train without labels on a stratified
sample of train-minus-validation (the validation split is carved from train, seeded, saved under
``benchmarks/results/splits/``) and are scored on validation queries against that sample; the
best trains on the full train split once per ``--seeds`` seed and reads the test split once each
(``unsupervised_bench-<dataset>-<model>-protocol.json``):

    python benchmarks/unsupervised_bench.py --select --datasets fashion-mnist \
        --models conv-autoencoder --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.evaluate.report import markdown_table  # noqa: E402
from lookalike.evaluate.retrieval import evaluate_retrieval  # noqa: E402
from lookalike.models import base  # noqa: E402
from lookalike.models.datasets import (  # noqa: E402
    PRODUCT_SIZE,
    ImageTensors,
    array_images,
    fashion_mnist_tensors,
    frame_tensors,
)
from lookalike.storage import atomic_write_text  # noqa: E402

NAME = "unsupervised_bench"
CACHE = Path(__file__).resolve().parent / ".cache" / "unsupervised"
MODELS = ("autoencoder", "conv-autoencoder", "infogan")
#: The issue's target and the paper-004 reference (UT-Zap50K shoes, class-match precision).
TARGETS = {"fashion-mnist": {"P@10": 0.86}}
#: Candidate configs of ``--select`` per model ('k=v,k=v': model options, then training options).
SELECT_CANDIDATES = {
    "conv-autoencoder": ("epochs=10,max_minutes=120",
                         "epochs=10,max_minutes=120,augment=flip+shift"),
    "autoencoder": ("epochs=10,max_minutes=120",),
    "infogan": ("epochs=10,max_minutes=120",),
}
PAPER_004 = {"infogan": 0.84, "best pretrained (ResNet152)": 0.82}


# ---- data -------------------------------------------------------------------------------------------
class Dataset:
    """Gallery (train) and query (test) images with their class labels as strings."""

    def __init__(self, name: str, limit: int | None) -> None:
        self.name = name
        query_limit = None if limit is None else max(1, limit // 6)
        if name == "fashion-mnist":
            self.train = fashion_mnist_tensors("train", limit=limit)
            self.test = fashion_mnist_tensors("test", limit=query_limit)
            self.train_labels = [self.train.classes[i] for i in self.train.labels.tolist()]
            self.test_labels = [self.test.classes[i] for i in self.test.labels.tolist()]
            self.model_options: dict[str, Any] = {"image_size": [28, 28], "channels": 1}
            self.class_column = "label"
            self._frames = None
        elif name == "products":
            from lookalike.catalogue.sources import load_products_frame

            train = load_products_frame(split="train")
            test = load_products_frame(split="test")
            if limit is not None:
                train = train.sample(n=min(limit, len(train)), random_state=0).sort_index()
                test = test.sample(n=min(query_limit, len(test)), random_state=0).sort_index()
            self._frames = (train, test)
            self.train, self.test = frame_tensors(train, None), frame_tensors(test, None)
            self.train_labels = train["article_type"].astype(str).tolist()
            self.test_labels = test["article_type"].astype(str).tolist()
            self.model_options = {}
            self.class_column = "article_type"
        else:
            raise SystemExit(f"unknown dataset {name!r}; use fashion-mnist or products")

    def at_size(self, size: tuple[int, int]) -> tuple[ImageTensors, ImageTensors]:
        """Train and test tensors decoded at another size (products only)."""
        if self._frames is None or tuple(size) == PRODUCT_SIZE:
            return self.train, self.test
        return (frame_tensors(self._frames[0], None, size=size),
                frame_tensors(self._frames[1], None, size=size))

    def pil(self, which: str) -> Any:
        """The split's images as PIL images (a generator for products: decoded on the fly)."""
        if self._frames is None:
            data = self.train if which == "train" else self.test
            return array_images(data.images[:, 0].numpy())
        from lookalike.catalogue.images import decode_image

        frame = self._frames[0 if which == "train" else 1]
        return (decode_image(blob) for blob in frame["image_jpeg"])


# ---- models -----------------------------------------------------------------------------------------
def cached_model(dataset: str, kind: str, options: dict[str, Any], training: dict[str, Any],
                 train: ImageTensors, limit: Any, retrain: bool
                 ) -> tuple[Any, dict[str, Any]]:
    """The model trained with these settings: loaded from the cache, or trained and saved."""
    key = {"kind": kind, "options": options, "training": training, "limit": limit,
           "items": len(train)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    folder = CACHE / dataset / f"{kind}-{digest}"
    if retrain or not (folder / "bench.json").is_file():
        print(f"  training {kind} on {len(train):,} images ...", flush=True)
        started = time.perf_counter()
        model = base.create(kind, **options).fit_tensors(
            train, checkpoint_dir=folder / "checkpoints", resume=not retrain, **training)
        seconds = time.perf_counter() - started
        shutil.rmtree(folder / "model", ignore_errors=True)
        model.save(folder / "model")
        atomic_write_text(folder / "bench.json", json.dumps({"key": key, "train_seconds": seconds}))
    record = json.loads((folder / "model" / "training.json").read_text())
    record["train_seconds"] = json.loads((folder / "bench.json").read_text())["train_seconds"]
    return base.load(folder / "model"), record


def evaluate(name: str, queries: np.ndarray, gallery: np.ndarray, data: Dataset
             ) -> dict[str, Any]:
    report = evaluate_retrieval(queries, data.test_labels, gallery, data.train_labels,
                                ks=(1, 10), map_at=100, class_column=data.class_column)
    return {"dataset": data.name, "method": name, "dim": int(gallery.shape[1]),
            "P@1": report.metrics["P@1"], "P@10": report.metrics["P@10"],
            "mAP@100": report.metrics["mAP@100"], "queries": report.n_queries,
            "gallery": report.n_gallery}


def run_dataset(name: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict]:
    data = Dataset(name, args.limit)
    print(f"{name}: {len(data.train):,} gallery, {len(data.test):,} queries", flush=True)
    rows = []

    pixels = base.create("pixels")
    started = time.perf_counter()
    gallery = pixels.embed(data.pil("train"))
    queries = pixels.embed(data.pil("test"))
    embed_ms = (time.perf_counter() - started) * 1e3 / (len(gallery) + len(queries))
    rows.append({**evaluate("pixels (baseline)", queries, gallery, data),
                 "embed_ms_per_image": embed_ms})
    print(f"  pixels: P@10 {rows[-1]['P@10']:.3f}", flush=True)

    training: dict[str, Any] = {"threads": args.threads, "progress": args.progress}
    if args.max_minutes is not None:
        training["max_minutes"] = args.max_minutes
    if args.epochs is not None:
        training["epochs"] = args.epochs
    records = {}
    for kind in args.models:
        options = dict(data.model_options)
        train, test = data.train, data.test
        if kind == "infogan":
            options["categories"] = args.categories
            if name == "products" and args.gan_size is not None:
                options["image_size"] = list(args.gan_size)
                train, test = data.at_size(tuple(args.gan_size))
        model, record = cached_model(name, kind, options, training, train, args.limit,
                                     args.retrain)
        started = time.perf_counter()
        gallery = model.embed_tensors(train.images)
        queries = model.embed_tensors(test.images)
        embed_ms = (time.perf_counter() - started) * 1e3 / (len(gallery) + len(queries))
        history = record["history"]
        rows.append({**evaluate(kind, queries, gallery, data), "embed_ms_per_image": embed_ms,
                     "train_minutes": record["train_seconds"] / 60, "epochs": len(history),
                     "best_epoch": record["best_epoch"], "stopped": record["stopped"],
                     "image_size": "x".join(str(v) for v in model.image_size)})
        records[kind] = {"config": model.config(), "embedder_id": model.embedder_id, **record}
        print(f"  {kind}: P@10 {rows[-1]['P@10']:.3f} mAP@100 {rows[-1]['mAP@100']:.3f} "
              f"({len(history)} epochs, {record['train_seconds'] / 60:.1f} min, "
              f"{record['stopped']})", flush=True)
    for row in rows:
        row["P@10 vs pixels"] = row["P@10"] - rows[0]["P@10"]
    return rows, records


def select_model(name: str, kind: str, args: argparse.Namespace) -> Path:
    """The protocol for ``kind`` on dataset ``name`` (see the module docstring)."""
    import inspect

    from _protocol import select_then_test

    data = Dataset(name, args.limit)
    accepts = set(inspect.signature(base.embedder_class(kind).__init__).parameters)

    def fit(candidate: str, rows: np.ndarray, seed: int) -> Any:
        from lookalike.commands.train import parse_option

        options = {**data.model_options, "seed": seed}
        training: dict[str, Any] = {"threads": args.threads, "progress": args.progress}
        for text in filter(None, candidate.split(",")):
            key, value = parse_option(text)
            (options if key in accepts else training)[key] = value
        subset = data.train.subset(rows)
        rows_key = hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:12]
        # the rows go into the cache key through its ``limit`` slot (not a training option)
        model, record = cached_model(name, kind, options, training, subset,
                                     {"limit": args.limit, "rows": rows_key}, args.retrain)
        print(f"  {kind} {candidate} seed {seed}: {record['train_seconds']:.0f} s, "
              f"{len(record['history'])} epochs ({record['stopped']})", flush=True)
        return model

    def embed(model: Any, variant: str, split: str, rows: np.ndarray) -> np.ndarray:
        images = (data.train if split == "train" else data.test).images
        return model.embed_tensors(images[torch.as_tensor(rows)])

    quick = args.limit is not None
    train_labels, test_labels = data.train_labels, data.test_labels
    if name == "fashion-mnist":  # labels as codes, as hash_bench.py: the same saved split file
        train_labels = [str(v) for v in data.train.labels.tolist()]
        test_labels = [str(v) for v in data.test.labels.tolist()]
    return select_then_test(
        name=args.name or f"{NAME}-{name}-{kind}-protocol{'-quick' if quick else ''}",
        dataset=name if not quick else f"{name}-limit{args.limit}",
        train_ids=[str(i) for i in range(len(data.train))], train_labels=train_labels,
        test_labels=test_labels, candidates=args.candidate or list(SELECT_CANDIDATES[kind]),
        variants=["plain"], fit=fit, embed=embed, seeds=args.seeds,
        select_items=args.select_items, quick=quick,
        extra={"model": kind, "labels_used_for_training": False, "threads": args.threads,
               "limit": args.limit})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion-mnist", "products"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="override every model's time budget (default config: 14)")
    parser.add_argument("--categories", type=int, default=10,
                        help="InfoGAN categorical code size (a guess of the class count)")
    parser.add_argument("--gan-size", type=int, nargs=2, default=None, metavar=("W", "H"),
                        help="train the products InfoGAN at this size instead of 60x80")
    parser.add_argument("--limit", type=int, default=None,
                        help="quick run: this many gallery items (a sixth as many queries)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--name", default=None)
    parser.add_argument("--select", action="store_true",
                        help="the protocol: choose on validation, then --seeds on the full "
                             "train split, test read once per seed")
    parser.add_argument("--candidate", action="append", default=[],
                        help="--select: a config 'k=v,k=v' (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--select-items", type=int, default=12000)
    args = parser.parse_args()
    if args.select:
        torch.set_num_threads(args.threads)
        for dataset in args.datasets:
            print(f"wrote {select_model(dataset, args.models[0], args)}")
        return

    import faiss

    faiss.omp_set_num_threads(args.threads)  # this script's process only
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    models: dict[str, Any] = {}
    for dataset in args.datasets:
        dataset_rows, models[dataset] = run_dataset(dataset, args)
        rows += dataset_rows

    columns = ["dataset", "method", "dim", "image_size", "P@1", "P@10", "P@10 vs pixels",
               "mAP@100", "train_minutes", "epochs", "best_epoch", "stopped",
               "embed_ms_per_image"]
    table = [{c: row.get(c) for c in columns} for row in rows]
    print_table("Unsupervised embedders: class-match retrieval, test vs train", table)
    targets = {}
    for dataset, goal in TARGETS.items():
        learned = [r for r in rows if r["dataset"] == dataset and r["method"] in MODELS]
        if learned:
            best = max(learned, key=lambda r: r["P@10"])
            targets[dataset] = {metric: {"target": value, "best": best["method"],
                                         "measured": best[metric], "met": best[metric] >= value}
                                for metric, value in goal.items()}
    name = args.name or (NAME if args.limit is None else f"{NAME}-quick")
    markdown = "## Unsupervised embedders (class match, test queries vs train gallery)\n\n"
    markdown += markdown_table(table)
    atomic_write_text(RESULTS / f"{name}.md", markdown)
    path = write_results(name, {"settings": vars(args), "rows": rows, "models": models,
                                "targets": targets, "paper_004_precision": PAPER_004,
                                "peak_rss_mb": peak_rss_mb()})
    print(json.dumps(targets, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
