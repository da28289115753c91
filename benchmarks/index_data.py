"""Vectors for the index benchmark, made from real images (see docs/index.md, "Benchmark data").

* Real 256-d vectors: PCA-256 of Fashion-MNIST raw pixels (70,000 images, Debian package
  ``dataset-fashion-mnist``) and PCA-256 of the products Parquet's photos (44,072, resized to
  24x32 RGB), each centred by its PCA and L2-normalised. Two separate PCA bases: the rows are
  mixed, not the coordinates.
* ``real_set(n)``: up to 40,000 product vectors as the index, the other ~4,000 as queries.
* Categories: a real vector's class (Fashion-MNIST label or product ``article_type``); a
  jittered vector inherits its source's, so a category filter is correlated with the vectors
  the way a real catalogue's is.
* ``jittered_set(n)``: n vectors sampled around real points: a real vector plus Gaussian noise
  scaled per PCA component by that component's standard deviation (so the noise has the data's
  spectrum, not a flat floor), with a per-vector strength drawn from U(0.1, 0.3), then
  renormalised. Every 11th real vector is held out; queries are jittered copies of those, so a
  query's own source never sits in the index.

Everything is cached as .npy under ``$LOOKALIKE_BENCH_CACHE`` (default: the temp folder).
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from pathlib import Path

import numpy as np

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DIM = 256


def cache_dir() -> Path:
    folder = Path(os.environ.get("LOOKALIKE_BENCH_CACHE",
                                 Path(tempfile.gettempdir()) / "lookalike-index-bench"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def products_parquet() -> Path:
    """The products Parquet, found the way the library finds it."""
    from lookalike.catalogue.sources import find_products_parquet

    path = find_products_parquet()
    if path is None:
        raise SystemExit("products Parquet not found: set LOOKALIKE_PRODUCTS_PARQUET")
    return path


def read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 image file (gzip) as uint8 rows."""
    raw = gzip.open(path).read()
    count = int.from_bytes(raw[4:8], "big")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(count, -1)


def _pca_unit(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA

    pca = PCA(DIM, svd_solver="randomized", random_state=seed).fit(pixels[::2])
    vectors = pca.transform(pixels).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


FASHION_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def read_idx_labels(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    return np.frombuffer(raw, np.uint8, offset=8)


def real_categories() -> np.ndarray:
    """The class of every real vector, in ``real_vectors()`` order (Fashion-MNIST, then products)."""
    import pandas as pd

    fashion = np.concatenate([read_idx_labels(FASHION_MNIST / f"{part}-labels-idx1-ubyte.gz")
                              for part in ("train", "t10k")])
    products = pd.read_parquet(products_parquet(), columns=["article_type"])["article_type"]
    return np.array([FASHION_CLASSES[c] for c in fashion] + products.tolist())


def real_vectors() -> tuple[np.ndarray, np.ndarray]:
    """(fashion-mnist vectors [70000, 256], product vectors [44072, 256]), cached."""
    path = cache_dir() / "real256.npz"
    if path.is_file():
        cached = np.load(path)
        return cached["fashion"], cached["products"]
    import pandas as pd
    from PIL import Image

    fashion = np.vstack([read_idx_images(FASHION_MNIST / f"{part}-images-idx3-ubyte.gz")
                         for part in ("train", "t10k")]).astype(np.float32) / 255
    frame = pd.read_parquet(products_parquet(), columns=["image_jpeg"])
    pixels = np.stack([
        np.asarray(Image.open(io.BytesIO(blob)).convert("RGB").resize((24, 32)), np.uint8).ravel()
        for blob in frame["image_jpeg"]]).astype(np.float32) / 255
    fashion_vectors, product_vectors = _pca_unit(fashion), _pca_unit(pixels)
    np.savez(path, fashion=fashion_vectors, products=product_vectors)
    return fashion_vectors, product_vectors


def real_set(n: int, n_queries: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index vectors, query vectors, index categories): real product vectors (article type);
    queries disjoint from the index."""
    fashion, products = real_vectors()
    categories = real_categories()[len(fashion):]
    order = np.random.default_rng(1).permutation(len(products))
    n = min(n, len(products) - n_queries)
    return products[order[:n]], products[order[n: n + n_queries]], categories[order[:n]]


def jittered_set(n: int, n_queries: int = 10_000,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(index vectors [n, 256], queries, index categories): sampled around real points (module
    docstring); an index vector's category is its source's class."""
    path = cache_dir() / f"jittered-{n}-{n_queries}-{seed}.npz"
    if path.is_file():
        cached = np.load(path)
        return cached["base"], cached["queries"], cached["categories"]
    real = np.vstack(real_vectors())
    classes = real_categories()
    held_out = np.zeros(len(real), dtype=bool)
    held_out[::11] = True
    spread = real.std(axis=0)
    rng = np.random.default_rng(seed)

    def around(sources: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((count, DIM), dtype=np.float32)
        origin = rng.integers(0, len(sources), count)
        for start in range(0, count, 100_000):
            stop = min(count, start + 100_000)
            picked = sources[origin[start:stop]]
            strength = rng.uniform(0.1, 0.3, (stop - start, 1)).astype(np.float32)
            noise = rng.standard_normal((stop - start, DIM), dtype=np.float32) * spread
            block = picked + strength * noise
            out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out, origin

    base, origin = around(real[~held_out], n)
    queries, _ = around(real[held_out], n_queries)
    categories = classes[~held_out][origin]
    np.savez(path, base=base, queries=queries, categories=categories)
    return base, queries, categories
