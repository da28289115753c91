"""Class-match retrieval quality of the core embedders on real data.

Protocols (queries against a separate gallery, relevant = same class):

- ``products``: the 4,469 test photos against the 39,603 train photos of the products Parquet,
  class = ``article_type`` and, from the same embeddings, ``sub_category``;
- ``fashion-mnist``: the 10,000 test images against the 60,000 train images, class = label.

Embedders come from the registry (``lookalike.models.base.create``); ``NAME@SIZE`` sets the
input size and ``NAME:key=value`` any other option. Embeddings are cached in
``benchmarks/.cache/`` keyed by dataset, sample and embedder id, so re-runs only search. Raw
pixels, measured in the same run, are the baseline every row is compared with; known reference
numbers are printed beside them.

    python benchmarks/quality.py                     # everything (the Lite0 at 224 takes a while)
    python benchmarks/quality.py --quick             # subsampled, a minute or two
    python benchmarks/quality.py --datasets products --embedders pixels,efficientnet-lite0@112

Writes ``benchmarks/results/quality.json`` (``quality-quick.json`` with ``--quick``), a Markdown
table and a bar plot beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, write_results  # noqa: E402

from lookalike.catalogue.images import decode_image  # noqa: E402
from lookalike.evaluate.report import plot_bars, write_metrics_table  # noqa: E402
from lookalike.evaluate.retrieval import evaluate_retrieval  # noqa: E402
from lookalike.models.base import Embedder, create, embedder_class  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATASETS = ("products", "fashion-mnist")
DEFAULT_EMBEDDERS = ("pixels", "hsv-histogram", "efficientnet-lite0@224", "efficientnet-lite0@112")
BASELINE = "pixels"
#: Known numbers under the same protocols (data README; the issue's pretrained Lite0 figure).
REFERENCE_P10 = {("products", "article_type", "pixels"): 0.65,
                 ("fashion-mnist", "label", "pixels"): 0.82,
                 ("products", "article_type", "efficientnet-lite0"): 0.75,  # native 224 input
                 ("products", "article_type", "efficientnet-lite0@224"): 0.75}
QUICK_SIZES = {"products": (500, 5000), "fashion-mnist": (1000, 10000)}  # queries, gallery


@dataclass
class Split:
    """One side of a protocol: ids, labels per class column, and a way to (re)read the images."""

    ids: list[str]
    labels: dict[str, np.ndarray]
    images: Callable[[], Iterator[Any]]  # yields RGB PIL images in ``ids`` order


@dataclass
class Dataset:
    name: str
    queries: Split
    gallery: Split


# ---- datasets -----------------------------------------------------------------------------------
def load_products(quick: bool) -> Dataset:
    from lookalike.catalogue.sources import load_products_frame

    frame = load_products_frame()
    columns = ("article_type", "sub_category")

    def side(split: str, n_quick: int) -> Split:
        part = frame[frame["split"] == split]
        if quick:
            part = part.sample(n=min(n_quick, len(part)), random_state=0)
        blobs = part["image_jpeg"].tolist()
        ids = part["id"].astype(str).tolist()

        def images() -> Iterator[Any]:
            for item_id, blob in zip(ids, blobs):
                yield decode_image(blob, source=f"products id {item_id}")

        return Split(ids=ids, labels={c: part[c].astype(str).to_numpy() for c in columns},
                     images=images)

    n_queries, n_gallery = QUICK_SIZES["products"]
    return Dataset("products", side("test", n_queries), side("train", n_gallery))


def load_fashion_mnist(quick: bool) -> Dataset:
    from PIL import Image

    from lookalike.catalogue.sources import load_fashion_mnist as read_split

    def side(split: str, n_quick: int) -> Split:
        pixels, labels, names = read_split(split)
        rows = np.arange(len(pixels))
        if quick:
            rows = np.sort(np.random.default_rng(0).choice(len(pixels), n_quick, replace=False))

        def images() -> Iterator[Any]:
            for row in rows:  # grey 28x28 -> RGB, the form every embedder takes
                yield Image.fromarray(pixels[row]).convert("RGB")

        return Split(ids=[f"{split}-{r}" for r in rows],
                     labels={"label": np.asarray(names, dtype=object)[labels[rows]]},
                     images=images)

    n_queries, n_gallery = QUICK_SIZES["fashion-mnist"]
    return Dataset("fashion-mnist", side("test", n_queries), side("train", n_gallery))


LOADERS = {"products": load_products, "fashion-mnist": load_fashion_mnist}


# ---- embedders and the cache --------------------------------------------------------------------
def build_embedder(spec: str) -> Embedder:
    """``NAME``, ``NAME@SIZE`` (input size) or ``NAME:key=value:key=value`` -> a registry
    embedder. ``@SIZE`` goes to the embedder's ``image_size`` (or ``size``) option."""
    import inspect

    name, *pairs = spec.split(":")
    name, _, size = name.partition("@")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"{spec}: options are key=value, got {pair!r}")
        options[key] = _literal(value)
    if size:
        parameters = inspect.signature(embedder_class(name).__init__).parameters
        key = next((k for k in ("image_size", "size") if k in parameters), None)
        if key is None:
            raise SystemExit(f"{spec}: {name} takes no input size option")
        options[key] = int(size)
    return create(name, **options)


def _literal(text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def embed_cached(embedder: Embedder, dataset: str, side: str, split: Split,
                 batch_size: int) -> tuple[np.ndarray, float | None]:
    """Vectors of one side, from the cache when present; also the seconds spent embedding
    (None when cached)."""
    sample = hashlib.sha256("\n".join(split.ids).encode()).hexdigest()[:10]
    path = CACHE / f"{dataset}-{side}-{sample}-{embedder.embedder_id}.npy"
    if path.is_file():
        vectors = np.load(path, allow_pickle=False)
        if vectors.shape == (len(split.ids), embedder.dim):
            return vectors, None
    started = time.perf_counter()
    vectors = embedder.embed(split.images(), batch_size=batch_size)
    seconds = time.perf_counter() - started
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")  # derived data, never committed
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, vectors, allow_pickle=False)
    os.replace(tmp, path)
    return vectors, seconds


# ---- the run ------------------------------------------------------------------------------------
def run(datasets: Sequence[str], embedders: Sequence[str], quick: bool,
        batch_size: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for dataset_name in datasets:
        started = time.perf_counter()
        data = LOADERS[dataset_name](quick)
        print(f"{dataset_name}: {len(data.queries.ids):,} queries vs {len(data.gallery.ids):,} "
              f"gallery (loaded in {time.perf_counter() - started:.1f} s)", flush=True)
        for spec in embedders:
            embedder = build_embedder(spec)
            if embedder.needs_fit:
                raise SystemExit(f"{spec}: needs fit(); this benchmark covers pretrained and "
                                 "fixed embedders only")
            query_vectors, query_s = embed_cached(embedder, dataset_name, "queries", data.queries,
                                                  batch_size)
            gallery_vectors, gallery_s = embed_cached(embedder, dataset_name, "gallery",
                                                      data.gallery, batch_size)
            embed_s = None if query_s is None and gallery_s is None else (query_s or 0) + (
                gallery_s or 0)
            n_embedded = (len(data.queries.ids) if query_s is not None else 0) + (
                len(data.gallery.ids) if gallery_s is not None else 0)
            for column in data.queries.labels:
                started = time.perf_counter()
                report = evaluate_retrieval(query_vectors, data.queries.labels[column],
                                            gallery_vectors, data.gallery.labels[column],
                                            ks=(1, 10), map_at=100, ndcg_at=10,
                                            class_column=column)
                search_s = time.perf_counter() - started
                rows.append({
                    "dataset": dataset_name, "class": column, "embedder": spec,
                    "embedder_id": embedder.embedder_id, "dim": embedder.dim,
                    "P@1": report.metrics["P@1"], "P@10": report.metrics["P@10"],
                    "R@10": report.metrics["R@10"], "mAP@100": report.metrics["mAP@100"],
                    "NDCG@10": report.metrics["NDCG@10"],
                    "queries": report.n_queries, "gallery": report.n_gallery,
                    "no_relevant": report.queries_without_relevant,
                    "embed_s": None if embed_s is None else round(embed_s, 1),
                    "ms_per_image": (None if embed_s is None or not n_embedded
                                     else round(1000 * embed_s / n_embedded, 2)),
                    "search_s": round(search_s, 2),
                })
                row = rows[-1]
                print(f"  {spec:<24} {column:<13} P@10 {row['P@10']:.3f}  "
                      f"mAP@100 {row['mAP@100']:.3f}"
                      + ("" if embed_s is None else f"  (embedded in {embed_s:.0f} s)"),
                      flush=True)
    _compare_with_baseline(rows)
    return rows


def _compare_with_baseline(rows: list[dict[str, Any]]) -> None:
    """Add each row's P@10 gain over raw pixels (same run, dataset and class) and the known
    reference number where one exists."""
    baseline = {(r["dataset"], r["class"]): r["P@10"] for r in rows if r["embedder"] == BASELINE}
    for row in rows:
        base = baseline.get((row["dataset"], row["class"]))
        row["P@10 vs pixels"] = None if base is None else round(row["P@10"] - base, 4)
        row["reference P@10"] = REFERENCE_P10.get((row["dataset"], row["class"], row["embedder"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                        help=f"comma-separated, from {', '.join(LOADERS)}")
    parser.add_argument("--embedders", default=",".join(DEFAULT_EMBEDDERS),
                        help="comma-separated registry names; NAME@SIZE sets the input size, "
                             "NAME:key=value other options")
    parser.add_argument("--quick", action="store_true",
                        help="subsample (products 500 vs 5,000; Fashion-MNIST 1,000 vs 10,000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in LOADERS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(LOADERS)}")
    embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]
    if BASELINE not in embedders:
        embedders.insert(0, BASELINE)  # every result sits beside the baseline of the same run

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = run(datasets, embedders, args.quick, args.batch_size)
    name = "quality-quick" if args.quick else "quality"
    columns = ["dataset", "class", "embedder", "dim", "P@1", "P@10", "mAP@100", "NDCG@10",
               "P@10 vs pixels", "reference P@10", "ms_per_image"]
    path = write_results(name, {
        "protocol": {"products": "test queries vs train gallery; relevant = same article_type / "
                                 "sub_category",
                     "fashion-mnist": "10,000 test queries vs 60,000 train gallery; relevant = "
                                      "same label",
                     "quick": args.quick, "search": "FAISS exact inner product (cosine)"},
        "threads": args.threads, "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(peak_rss_mb()), "rows": rows})
    markdown = write_metrics_table(
        RESULTS / f"{name}.md", None, [{c: r.get(c) for c in columns} for r in rows],
        title=f"Class-match retrieval quality ({'quick subsample' if args.quick else 'full'})")
    print(markdown)
    plot_bars(RESULTS / f"{name}.png",
              [dict(r, series=f"{r['dataset']} / {r['class']}") for r in rows],
              x="embedder", y="P@10", hue="series", ylim=(0, 1.05),
              title="P@10, test queries vs train gallery")
    print(f"wrote {path}, {RESULTS / (name + '.md')}, {RESULTS / (name + '.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
