"""The measurements of ``lookalike report``: embeddings of whole splits cached on disk (written
chunk by chunk into a memory map, resumable), speed at batch 1 and 64, and quality metrics of
float vectors and binary codes (cached as small JSON files).

Part of :mod:`lookalike.evaluate.comparison` (which re-exports every name here).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.evaluate.comparison_inputs import (
    _EMBED_CHUNK,
    _PART_ROWS,
    METRICS,
    Catalogue,
    ReportError,
    Side,
)
from lookalike.models.base import Embedder


# ---- embeddings with a cache --------------------------------------------------------------------
def cached_embeddings(embedder: Embedder, catalogue: Catalogue, side: str, cache_dir: str | Path,
                      progress: Callable[[int], None] | None = None) -> np.ndarray:
    """float32 ``[n, dim]`` unit rows of one side (``queries`` / ``gallery``), memory-mapped from
    ``cache_dir``.

    The first call embeds ``_PART_ROWS`` rows at a time into part files, so an interrupted run
    keeps its finished parts and the next one resumes; the parts are then joined into one
    ``.npy`` (through a memory map, never a second copy in RAM) and removed.
    """
    part: Side = getattr(catalogue, side)
    cache = Path(cache_dir)
    stem = f"{catalogue.name}-{side}-{part.sample_key}-{embedder.embedder_id}"
    path = cache / f"{stem}.npy"
    shape = (len(part), embedder.dim)
    if path.is_file():
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        if vectors.shape == shape and vectors.dtype == np.float32:
            if progress:
                progress(len(part))
            return vectors
    from lookalike.models.reduction import ReducedEmbedder

    if isinstance(embedder, ReducedEmbedder):
        # PCA / projection are a linear map of their base's vectors: derive them from the base's
        # cached rows instead of running the network again (minutes -> a second).
        base = cached_embeddings(embedder.base, catalogue, side, cache_dir, progress)
        cache.mkdir(parents=True, exist_ok=True)
        _save_atomically(path, np.concatenate(
            [embedder.project(base[start:start + _PART_ROWS])
             for start in range(0, len(base), _PART_ROWS)] or [np.zeros(shape, np.float32)]))
        return np.load(path, mmap_mode="r", allow_pickle=False)
    parts = cache / f".{stem}.parts"
    parts.mkdir(parents=True, exist_ok=True)
    if not (cache / ".gitignore").exists():
        (cache / ".gitignore").write_text("*\n")  # derived data, never committed
    starts = range(0, len(part), _PART_ROWS)
    for start in starts:
        stop = min(start + _PART_ROWS, len(part))
        part_path = parts / f"{start:09d}.npy"
        if part_path.is_file() and np.load(part_path, mmap_mode="r").shape == (stop - start,
                                                                               shape[1]):
            if progress:
                progress(stop - start)
            continue
        block = np.concatenate([
            _embed(embedder, part.images(range(first, min(first + _EMBED_CHUNK, stop))),
                   progress) for first in range(start, stop, _EMBED_CHUNK)])
        _save_atomically(part_path, block.astype(np.float32, copy=False))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for start in starts:
            rows = np.load(parts / f"{start:09d}.npy", mmap_mode="r")
            out[start:start + len(rows)] = rows
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(parts, ignore_errors=True)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _embed(embedder: Embedder, images: Iterator[Any],
           progress: Callable[[int], None] | None) -> np.ndarray:
    """``embedder.embed`` with the progress callback when its ``embed`` takes one."""
    if progress is not None and "progress" in inspect.signature(embedder.embed).parameters:
        return embedder.embed(images, progress=progress)
    images = list(images)
    vectors = embedder.embed(images)
    if progress is not None:
        progress(len(images))
    return vectors


def _save_atomically(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    os.replace(tmp, path)


# ---- speed --------------------------------------------------------------------------------------
def measure_speed(embedder: Embedder, images: Sequence[Any], batch: int = 64,
                  single_budget_s: float = 8.0, max_single: int = 32) -> dict[str, float]:
    """Wall-clock ms per image at batch 1 (and the process CPU ms) and images/s at batch
    ``batch`` on decoded ``images``.

    One warm-up call first (weights, ONNX sessions). Batch 1 runs up to ``max_single`` images
    or ``single_budget_s`` seconds; batched, up to two batches (one when the first is slow).
    Threads are whatever the caller set (see :func:`compare`).
    """
    if not images:
        raise ReportError("no images to time the embedder on")
    embedder.embed(list(images[:2]), batch_size=2)
    started, cpu_started, done = time.perf_counter(), time.process_time(), 0
    for image in images[:max_single]:
        embedder.embed([image], batch_size=1)
        done += 1
        if time.perf_counter() - started > single_budget_s and done >= 3:
            break
    single = (time.perf_counter() - started) / done
    # CPU time of all this process's threads: less sensitive to other jobs than wall time.
    single_cpu = (time.process_time() - cpu_started) / done
    batches = [list(images[s:s + batch]) for s in range(0, min(len(images), 2 * batch), batch)]
    started, timed = time.perf_counter(), 0
    for chunk in batches:
        embedder.embed(chunk, batch_size=batch)
        timed += len(chunk)
        if time.perf_counter() - started > 2 * single_budget_s:
            break
    return {"ms_per_image_batch1": 1000 * single, "cpu_ms_per_image_batch1": 1000 * single_cpu,
            "images_per_s_batch64": timed / (time.perf_counter() - started),
            "timed_batch1": done, "timed_batched": timed}


# ---- quality ------------------------------------------------------------------------------------
def float_metrics(queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                  gallery_labels: np.ndarray, class_column: str) -> dict[str, float]:
    """P@1, P@10, mAP@100, NDCG@10... of exact cosine search (the :func:`evaluate_retrieval`
    values)."""
    from lookalike.evaluate.retrieval import evaluate_retrieval

    report = evaluate_retrieval(np.asarray(queries), query_labels, np.asarray(gallery),
                                gallery_labels, class_column=class_column, **METRICS)
    return {**report.metrics, "queries": report.n_queries, "gallery": report.n_gallery,
            "no_relevant": report.queries_without_relevant}


def code_metrics(coder: Any, queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                 gallery_labels: np.ndarray, rerank: bool, candidates: int = 100,
                 block: int = 1024) -> dict[str, float]:
    """The same metrics through the ``binary`` index: Hamming search over ``coder``'s codes of
    the float rows, optionally re-ranking the top ``candidates`` by Euclidean distance."""
    import lookalike.evaluate.metrics as m
    from lookalike.index.base import create_index

    gallery = np.asarray(gallery)
    index = create_index("binary", gallery.shape[1], coder=coder, rerank=rerank,
                         store_vectors=rerank, candidates=candidates)
    ids = [str(i) for i in range(len(gallery))]
    for start in range(0, len(ids), 8192):
        index.add(ids[start:start + 8192], np.asarray(gallery[start:start + 8192]))
    classes, codes = np.unique(np.concatenate([np.asarray(gallery_labels, dtype=str),
                                               np.asarray(query_labels, dtype=str)]),
                               return_inverse=True)
    gallery_codes, query_codes = codes[:len(gallery)], codes[len(gallery):]
    n_relevant = np.bincount(gallery_codes, minlength=len(classes))[query_codes]
    depth = max(*METRICS["ks"], METRICS["map_at"], METRICS["ndcg_at"])
    values: dict[str, list[np.ndarray]] = {}
    queries = np.asarray(queries)
    started = time.perf_counter()
    for start in range(0, len(queries), block):
        hits = index.search(np.asarray(queries[start:start + block]), depth)
        relevant = np.zeros((len(hits), depth), dtype=bool)
        for row, result in enumerate(hits):
            found = np.fromiter((int(i) for i in result.ids), dtype=np.int64)
            relevant[row, :len(found)] = gallery_codes[found] == query_codes[start + row]
        for name, per_query in m.per_query_metrics(relevant, n_relevant[start:start + block],
                                                   **METRICS).items():
            values.setdefault(name, []).append(per_query)
    seconds = time.perf_counter() - started
    means = {name: float(np.concatenate(parts).mean()) for name, parts in values.items()}
    return {**means, "queries": len(queries), "gallery": len(gallery),
            "no_relevant": int((n_relevant == 0).sum()),
            "queries_per_s": len(queries) / seconds if seconds else None}


def _cached_metrics(cache_dir: Path, key: dict[str, Any],
                    compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()``'s result, stored as JSON under a hash of ``key`` so re-runs skip it."""
    key = json.loads(json.dumps(key))  # tuples become lists, as they come back from the file
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / "report-metrics" / f"{digest}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return stored["metrics"]
        except (OSError, ValueError):
            pass
    result = compute()
    from lookalike.storage import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"key": key, "metrics": result}, default=float))
    return result


