"""The ``exact`` backend: flat inner product over float vectors (perfect recall).

``IndexFlatIP`` wrapped in ``IndexIDMap2``: removal really deletes (``remove_ids``) and freed labels
are reused. A filter passing at most a quarter of the items gathers the passing vectors and uses
BLAS (FAISS's selector scan checks every item and cannot use matrix products); otherwise the
selector is passed into the FAISS search.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from lookalike.index.base import register
from lookalike.index.faiss_common import FaissIndex, bitmap_selector


@register("exact")
class ExactIndex(FaissIndex):
    """Exact cosine search: ``IndexIDMap2(IndexFlatIP)``; perfect recall, ``4 * dim`` bytes/item.

    Removal deletes from FAISS (``remove_ids``), and removed labels are reused by later adds.
    """

    removes_from_faiss = True

    def __init__(self, dim: int, embedder_id: str = "", **params: Any) -> None:
        super().__init__(dim, embedder_id, **params)
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _add_vectors(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, labels)

    def _remove_labels(self, labels: np.ndarray) -> None:
        self._index.remove_ids(np.ascontiguousarray(labels, dtype=np.int64))

    def _search_labels(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
                       n_pass: int) -> tuple[np.ndarray, np.ndarray]:
        if mask is None:
            return self._index.search(queries, k)
        if n_pass * 4 <= self._index.ntotal:
            # Few pass: gathering them and using BLAS beats FAISS's selector scan, which checks
            # every item and cannot use matrix products (same exact answer either way).
            labels = np.flatnonzero(mask).astype(np.int64)
            scores, rows = faiss.knn(queries, self._reconstruct(labels), k,
                                     metric=faiss.METRIC_INNER_PRODUCT)
            return scores, np.where(rows >= 0, labels[np.maximum(rows, 0)], -1)
        selector, _bitmap = bitmap_selector(mask)  # _bitmap must outlive the search
        return self._index.search(queries, k, params=faiss.SearchParameters(sel=selector))

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(np.ascontiguousarray(labels, dtype=np.int64))

    def memory_bytes(self) -> int:
        n = self._index.ntotal
        # flat floats + the id map (int64) + its reverse hash map (~32 bytes an entry)
        return int(n * self.dim * 4 + n * 8 + n * 32 + self.table.nbytes())

    def _save_data(self, folder: Path, token: str, written: list[Path]) -> dict[str, str]:
        return {"vectors": self._write_faiss(self._index, folder, f"vectors-{token}.faiss", written)}

    def _load_data(self, folder: Path, files: Mapping[str, str], manifest: Mapping[str, Any],
                   mmap: bool) -> None:
        self._index = self._read_faiss(folder / files["vectors"], mmap)
        self._mapped = mmap

    def _make_private(self) -> None:
        self._index = faiss.deserialize_index(faiss.serialize_index(self._index))

