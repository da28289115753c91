"""What the trained FAISS backends (``hnsw``, ``ivf``) share: training, dead nodes, exact subsets.

**Training.** Until ``train_size`` vectors have arrived the index holds plain float vectors and
searches them exactly; the FAISS structure (quantisers, coarse centroids) is then trained on up to
``_TRAIN_SAMPLE`` of them (a seeded sample) and every vector collected so far is added. Later
adds go straight into the trained structure, which is never retrained: the first ``train_size``
vectors should look like the rest of the catalogue.

**Removal.** Labels are node numbers (FAISS HNSW cannot delete a node, and the refined IVF keeps
its codes in add order), so a removed item is marked dead (the search selector hides it) and,
once dead nodes pass ``compact_ratio`` (20%) of the structure, it is rebuilt from the stored codes
of the live items (:meth:`QuantisedIndex.compact`). The rebuild re-encodes the decoded codes with
the same trained quantisers, so codes do not drift.

**Filters.** A filter passing at most ``exact_below`` items (and at most half the index) is
searched exactly over just the passing items' stored codes; a wider one goes to the backend's
approximate search with a selector (each backend widens its search for it), and any query that
still comes back with fewer than ``k`` hits is redone exactly: a filtered query never loses
results.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from lookalike.errors import LookalikeError, StoreError
from lookalike.index.faiss_common import FaissIndex, save_npy, write_atomically

_TRAIN_SAMPLE = 100_000  # vectors used to train the quantisers


class QuantisedIndex(FaissIndex):
    """A FAISS structure over quantised codes that must be trained before it holds vectors."""

    removes_from_faiss = False
    #: Every parameter the backend knows, with its default (unknown ones are an error).
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: A filter passing more than this share of the index is searched approximately.
    EXACT_MAX_SHARE = 0.5

    def __init__(self, dim: int, embedder_id: str = "", **params: Any) -> None:
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise LookalikeError(f"{self.kind} index: unknown parameter(s) "
                                 f"{', '.join(sorted(unknown))}; known: {', '.join(self.DEFAULTS)}")
        merged = {**self.DEFAULTS, **params}
        super().__init__(dim, embedder_id, **merged)
        if int(merged["train_size"]) < 1:
            raise LookalikeError(f"{self.kind} index: train_size must be >= 1")
        self._untrained()  # fail now, not at the 10,000th vector, on bad parameters
        self._index: Any = None  # the FAISS structure, once trained
        self._template: np.ndarray | None = None  # the trained, empty index (for rebuilds)
        self._pending = np.zeros((0, self.dim), dtype=np.float32)  # floats until trained

    # ---- hooks for the backends ------------------------------------------------------------
    def _untrained(self) -> Any:
        """A fresh, untrained FAISS index for these parameters (LookalikeError if impossible)."""
        raise NotImplementedError

    def _configure(self, index: Any) -> None:
        """Set build-time settings on an empty trained or a loaded index."""

    def _code_store(self) -> Any:
        """The FAISS flat-codes index holding one code per label (in the rotated space)."""
        raise NotImplementedError

    def _search_trained(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
                        n_pass: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` among ``mask`` (None = everything) in the trained structure."""
        raise NotImplementedError

    # ---- structure -------------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        """Whether the quantisers are trained and the structure exists (else: exact over floats)."""
        return self._index is not None

    def _inner(self, index: Any = None) -> Any:
        """The index inside the rotation wrapper, if any."""
        index = faiss.downcast_index(index if index is not None else self._index)
        if isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        return index

    def _to_code_space(self, vectors: np.ndarray) -> np.ndarray:
        """Apply the rotation (if any), giving vectors comparable with the stored codes."""
        index = faiss.downcast_index(self._index)
        if isinstance(index, faiss.IndexPreTransform):
            for step in range(index.chain.size()):
                vectors = faiss.downcast_VectorTransform(index.chain.at(step)).apply(vectors)
        return vectors

    def _search_params(self, inner: Any) -> Any:
        """``inner`` search parameters wrapped for the rotation, if there is one."""
        if isinstance(faiss.downcast_index(self._index), faiss.IndexPreTransform):
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = inner
            return outer
        return inner

    def _empty_trained(self) -> Any:
        index = faiss.deserialize_index(self._template)
        self._configure(index)
        return index

    def _train_and_build(self, new_vectors: np.ndarray) -> None:
        """Train on the floats collected so far plus ``new_vectors`` (whose labels follow the
        collected ones) and add the live ones."""
        n_pending = len(self._pending)
        keep = self.table.compact()  # live old labels in order: pending rows, then new rows
        from_pending, from_new = keep[keep < n_pending], keep[keep >= n_pending] - n_pending
        sample = np.sort(np.random.default_rng(0).permutation(len(keep))[:_TRAIN_SAMPLE])
        in_pending = sample < len(from_pending)
        training = np.concatenate([self._pending[from_pending[sample[in_pending]]],
                                   new_vectors[from_new[sample[~in_pending] - len(from_pending)]]])
        index = self._untrained()
        index.train(training)
        self._template = faiss.serialize_index(index)
        index = self._empty_trained()
        if len(from_pending):
            index.add(self._pending[from_pending])
        index.add(new_vectors[from_new] if len(from_new) < len(new_vectors) else new_vectors)
        self._index = index
        self._pending = np.zeros((0, self.dim), dtype=np.float32)

    def compact(self) -> None:
        """Drop dead nodes now by rebuilding from the live items' stored codes."""
        with self._lock.write():
            self._writable()
            self._compact()

    def _compact(self) -> None:
        keep = self.table.compact()  # old labels, in their new (0..n-1) order
        if not self.trained:
            self._pending = self._pending[keep]
            return
        old, index = self._index, self._empty_trained()
        chunk = 65_536
        for start in range(0, len(keep), chunk):  # decode in chunks: never a full float copy
            index.add(old.reconstruct_batch(keep[start: start + chunk]))
        self._index = index

    def _after_write(self) -> None:
        ratio = self.params["compact_ratio"]
        if ratio is not None and self.table.size and self.table.n_dead > ratio * self.table.size:
            self._compact()

    # ---- FaissIndex hooks ------------------------------------------------------------------
    def _add_vectors(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        # Labels are node numbers: new labels always continue the sequence.
        if self.trained:
            if labels[0] != self._index.ntotal or labels[-1] != self._index.ntotal + len(labels) - 1:
                raise AssertionError(f"{self.kind} labels out of step with FAISS nodes")
            self._index.add(vectors)
        elif len(self.table) >= int(self.params["train_size"]):
            self._train_and_build(vectors)
        else:
            self._pending = np.concatenate([self._pending, vectors])

    def _remove_labels(self, labels: np.ndarray) -> None:
        pass  # the table marks them dead; the search selector hides them until a compaction

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if not self.trained:
            return self._pending[labels]
        return self._index.reconstruct_batch(labels)

    def _search_labels(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
                       n_pass: int) -> tuple[np.ndarray, np.ndarray]:
        # Exact over the passing subset only when a filter made it small: a mask that merely
        # hides a few removed items (share near 1) must keep the approximate search, or every
        # query after one delete would scan everything.
        if not self.trained:
            return self._exact_subset(queries, k, mask)
        selective = mask is not None and n_pass <= self.EXACT_MAX_SHARE * max(self._index.ntotal, 1)
        if selective and n_pass <= int(self.params["exact_below"]):
            return self._exact_subset(queries, k, mask)
        scores, labels = self._search_trained(queries, k, mask, n_pass)
        short = (labels < 0).any(axis=1)
        if short.any():  # the search ran dry of passing items: redo those queries exactly
            scores[short], labels[short] = self._exact_subset(queries[short], k, mask)
        return scores, labels

    def _exact_subset(self, queries: np.ndarray, k: int,
                      mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the passing items' stored codes (few, or not yet trained).

        Codes are decoded where they live (the rotated space) and the queries rotated instead,
        so scores equal the index's own and no vector is rotated back.
        """
        labels = np.flatnonzero(self.table.alive[: self.table.size] if mask is None else mask)
        if self.trained:
            store = self._code_store()
            codes = faiss.rev_swig_ptr(store.codes.data(), store.ntotal * store.code_size)
            codes = codes.reshape(store.ntotal, store.code_size)
            # gather + one vectorised decode: much faster than reconstruct_batch's per-id calls
            vectors = store.sa_decode(np.ascontiguousarray(codes[labels]))
            queries = self._to_code_space(queries)
        else:
            vectors = self._pending[labels]
        scores, rows = faiss.knn(queries, vectors, min(k, len(labels)),
                                 metric=faiss.METRIC_INNER_PRODUCT)
        found = np.where(rows >= 0, labels[np.maximum(rows, 0)], -1).astype(np.int64)
        if found.shape[1] < k:  # pad to k columns like a FAISS search would
            pad = k - found.shape[1]
            found = np.hstack([found, np.full((len(found), pad), -1, dtype=np.int64)])
            scores = np.hstack([scores, np.full((len(scores), pad), -np.inf, dtype=np.float32)])
        return scores, found

    def _code_bytes(self) -> int:
        """Bytes of pending floats, the id table and the per-label codes."""
        total = self._pending.nbytes + self.table.nbytes()
        if self.trained:
            store = self._code_store()
            total += store.code_size * store.ntotal
        return int(total)

    # ---- persistence -----------------------------------------------------------------------
    def _save_data(self, folder: Path, token: str, written: list[Path]) -> dict[str, str]:
        if not self.trained:
            path = folder / f"pending-{token}.npy"
            write_atomically(path, lambda tmp: save_npy(tmp, self._pending))
            written.append(path)
            return {"pending": path.name}
        return {"vectors": self._write_faiss(self._index, folder, f"vectors-{token}.faiss", written),
                "template": self._write_faiss(faiss.deserialize_index(self._template), folder,
                                              f"template-{token}.faiss", written)}

    def _load_data(self, folder: Path, files: Mapping[str, str], manifest: Mapping[str, Any],
                   mmap: bool) -> None:
        if "pending" in files:
            self._pending = np.load(folder / files["pending"], allow_pickle=False)
            if self._pending.shape != (self.table.size, self.dim):
                raise StoreError(f"{folder}: stored vectors have shape {self._pending.shape}, "
                                 f"expected ({self.table.size}, {self.dim})")
            return
        self._index = self._read_faiss(folder / files["vectors"], mmap)
        self._template = faiss.serialize_index(self._read_faiss(folder / files["template"], False))
        self._configure(self._index)
        self._mapped = mmap
        if self._index.ntotal != self.table.size:
            raise StoreError(f"{folder}: index has {self._index.ntotal} nodes, table "
                             f"{self.table.size} labels")

    def _make_private(self) -> None:
        self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
