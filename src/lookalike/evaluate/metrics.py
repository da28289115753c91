"""Retrieval metrics as pure, vectorised functions.

Every metric takes ``relevant``, a boolean array ``[n_queries, list_length]`` saying whether the
item at each rank (best first) is relevant to the query, and returns one value per query. The
``mean`` helper turns that into a single number. Conventions (the common ones for class-match
retrieval, e.g. mAP@100 on product photos):

- Ranks beyond the end of a list count as *not relevant*: a list shorter than ``k`` (a gallery
  smaller than ``k``) still divides precision by ``k``, as trec_eval does.
- ``n_relevant[i]`` is the number of relevant items in the whole gallery for query ``i`` (not just
  in the list). Recall, AP and NDCG need it.
- A query with no relevant item in the gallery scores 0 on every metric: it is counted, not
  dropped, so a method cannot look better by leaving hard queries out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError


class EvaluationError(LookalikeError):
    """Evaluation inputs do not fit together (shapes, labels, ids, ``k``)."""


# ---- input checks ---------------------------------------------------------------------------
def _top_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ranks as a bool ``[n, k]`` array, padded with False past the list's end."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise EvaluationError(f"k must be a positive integer, got {k!r}")
    array = np.asarray(relevant)
    if array.ndim == 1:  # one query given as a flat list
        array = array[None, :]
    if array.ndim != 2:
        raise EvaluationError(f"relevant must be [n_queries, list_length], got shape {array.shape}")
    array = array.astype(bool, copy=False)
    if array.shape[1] >= k:
        return array[:, :k]
    padded = np.zeros((array.shape[0], k), dtype=bool)
    padded[:, : array.shape[1]] = array
    return padded


def _n_relevant(n_relevant: Any, relevant: np.ndarray) -> np.ndarray:
    """``n_relevant`` as an int array of one value per query, checked against the lists."""
    counts = np.asarray(n_relevant)
    rows = np.asarray(relevant)
    n_queries = 1 if rows.ndim == 1 else rows.shape[0]
    if counts.ndim == 0:
        counts = np.full(n_queries, int(counts))
    if counts.shape != (n_queries,):
        raise EvaluationError(
            f"n_relevant must hold one count per query ({n_queries}), got shape {counts.shape}")
    if counts.size and counts.min() < 0:
        raise EvaluationError("n_relevant must not be negative")
    found = rows.reshape(n_queries, -1).astype(bool, copy=False).sum(axis=1)
    too_small = found > counts
    if np.any(too_small):
        first = int(np.flatnonzero(too_small)[0])
        raise EvaluationError(
            f"query {first}: {found[first]} relevant items in its list but n_relevant says "
            f"{counts[first]}; n_relevant must count relevant items in the whole gallery")
    return counts.astype(np.int64)


# ---- metrics, one value per query -----------------------------------------------------------
def precision_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """Share of the top ``k`` that is relevant: ``hits@k / k``."""
    return _top_k(relevant, k).sum(axis=1) / float(k)


def recall_at_k(relevant: np.ndarray, n_relevant: np.ndarray | int, k: int) -> np.ndarray:
    """Share of the gallery's relevant items found in the top ``k``: ``hits@k / n_relevant``.

    0 for queries with no relevant item in the gallery.
    """
    counts = _n_relevant(n_relevant, relevant)
    hits = _top_k(relevant, k).sum(axis=1)
    return np.divide(hits, counts, out=np.zeros(len(counts)), where=counts > 0)


def average_precision_at_k(relevant: np.ndarray, n_relevant: np.ndarray | int,
                           k: int) -> np.ndarray:
    """AP@k: the mean of P@i over the ranks ``i <= k`` holding a relevant item.

    Normalised by ``min(k, n_relevant)`` -- the best number of hits the top ``k`` could hold --
    so a perfect list scores 1 even when a class has more than ``k`` members (the usual
    convention for mAP@100). 0 for queries with no relevant item in the gallery.
    """
    counts = _n_relevant(n_relevant, relevant)
    top = _top_k(relevant, k)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    precision_at_each_rank = np.cumsum(top, axis=1) / ranks
    summed = (precision_at_each_rank * top).sum(axis=1)
    ideal = np.minimum(counts, k)
    return np.divide(summed, ideal, out=np.zeros(len(counts)), where=ideal > 0)


def ndcg_at_k(relevant: np.ndarray, n_relevant: np.ndarray | int, k: int) -> np.ndarray:
    """NDCG@k with binary gains: ``sum_i rel_i / log2(i + 1)`` over ranks ``i = 1..k``.

    Divided by the ideal DCG, where all ``min(k, n_relevant)`` top ranks are relevant. 0 for
    queries with no relevant item in the gallery.
    """
    counts = _n_relevant(n_relevant, relevant)
    top = _top_k(relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = top @ discounts
    ideal_dcg = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(counts, k)]
    return np.divide(dcg, ideal_dcg, out=np.zeros(len(counts)), where=ideal_dcg > 0)


def hit_rate_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """1.0 where at least one of the top ``k`` is relevant, else 0.0."""
    return _top_k(relevant, k).any(axis=1).astype(np.float64)


# ---- means ----------------------------------------------------------------------------------
def mean(per_query: np.ndarray | Sequence[float]) -> float:
    """Mean over queries as a plain float (NaN for no queries, so an empty run never reads 0)."""
    values = np.asarray(per_query, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


def metric_names(ks: Sequence[int] = (1, 5, 10), map_at: int = 100,
                 ndcg_at: int = 10) -> list[str]:
    """The names :func:`per_query_metrics` uses, in report order."""
    names = [f"P@{k}" for k in ks] + [f"R@{k}" for k in ks] + [f"HR@{k}" for k in ks]
    return names + [f"mAP@{map_at}", f"NDCG@{ndcg_at}"]


def per_query_metrics(relevant: np.ndarray, n_relevant: np.ndarray | int,
                      ks: Sequence[int] = (1, 5, 10), map_at: int = 100,
                      ndcg_at: int = 10) -> dict[str, np.ndarray]:
    """Every metric of a report, per query: P@k, R@k, HR@k for each ``k``, mAP and NDCG."""
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"P@{k}"] = precision_at_k(relevant, k)
    for k in ks:
        out[f"R@{k}"] = recall_at_k(relevant, n_relevant, k)
    for k in ks:
        out[f"HR@{k}"] = hit_rate_at_k(relevant, k)
    out[f"mAP@{map_at}"] = average_precision_at_k(relevant, n_relevant, map_at)
    out[f"NDCG@{ndcg_at}"] = ndcg_at_k(relevant, n_relevant, ndcg_at)
    return out


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """``{name: mean over queries}`` of a :func:`per_query_metrics` result."""
    return {name: mean(values) for name, values in per_query.items()}


# ---- approximate vs exact search --------------------------------------------------------------
def recall_against_exact(approx_ids: Any, exact_ids: Any, k: int) -> np.ndarray:
    """Per query, the share of the exact top ``k`` that the approximate search also returned.

    ``approx_ids`` and ``exact_ids`` are ``[n_queries, >=k]`` arrays or lists of id lists (string
    or integer ids, rows may be ragged). Padding (-1 as FAISS returns, or None) is ignored. The
    denominator is the number of real ids in the exact top ``k`` (``k`` unless the gallery or a
    filter left fewer); a query whose exact list is empty scores 1. Use :func:`mean` for "recall@k".
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise EvaluationError(f"k must be a positive integer, got {k!r}")
    if len(approx_ids) != len(exact_ids):
        raise EvaluationError(
            f"approx_ids has {len(approx_ids)} queries but exact_ids has {len(exact_ids)}")
    out = np.empty(len(exact_ids), dtype=np.float64)
    for row, (approx, exact) in enumerate(zip(approx_ids, exact_ids)):
        truth = {_id_key(i) for i in list(exact)[:k]} - {None}
        found = {_id_key(i) for i in list(approx)[:k]} - {None}
        out[row] = len(truth & found) / len(truth) if truth else 1.0
    return out


def _id_key(item: Any) -> Any:
    """A hashable id, with FAISS's -1 padding and None mapped to None."""
    if item is None:
        return None
    if isinstance(item, (int, np.integer)):
        return None if item < 0 else int(item)
    return str(item)
