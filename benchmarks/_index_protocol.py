"""One-process, one-protocol comparison of index kinds (used by ``index_bench.py --compare``).

For one data size, in ONE process and one run:

1. the queries are split (seed ``SPLIT_SEED``, saved as ``split.npz`` beside the data) into a
   validation set and a test set;
2. every variant is built from the same vectors with the same batches (``build_s``), saved, and
   freed; HNSW variants share ``efConstruction`` (``EF_CONSTRUCTION``);
3. each is loaded on its own (``rss_delta_bytes``: resident-set growth of the process while
   loading, ratio vs the raw float32 bytes), then its search knob (``ef_search`` for HNSW,
   ``nprobe`` x ``k_factor`` for IVF) is swept on the VALIDATION queries; the fastest setting with
   validation recall@10 >= ``TARGET`` is kept (the most accurate one if none reaches it);
4. with that setting, the TEST queries are searched once: batched q/s (and ``bound q/s`` =
   threads x queries / CPU s), recall@10 against exact float search, and one-query-at-a-time
   latency p50/p99 over ``LATENCY_QUERIES`` test queries.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

SPLIT_SEED = 11
TARGET = 0.95
EF_CONSTRUCTION = 160
LATENCY_QUERIES = 1000
EF_SWEEP = (16, 32, 48, 64, 96, 128, 192)
NPROBE_SWEEP = (8, 16, 32)
#: 4-bit PQ cannot order near-identical neighbours: the SQ8 re-rank needs long candidate lists.
K_FACTOR_SWEEP = (32, 64, 128)
#: The IVF exploration also tries long re-rank lists.
EXPLORE_SETTINGS = [{"nprobe": p, "k_factor": f} for p in (8, 16, 32) for f in (16, 32, 64, 128)]


def variants(size: int, dim: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (kind, params): the automatic choice and the two HNSW references."""
    from lookalike.index.choose import choose_index, ivf_params

    choice = choose_index(size, dim)
    hnsw = {"M": 16, "ef_construction": EF_CONSTRUCTION, "train_size": 10_000}
    out = {f"default ({choice.kind})": (choice.kind, dict(choice.params)),
           "hnsw-sq8 (old default)": ("hnsw", {**hnsw, "storage": "SQ8", "rotate": True}),
           "hnsw16-flat": ("hnsw", {**hnsw, "storage": "Flat", "rotate": False})}
    if choice.kind == "hnsw" and choice.params.get("storage") == "SQ8":
        del out["hnsw-sq8 (old default)"]  # the same index twice
    if choice.kind != "ivf":  # show what the IVF kind does at this size too
        out["ivf"] = ("ivf", ivf_params(size, dim))
    return out


def split_queries(folder: Path, n_queries: int, n_validation: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, test rows) of the query set: seeded, saved, reused."""
    path = folder / "split.npz"
    if path.is_file():
        saved = np.load(path)
        if len(saved["validation"]) + len(saved["test"]) == n_queries:
            return saved["validation"], saved["test"]
    order = np.random.default_rng(SPLIT_SEED).permutation(n_queries)
    validation, test = np.sort(order[:n_validation]), np.sort(order[n_validation:])
    np.savez(path, validation=validation, test=test)
    return validation, test


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def recall_at_10(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(row[:10]) & set(t[:10].tolist())) / min(10, len(t))
                          for row, t in zip(found, truth)]))


def _settings(kind: str) -> list[dict[str, Any]]:
    if kind == "hnsw":
        return [{"ef_search": ef} for ef in EF_SWEEP]
    if kind == "ivf":
        return [{"nprobe": p, "k_factor": f} for p in NPROBE_SWEEP for f in K_FACTOR_SWEEP]
    return [{}]


def _timed_search(index: Any, queries: np.ndarray, threads: int) -> tuple[list[list[int]], dict]:
    cpu, start = time.process_time(), time.perf_counter()
    hits = index.search(queries, 10)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    found = [[int(i[5:]) for i in h.ids] for h in hits]
    return found, {"qps": round(len(queries) / seconds, 1),
                   "bound_qps": round(threads * len(queries) / max(cpu, 1e-9), 1)}


def _sweep(index: Any, queries: np.ndarray, truth: np.ndarray, threads: int,
           settings: list[dict[str, Any]] | None = None) -> list[dict]:
    points = []
    for setting in settings or _settings(index.kind):
        index.params.update(setting)
        index.search(queries[:50], 10)  # warm-up at this setting
        found, speed = _timed_search(index, queries, threads)
        points.append({**setting, **speed, "recall10": round(recall_at_10(found, truth), 4)})
    return points


def _pick(points: list[dict]) -> dict:
    reaching = [p for p in points if p["recall10"] >= TARGET]
    if reaching:  # the fastest setting reaching the target (bound q/s: robust to other jobs)
        return max(reaching, key=lambda p: p["bound_qps"])
    return max(points, key=lambda p: p["recall10"])


def _latency(index: Any, queries: np.ndarray) -> dict:
    times = []
    for row in queries[:LATENCY_QUERIES]:
        start = time.perf_counter()
        index.search(row[None, :], 10)
        times.append((time.perf_counter() - start) * 1000)
    return {"latency_queries": len(times), "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3)}


def load_items(data: Path) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    """The benchmark data's vectors (memory-mapped), ids and filter attributes."""
    base = np.load(data / "base.npy", mmap_mode="r")
    prices = np.load(data / "prices.npy")
    categories = np.load(data / "categories.npy")
    ids = [f"item-{i:07d}" for i in range(len(base))]
    attributes = [{"price": int(p), "category": c} for p, c in zip(prices.tolist(),
                                                                    categories.tolist())]
    return base, ids, attributes


def build_all(data: Path, chosen: dict[str, tuple[str, dict]], progress: Any) -> dict[str, dict]:
    """Build and save every variant (same vectors, same 250k batches); returns build facts."""
    from lookalike.index.base import create_index

    base, ids, attributes = load_items(data)
    out = {}
    for name, (kind, params) in chosen.items():
        progress(f"build {name}")
        index = create_index(kind, base.shape[1], embedder_id="bench", **params)
        start = time.perf_counter()
        for lo in range(0, len(base), 250_000):
            index.add(ids[lo: lo + 250_000], np.asarray(base[lo: lo + 250_000]),
                      attributes[lo: lo + 250_000])
        build_s = time.perf_counter() - start
        folder = data / ("compare-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
        if folder.exists():
            shutil.rmtree(folder)
        index.save(folder)
        out[name] = {"kind": kind, "params": dict(index.params), "build_s": round(build_s, 1),
                     "memory_bytes": index.memory_bytes(), "folder": str(folder)}
        del index
        gc.collect()
    return out


def measure(data: Path, built: dict[str, dict], validation: np.ndarray, test: np.ndarray,
            threads: int, progress: Any) -> list[dict]:
    """Load each variant alone, tune on validation, then read the test queries once."""
    from lookalike.index.base import load_index

    queries, truth = np.load(data / "queries.npy"), np.load(data / "truth.npy")
    raw_bytes = int(np.load(data / "base.npy", mmap_mode="r").size * 4)
    rows = []
    for name, facts in built.items():
        progress(f"search {name}")
        gc.collect()
        before = rss_bytes()
        index = load_index(facts["folder"], expected_embedder_id="bench")
        gc.collect()
        loaded = rss_bytes() - before
        sweep = _sweep(index, queries[validation], truth[validation], threads)
        picked = _pick(sweep)
        index.params.update({k: v for k, v in picked.items()
                             if k in ("ef_search", "nprobe", "k_factor")})
        index.search(queries[test[:100]], 10)
        found, speed = _timed_search(index, queries[test], threads)
        row = {"variant": name, "kind": facts["kind"], "build_s": facts["build_s"],
               "setting": {k: picked[k] for k in picked if k in ("ef_search", "nprobe", "k_factor")},
               "validation_recall10": picked["recall10"], "test_queries": len(test),
               "recall10": round(recall_at_10(found, truth[test]), 4), **speed,
               **_latency(index, queries[test]), "load_avg_1m": round(os.getloadavg()[0], 2),
               "rss_delta_bytes": loaded, "memory_ratio_vs_raw": round(loaded / raw_bytes, 3),
               "memory_bytes": facts["memory_bytes"],
               "memory_bytes_ratio_vs_raw": round(facts["memory_bytes"] / raw_bytes, 3),
               "params": facts["params"], "validation_sweep": sweep}
        rows.append(row)
        del index
        gc.collect()
    return rows


def explore_ivf(data: Path, combos: list[dict[str, Any]], validation: np.ndarray, threads: int,
                progress: Any) -> list[dict]:
    """Build IVF indexes with each build-time combination (nlist, pq, coarse) and sweep their
    search knobs on the VALIDATION queries only (how choose.py's IVF parameters were picked)."""
    from lookalike.index.choose import ivf_params

    queries, truth = np.load(data / "queries.npy"), np.load(data / "truth.npy")
    size = int(np.load(data / "base.npy", mmap_mode="r").shape[0])
    out = []
    for combo in combos:
        params = {**ivf_params(size, queries.shape[1]), **combo}
        built = build_all(data, {"explore": ("ivf", params)}, progress)["explore"]
        from lookalike.index.base import load_index

        index = load_index(built["folder"])
        progress(f"sweep {combo}")
        sweep = _sweep(index, queries[validation], truth[validation], threads, EXPLORE_SETTINGS)
        out.append({"combo": combo, "build_s": built["build_s"],
                    "memory_bytes": built["memory_bytes"], "best": _pick(sweep), "sweep": sweep})
        del index
        gc.collect()
    return out
