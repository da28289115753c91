"""Nearest neighbours for evaluation: FAISS exact inner-product search over unit rows, ``block``
queries at a time (memory stays at ``block x list_length`` plus FAISS's fixed-size tiles, never a
dense ``n_queries x n_gallery`` matrix), with a query's own row dropped in leave-one-out runs.

Part of :mod:`lookalike.evaluate.retrieval` (which re-exports these names).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lookalike.errors import ModelMismatchError
from lookalike.evaluate.metrics import EvaluationError


# ---- nearest neighbours ---------------------------------------------------------------------
@dataclass
class Neighbours:
    """The top ``k`` gallery rows of every query, best first.

    ``rows[i, j]`` is a gallery row number (-1 where the gallery ran out), ``scores`` the cosine
    similarities, ``gallery_ids`` the gallery's ids when they were given.
    """

    rows: np.ndarray
    scores: np.ndarray
    gallery_ids: np.ndarray | None = None

    @property
    def k(self) -> int:
        return int(self.rows.shape[1])

    def ids(self, query: int) -> list[str]:
        """Gallery ids (or row numbers as strings) of one query's neighbours."""
        rows = [int(r) for r in self.rows[query] if r >= 0]
        if self.gallery_ids is None:
            return [str(r) for r in rows]
        return [str(self.gallery_ids[r]) for r in rows]


def nearest_rows(query_vectors: np.ndarray, gallery_vectors: np.ndarray | None = None,
                 k: int = 10, *, block: int = 1024, leave_one_out: bool = False,
                 query_ids: Sequence[Any] | None = None,
                 gallery_ids: Sequence[Any] | None = None, progress: bool = False) -> Neighbours:
    """Exact top-``k`` gallery rows of every query, searched ``block`` queries at a time.

    A query never gets itself back: when both ``query_ids`` and ``gallery_ids`` are given, the
    gallery item with the query's id is left out; with ``leave_one_out`` and no ids, the gallery
    defaults to the queries and row ``i`` is left out of query ``i``'s list.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise EvaluationError(f"k must be a positive integer, got {k!r}")
    queries, gallery, self_rows, gallery_id_array = _prepare_search(
        query_vectors, gallery_vectors, leave_one_out, query_ids, gallery_ids,
        exclude_same_id=True)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start, block_rows, block_scores in _search_blocks(queries, gallery, k, block, self_rows,
                                                          progress):
        rows[start:start + len(block_rows)] = block_rows
        scores[start:start + len(block_rows)] = block_scores
    return Neighbours(rows=rows, scores=scores, gallery_ids=gallery_id_array)


def neighbours(query_vectors: np.ndarray, gallery_vectors: np.ndarray | None = None,
               k: int = 10, *, block: int = 1024, leave_one_out: bool = False,
               query_ids: Sequence[Any] | None = None, gallery_ids: Sequence[Any] | None = None,
               progress: bool = False) -> tuple[list[list[str]], list[list[float]]]:
    """The top-``k`` neighbour ids and scores of every query, for result grids.

    Returns ``(ids, scores)``: ``ids[i]`` lists query ``i``'s gallery ids best first (row
    numbers as strings when ``gallery_ids`` is not given), ``scores[i]`` their cosine
    similarities. Lists are shorter than ``k`` only when the gallery is. Self-exclusion as in
    :func:`nearest_rows`.
    """
    found = nearest_rows(query_vectors, gallery_vectors, k, block=block,
                         leave_one_out=leave_one_out, query_ids=query_ids,
                         gallery_ids=gallery_ids, progress=progress)
    ids = [found.ids(i) for i in range(len(found.rows))]
    scores = [[float(s) for s, r in zip(found.scores[i], found.rows[i]) if r >= 0]
              for i in range(len(found.rows))]
    return ids, scores


def _search_blocks(queries: np.ndarray, gallery: np.ndarray, k: int, block: int,
                   self_rows: np.ndarray | None,
                   progress: bool) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(first query, rows [b, k], scores [b, k])`` for consecutive blocks of queries."""
    import faiss

    if block < 1:
        raise EvaluationError(f"block must be a positive integer, got {block}")
    if k < 1:
        raise EvaluationError(f"k must be a positive integer, got {k}")
    # One extra neighbour when a query's own row may take a place in its list.
    depth = min(k + (self_rows is not None), len(gallery))
    bar = _progress_bar(len(queries)) if progress else None
    try:
        for start in range(0, len(queries), block):
            chunk = queries[start:start + block]
            # faiss.knn searches without building (and copying the gallery into) an index.
            scores, rows = faiss.knn(chunk, gallery, depth, metric=faiss.METRIC_INNER_PRODUCT)
            if self_rows is not None:
                rows, scores = _drop_self(rows, scores, self_rows[start:start + block])
            yield start, *_fit_width(rows, scores, k)
            if bar is not None:
                bar[0].advance(bar[1], len(chunk))
    finally:
        if bar is not None:
            bar[0].stop()


def _drop_self(rows: np.ndarray, scores: np.ndarray,
               self_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own row from its list, keeping the order of the rest.

    The own row is not always first (exact duplicates tie with it), so it is found by value and
    moved to the end as padding; the list was searched one deeper, so ``k`` real results remain.
    """
    is_self = rows == self_rows[:, None]
    rows = np.where(is_self, -1, rows)
    scores = np.where(is_self, -np.inf, scores).astype(np.float32, copy=False)
    order = np.argsort(is_self, axis=1, kind="stable")
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _fit_width(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut or pad (-1 / -inf) result lists to exactly ``k`` columns."""
    rows, scores = rows[:, :k], scores[:, :k]
    if rows.shape[1] < k:
        pad = k - rows.shape[1]
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return rows.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)


def _progress_bar(total: int) -> tuple[Any, Any]:
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task("evaluating", total=total)
    bar.start()
    return bar, task


# ---- input preparation ------------------------------------------------------------------------
def _prepare_search(query_vectors: np.ndarray, gallery_vectors: np.ndarray | None,
                    leave_one_out: bool, query_ids: Sequence[Any] | None,
                    gallery_ids: Sequence[Any] | None, exclude_same_id: bool = False,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Checked unit-length float32 queries and gallery, the gallery ids as strings, and each
    query's own gallery row to leave out of its list (-1 where the query is not in the gallery;
    None when nothing is left out). Own rows are found by id under leave-one-out, or whenever
    ``exclude_same_id`` and both id lists are given; by row number under leave-one-out without
    ids."""
    queries = _unit_rows(query_vectors, "query vectors")
    if gallery_vectors is None:
        if not leave_one_out:
            raise EvaluationError("gallery_vectors is required unless leave_one_out=True")
        gallery = queries
        if gallery_ids is None:
            gallery_ids = query_ids
    else:
        gallery = _unit_rows(gallery_vectors, "gallery vectors")
    if len(gallery) == 0:
        raise EvaluationError("the gallery is empty: nothing to search")
    if queries.shape[1] != gallery.shape[1]:
        raise ModelMismatchError(f"query vectors have dimension {queries.shape[1]} but gallery "
                                 f"vectors have {gallery.shape[1]}; embed both with one embedder")
    query_id_array = _id_array(query_ids, len(queries), "query_ids")
    gallery_id_array = _id_array(gallery_ids, len(gallery), "gallery_ids")
    if gallery_id_array is not None and len(set(gallery_id_array.tolist())) != len(gallery):
        raise EvaluationError("gallery_ids must be unique")

    self_rows = None
    have_ids = query_id_array is not None and gallery_id_array is not None
    if leave_one_out or (exclude_same_id and have_ids):
        if have_ids:
            position = {item: row for row, item in enumerate(gallery_id_array.tolist())}
            self_rows = np.array([position.get(item, -1) for item in query_id_array.tolist()],
                                 dtype=np.int64)
        elif len(queries) == len(gallery):
            self_rows = np.arange(len(queries), dtype=np.int64)
        else:
            raise EvaluationError(
                "leave_one_out with a separate gallery of another size needs query_ids and "
                "gallery_ids to know which gallery row is each query")
    return queries, gallery, self_rows, gallery_id_array


def _unit_rows(vectors: np.ndarray, what: str) -> np.ndarray:
    """Contiguous float32 ``[n, d]``; rows are normalised (in a copy) only if they are not
    unit length already, so the usual embedder output is used without copying."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] == 0:
        raise EvaluationError(f"{what} must be a 2-D [n, dim] array, got shape {array.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", array, array, dtype=np.float64))
    if not np.isfinite(norms).all():  # any NaN/inf in a row makes its norm NaN/inf
        raise EvaluationError(f"{what} contain NaN or infinite values")
    if np.any(np.abs(norms[norms > 0] - 1.0) > 1e-3):
        array = array / np.maximum(norms, 1e-12).astype(np.float32)[:, None]
    return array


def _id_array(ids: Sequence[Any] | None, expected: int, what: str) -> np.ndarray | None:
    if ids is None:
        return None
    array = np.array([str(i) for i in ids], dtype=object)
    if len(array) != expected:
        raise EvaluationError(f"{what} has {len(array)} entries for {expected} vectors")
    return array
