"""Shared by finetune_bench.py and reduction_bench.py: the products split as cached uint8 tensors
and the pretrained EfficientNet-Lite0 vectors (from quality.py's cache, computed if missing)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

CACHE = Path(__file__).resolve().parent / ".cache"
LEARNED_CACHE = CACHE / "learned"


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")  # derived data, never committed
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


def products_frame():
    """The products Parquet without image bytes (ids, labels, split), in file order."""
    from lookalike.catalogue.sources import require_products_parquet

    import pandas as pd

    frame = pd.read_parquet(require_products_parquet(),
                            columns=["id", "split", "article_type", "sub_category"])
    frame["id"] = frame["id"].astype(str)
    return frame.reset_index(drop=True)


def split_pixels(split: str) -> tuple[np.ndarray, list[str], list[str]]:
    """uint8 ``[n, 3, 80, 60]`` pixels, ids and article types of one split (cached on disk)."""
    path = LEARNED_CACHE / f"products-{split}-60x80.npy"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return np.load(path, allow_pickle=False), meta["ids"], meta["labels"]
    from lookalike.catalogue.sources import load_products_frame
    from lookalike.models.datasets import frame_tensors

    frame = load_products_frame()
    frame = frame[frame["split"] == split]
    tensors = frame_tensors(frame, label_column=None)
    pixels = tensors.images.numpy()
    _save_npy(path, pixels)
    meta = {"ids": frame["id"].astype(str).tolist(),
            "labels": frame["article_type"].astype(str).tolist()}
    meta_path.write_text(json.dumps(meta))
    return pixels, meta["ids"], meta["labels"]


def lite0_vectors(ids_by_side: dict[str, list[str]], image_size: int = 224
                  ) -> dict[str, np.ndarray]:
    """Pretrained Lite0 (ONNX int8) vectors of ``queries`` (test) and ``gallery`` (train),
    through quality.py's cache (same keys, so its earlier runs are reused)."""
    from quality import embed_cached, load_products

    from lookalike.models.base import create

    data = load_products(quick=False)
    embedder = create("efficientnet-lite0", image_size=image_size)
    out = {}
    for side, split in (("queries", data.queries), ("gallery", data.gallery)):
        if split.ids != ids_by_side[side]:
            raise SystemExit(f"{side}: quality.py's item order differs from this benchmark's")
        out[side], _ = embed_cached(embedder, "products", side, split, 64)
    return out
