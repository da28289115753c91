"""The ``binary`` index: Hamming search over packed codes, then exact re-ranking (paper 000).

Paper 000 retrieves in two steps: the Hamming distance between binary codes (eq. 7) picks a
candidate set fast, then the Euclidean distance between the float features (eq. 8) orders the
candidates. Here:

1. Vectors arriving at :meth:`add` are L2-normalised (as in every backend) and turned into codes
   by a :class:`~lookalike.models.hashing.HyperplaneCoder`: the learned hash layer of a
   ``cnn-hash`` embedder (``create_index("binary", dim, coder=embedder.coder())``) or, by
   default, seeded random-hyperplane LSH over whatever embedder built the vectors.
2. Codes live in a FAISS ``IndexBinaryFlat`` (an exhaustive popcount scan; ``bits / 8`` bytes an
   item). A query takes the ``candidates`` nearest codes (at least ``k``).
3. With ``rerank=True`` those candidates are re-ordered by Euclidean distance between the stored
   float vectors and the query; for unit vectors that is the cosine order, and the score returned
   is the cosine ``1 - d^2 / 2``. Without re-ranking (or without stored floats) the order is by
   Hamming distance and the score ``1 - 2 * hamming / bits``, a rough stand-in for the cosine.

**Memory.** ``store_vectors=False`` keeps only the codes (no re-ranking possible). With floats,
``load(folder, mmap=True)`` maps them read-only from disk, so only the candidates' pages are
touched per query; the codes are always in RAM.

**Filters and excludes** work as in the other FAISS backends: the filter mask becomes an
``IDSelectorBitmap`` that ``IndexBinaryFlat`` honours *during* the scan (measured: FAISS supports
search parameters on the flat binary index, not on ``IndexBinaryHash``), so a filtered query
still gets ``k`` hits whenever ``k`` items pass; excluded ids are over-fetched and dropped.

**Updates.** Labels are never reused: removed items stay in the code array, hidden by the
selector, until more than ``compact_ratio`` of the slots are dead; then codes and floats are
compacted.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from lookalike.errors import LookalikeError, StoreError
from lookalike.index.base import register
from lookalike.index.faiss_common import FaissIndex, bitmap_selector, save_npy, write_atomically
from lookalike.models.hashing import HyperplaneCoder, check_bits

_RERANK_BLOCK = 256  # queries re-ranked together: block x candidates x dim floats in memory


@register("binary")
class BinaryIndex(FaissIndex):
    """Hamming search over hyperplane codes + Euclidean re-ranking of the top candidates.

    Parameters: ``bits`` (code length, a multiple of 8; taken from ``coder`` when given),
    ``seed`` (of the random LSH planes when no ``coder`` is given), ``candidates`` (Hamming
    candidates per query, at least ``k``), ``rerank``, ``store_vectors`` and ``compact_ratio``.
    ``coder`` (a :class:`HyperplaneCoder`) is saved with the index, not in its manifest.
    """

    removes_from_faiss = False
    DEFAULTS: dict[str, Any] = {"bits": 64, "seed": 0, "candidates": 100, "rerank": True,
                                "store_vectors": True, "compact_ratio": 0.2}

    def __init__(self, dim: int, embedder_id: str = "", coder: HyperplaneCoder | None = None,
                 **params: Any) -> None:
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise LookalikeError(f"binary index: unknown parameter(s) "
                                 f"{', '.join(sorted(unknown))}; known: {', '.join(self.DEFAULTS)}, "
                                 "coder")
        merged = {**self.DEFAULTS, **params}
        if coder is not None:
            merged["bits"] = coder.bits
        merged["bits"] = check_bits(merged["bits"])
        if int(merged["candidates"]) < 1:
            raise LookalikeError(f"binary index: candidates must be >= 1, got {merged['candidates']}")
        if merged["rerank"] and not merged["store_vectors"]:
            raise LookalikeError("binary index: rerank=True needs store_vectors=True "
                                 "(re-ranking reads the float vectors)")
        super().__init__(dim, embedder_id, **merged)
        self.coder = coder or HyperplaneCoder.random(self.dim, merged["bits"], int(merged["seed"]))
        if self.coder.dim != self.dim:
            raise LookalikeError(f"binary index: the coder hashes {self.coder.dim}-d vectors but "
                                 f"the index holds {self.dim}-d ones")
        self._codes = faiss.IndexBinaryFlat(self.bits)
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)  # by label, grown by doubling

    @property
    def bits(self) -> int:
        return int(self.params["bits"])

    # ---- hooks ------------------------------------------------------------------------------
    def _add_vectors(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        # Labels are never reused, so new ones continue the code array's row numbers.
        assert labels[0] == self._codes.ntotal and len(labels) == labels[-1] - labels[0] + 1
        self._codes.add(self.coder.codes(vectors))
        if self.params["store_vectors"]:
            end = int(labels[-1]) + 1
            if end > len(self._vectors):
                grown = np.zeros((max(end, 2 * len(self._vectors), 64), self.dim), np.float32)
                grown[: len(self._vectors)] = self._vectors
                self._vectors = grown
            self._vectors[labels] = vectors

    def _remove_labels(self, labels: np.ndarray) -> None:
        pass  # the table marks them dead; the search selector hides them until a compaction

    def _after_write(self) -> None:
        ratio = self.params["compact_ratio"]
        if ratio is not None and self.table.size and self.table.n_dead > ratio * self.table.size:
            self._compact()

    def _compact(self) -> None:
        keep = self.table.compact()  # old labels in their new order 0..n-1
        codes = self.code_array()[keep]
        self._codes = faiss.IndexBinaryFlat(self.bits)
        if len(codes):
            self._codes.add(codes)
        if self.params["store_vectors"]:
            self._vectors = np.ascontiguousarray(self._vectors[keep])

    def _make_private(self) -> None:
        self._vectors = np.array(self._vectors)  # copy the read-only memory map into RAM

    def code_array(self) -> np.ndarray:
        """All stored codes by label (dead slots included) as uint8 ``[slots, bits/8]``."""
        n = self._codes.ntotal
        return faiss.vector_to_array(self._codes.xb).reshape(n, self.bits // 8)

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        if not self.params["store_vectors"]:
            raise LookalikeError("binary index built with store_vectors=False keeps no vectors")
        return np.array(self._vectors[labels], dtype=np.float32)

    # ---- search -----------------------------------------------------------------------------
    def _search_labels(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
                       n_pass: int) -> tuple[np.ndarray, np.ndarray]:
        depth = min(max(k, int(self.params["candidates"])) if self.params["rerank"] else k, n_pass)
        distances, labels = self.hamming_search(self.coder.codes(queries), depth, mask)
        if not self.params["rerank"]:
            scores = 1.0 - 2.0 * distances.astype(np.float32) / self.bits
            return np.where(labels >= 0, scores, -np.inf).astype(np.float32), labels
        return self._rerank(queries, labels, k)

    def hamming_search(self, query_codes: np.ndarray, depth: int,
                       mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS Hamming top-``depth`` (distances, labels) among ``mask`` (None = all slots)."""
        query_codes = np.ascontiguousarray(query_codes, dtype=np.uint8)
        if mask is None:
            return self._codes.search(query_codes, depth)
        selector, _bitmap = bitmap_selector(mask)  # _bitmap must outlive the search
        return self._codes.search(query_codes, depth, params=faiss.SearchParameters(sel=selector))

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
        """Order each query's candidates by Euclidean distance (eq. 8); keep the best ``k``."""
        n, depth = candidates.shape
        out_labels = np.full((n, k), -1, dtype=np.int64)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        for start in range(0, n, _RERANK_BLOCK):
            block = candidates[start:start + _RERANK_BLOCK]
            valid = block >= 0
            floats = np.asarray(self._vectors[np.where(valid, block, 0).ravel()], np.float32)
            floats = floats.reshape(len(block), depth, self.dim)
            query = queries[start:start + len(block)]
            squared = ((floats - query[:, None, :]) ** 2).sum(axis=2)  # eq. 8, squared
            squared[~valid] = np.inf
            order = np.argsort(squared, axis=1, kind="stable")[:, :k]
            chosen = np.take_along_axis(squared, order, axis=1)
            width = order.shape[1]
            out_labels[start:start + len(block), :width] = np.where(
                np.isfinite(chosen), np.take_along_axis(block, order, axis=1), -1)
            out_scores[start:start + len(block), :width] = np.where(
                np.isfinite(chosen), 1.0 - chosen / 2.0, -np.inf)
        return out_scores, out_labels

    def memory_bytes(self) -> int:
        """Codes + the float vectors when they are in RAM (not memory-mapped) + the id table."""
        floats = 0
        if self.params["store_vectors"] and not isinstance(self._vectors, np.memmap):
            floats = self.table.size * self.dim * 4
        return int(self._codes.ntotal * self.bits // 8 + floats + self.table.nbytes())

    # ---- persistence ------------------------------------------------------------------------
    # File names start with "vectors-" so the base class's save removes a previous save's files.
    def _save_data(self, folder: Path, token: str, written: list[Path]) -> dict[str, str]:
        files = {"codes": f"vectors-{token}-codes.npy", "planes": f"vectors-{token}-planes.npy",
                 "offsets": f"vectors-{token}-offsets.npy"}
        arrays = {"codes": self.code_array(), "planes": self.coder.planes,
                  "offsets": self.coder.offsets}
        if self.params["store_vectors"]:
            files["floats"] = f"vectors-{token}-floats.npy"
            arrays["floats"] = self._vectors[: self.table.size]
        for key, name in files.items():
            path = folder / name
            write_atomically(path, lambda tmp, array=arrays[key]: save_npy(tmp, array))
            written.append(path)
        return files

    def _load_data(self, folder: Path, files: Mapping[str, str], manifest: Mapping[str, Any],
                   mmap: bool) -> None:
        self.coder = HyperplaneCoder(np.load(folder / files["planes"], allow_pickle=False),
                                     np.load(folder / files["offsets"], allow_pickle=False))
        codes = np.load(folder / files["codes"], allow_pickle=False)
        if codes.shape != (self.table.size, self.bits // 8) or self.coder.dim != self.dim:
            raise StoreError(f"{folder}: codes {codes.shape} / planes {self.coder.planes.shape} "
                             f"do not fit {self.table.size} slots of {self.bits} bits, dim {self.dim}")
        self._codes = faiss.IndexBinaryFlat(self.bits)
        if len(codes):
            self._codes.add(np.ascontiguousarray(codes))
        if self.params["store_vectors"]:
            self._vectors = np.load(folder / files["floats"], allow_pickle=False,
                                    mmap_mode="r" if mmap else None)
            if self._vectors.shape != (self.table.size, self.dim):
                raise StoreError(f"{folder}: float vectors {self._vectors.shape} do not fit "
                                 f"{self.table.size} slots of dimension {self.dim}")
            self._mapped = mmap
