"""FAISS backends: ``exact`` (flat inner product) and ``hnsw`` (quantised graph search).

Both keep ids and attributes in an :class:`~lookalike.index.attributes.AttributeTable`; FAISS
only ever sees int64 labels. Vectors are L2-normalised on the way in (queries too), so inner
products are cosines.

**Filters** become a bool mask over labels (:meth:`AttributeTable.mask`, the same semantics as
``Filters.matches``), packed into ``faiss.IDSelectorBitmap`` and passed in the search parameters,
so FAISS skips non-matching items while it searches instead of after it. A filtered HNSW walk
still only meets the items near the query, so (measured: benchmarks/RESULTS.md#index) the HNSW backend
searches exactly over just the passing items' codes when at most ``exact_below`` (50,000) pass,
widens the beam to ``ef_search / sqrt(share passing)`` otherwise, and redoes exactly any query
that still comes back with fewer than ``k`` hits: a filtered query never loses results. The
exact backend gathers the passing vectors and uses BLAS when at most a quarter pass (FAISS's
selector scan checks every item and cannot use matrix products); otherwise it uses the selector.

**Excludes** (per-query ids) are searched as ``k + len(exclude)`` and dropped afterwards; a query
with a long exclude list (> ``_EXCLUDE_INLINE``) gets its own selector instead.

**Updates.** ``exact`` wraps ``IndexFlatIP`` in ``IndexIDMap2``: removal really deletes
(``remove_ids``) and freed labels are reused. FAISS HNSW cannot delete a node, so ``hnsw`` marks it
dead (the selector hides it from every search) and, once dead nodes pass ``compact_ratio`` (20%)
of the graph, rebuilds the graph from the stored codes of the live items (:meth:`HNSWIndex.compact`).
The rebuild re-encodes the decoded codes with the same trained quantiser, so codes do not drift.
Until ``train_size`` vectors have arrived an ``hnsw`` index holds plain float vectors and searches
them exactly; the quantiser is then trained on them and the graph built.

**Threads.** Each index has a readers-writer lock: any number of concurrent ``search`` calls, or
one ``add`` / ``remove`` / ``compact`` at a time (FAISS releases the GIL, so searches run in
parallel). Each search also uses FAISS's own OpenMP threads; callers serving many threads may
want ``faiss.omp_set_num_threads(1)``.

**Saving** is atomic without help from the caller: data files get a fresh random suffix and are
fully written (temp name, fsync, rename) before ``index.json`` — which names them — is atomically
replaced; files of the previous save are deleted only after that. ``load(folder, mmap=True)`` maps
the FAISS file read-only (``IO_FLAG_MMAP_IFC``) so worker processes share its pages; the first
write to such an index copies it into private memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, StoreError, UnknownItemError
from lookalike.index.attributes import AttributeTable, columns_from_rows, unique_last
from lookalike.index.base import INDEX_MANIFEST, Filters, Hits, VectorIndex, register
from lookalike.storage import atomic_write_text

FORMAT_VERSION = 1
_EXCLUDE_INLINE = 64  # longer per-query exclude lists get their own selector
_TRAIN_SAMPLE = 100_000  # vectors used to train a quantiser (min/max per dimension)
_DATA_PREFIXES = ("vectors-", "template-", "pending-", "items-")


class ReadWriteLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _selector(mask: np.ndarray) -> tuple[Any, np.ndarray]:
    """A FAISS bitmap selector for ``mask`` (keep the returned bitmap alive while it is used)."""
    bitmap = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap


def _write_atomically(path: Path, write: Any) -> None:
    """Call ``write(temp_path)``, fsync, then rename to ``path``; nothing is left on failure."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file handle: np.save(path) would append ".npy"
        np.save(handle, array, allow_pickle=False)


class FaissIndex(VectorIndex):
    """What the FAISS backends share: the id table, locking, search plumbing, save and load."""

    #: True when removed labels leave FAISS (so they can be reused and need no selector).
    removes_from_faiss: ClassVar[bool] = True

    def __init__(self, dim: int, embedder_id: str = "", **params: Any) -> None:
        if int(dim) <= 0:
            raise LookalikeError(f"index dimension must be positive, got {dim}")
        super().__init__(dim, embedder_id, **params)
        self.table = AttributeTable(reuse_labels=self.removes_from_faiss)
        self._lock = ReadWriteLock()
        self._mapped = False  # loaded with mmap: copy before the first write

    # ---- hooks for the backends ------------------------------------------------------------
    def _add_vectors(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def _remove_labels(self, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _search_labels(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
                       n_pass: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, labels) among ``mask`` (None = every live item); -1 pads."""
        raise NotImplementedError

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _after_write(self) -> None:
        """Housekeeping after add/remove (HNSW compacts here)."""

    def _make_private(self) -> None:
        """Turn a memory-mapped FAISS index into an owned, writable one."""

    # ---- writing ---------------------------------------------------------------------------
    def add(self, ids: Sequence[str], vectors: np.ndarray,
            attributes: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Insert or replace items (an id already present gets the new vector and attributes)."""
        ids, vectors = self.checked_add(ids, vectors, attributes)
        if not ids:
            return
        unique_ids, rows = unique_last(ids)  # a repeated id: its last row wins
        vectors = vectors[rows]
        columns = columns_from_rows(
            unique_ids, None if attributes is None else [attributes[r] for r in rows.tolist()])
        with self._lock.write():
            self._writable()
            old = self.table.labels_of(unique_ids)
            old = old[old >= 0]
            if len(old):
                self._remove_labels(old)
                self.table.release(old)
            labels = self.table.insert_columns(unique_ids, columns)
            self._add_vectors(labels, vectors)
            self._after_write()

    def remove(self, ids: Iterable[str]) -> int:
        """Delete items; returns how many were present. Unknown ids are ignored."""
        ids = [i for i in ids if isinstance(i, str)]
        with self._lock.write():
            labels = self.table.labels_of(ids)
            labels = np.unique(labels[labels >= 0])
            if not len(labels):
                return 0
            self._writable()
            self._remove_labels(labels)
            self.table.release(labels)
            self._after_write()
            return len(labels)

    def _writable(self) -> None:
        if self._mapped:
            self._make_private()
            self._mapped = False

    # ---- reading ---------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int = 10, filters: Filters | None = None,
               exclude: Sequence[Iterable[str]] | None = None) -> list[Hits]:
        """The ``k`` nearest live items to each query row, best first, among those passing
        ``filters``; ``exclude[i]`` lists ids query ``i`` must not return."""
        queries = self.checked_search(vectors, k, exclude)
        results = [Hits([], []) for _ in range(len(queries))]
        with self._lock.read():
            if k == 0 or not len(self.table) or not len(queries):
                return results
            has_filter = filters is not None and not filters.is_empty()
            needs_mask = has_filter or (self.table.n_dead > 0 and not self.removes_from_faiss)
            mask = self.table.mask(filters) if needs_mask else None
            n_pass = int(mask.sum()) if mask is not None else len(self.table)
            if n_pass == 0:
                return results
            excluded = self._excluded_labels(exclude, len(queries), mask)
            inline = [q for q in range(len(queries)) if len(excluded[q]) <= _EXCLUDE_INLINE]
            if inline:
                extra = max(len(excluded[q]) for q in inline)
                scores, labels = self._search_labels(queries[inline], min(k + extra, n_pass),
                                                     mask, n_pass)
                for row, q in enumerate(inline):
                    results[q] = self._hits(scores[row], labels[row], excluded[q], k)
            for q in set(range(len(queries))) - set(inline):
                own = (mask.copy() if mask is not None else self.table.alive[: self.table.size].copy())
                own[excluded[q]] = False
                n_own = int(own.sum())
                if n_own:
                    scores, labels = self._search_labels(queries[q: q + 1], min(k, n_own), own, n_own)
                    results[q] = self._hits(scores[0], labels[0], excluded[q], k)
        return results

    def _excluded_labels(self, exclude: Sequence[Iterable[str]] | None, n_queries: int,
                         mask: np.ndarray | None) -> list[np.ndarray]:
        """Per query, the labels of excluded ids that could otherwise be returned."""
        if exclude is None:
            return [np.zeros(0, dtype=np.int64)] * n_queries
        out = []
        for ids in exclude:
            labels = self.table.labels_of([i for i in set(ids) if isinstance(i, str)])
            labels = labels[labels >= 0]
            out.append(labels[mask[labels]] if mask is not None else labels)
        return out

    def _hits(self, scores: np.ndarray, labels: np.ndarray, excluded: np.ndarray, k: int) -> Hits:
        keep = labels >= 0
        if len(excluded):
            keep &= ~np.isin(labels, excluded)
        labels, scores = labels[keep][:k], scores[keep][:k]
        return Hits(self.table.ids_of(labels), [float(s) for s in scores])

    def ids(self) -> list[str]:
        with self._lock.read():
            return self.table.ids_of(self.table.live_labels())

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str):
            return False
        with self._lock.read():
            return bool(self.table.labels_of([item_id])[0] >= 0)

    def attributes(self, item_id: str) -> dict[str, Any]:
        """The stored attributes of one item (missing ones left out)."""
        with self._lock.read():
            label = int(self.table.labels_of([item_id])[0])
            if label < 0:
                raise UnknownItemError(f"{item_id!r} is not in the index")
            return self.table.attributes_of(label)

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored (unit, possibly quantised) vectors of ``ids``, one row each."""
        with self._lock.read():
            labels = self.table.labels_of(list(ids))
            missing = [i for i, label in zip(ids, labels) if label < 0]
            if missing:
                raise UnknownItemError(f"{missing[0]!r} is not in the index"
                                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            if not len(labels):
                return np.zeros((0, self.dim), dtype=np.float32)
            return self._reconstruct(labels)

    # ---- saving ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the index into ``folder`` atomically; returns ``folder``.

        A crash at any point leaves the previous save in ``folder`` loadable: new data files are
        complete before ``index.json`` switches to them, and old ones are removed after.
        """
        import pyarrow.parquet as pq

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        written: list[Path] = []
        try:
            with self._lock.read():
                table, labels = self.table.to_arrow()
                items = folder / f"items-{token}.parquet"
                _write_atomically(items, lambda tmp: pq.write_table(table, tmp))
                written.append(items)
                files = {"items": items.name, **self._save_data(folder, token, written)}
                manifest = {
                    "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
                    "embedder_id": self.embedder_id, "count": len(self.table),
                    "params": self.params, "files": files, "label_slots": self.table.size,
                    "columns": self.table.column_kinds(), **self._manifest_extra()}
            atomic_write_text(folder / INDEX_MANIFEST, json.dumps(manifest, indent=1))
        except BaseException:
            for path in written:  # complete but unreferenced: remove so nothing half-done lingers
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        keep = set(files.values())
        for path in folder.iterdir():
            if path.name.startswith(_DATA_PREFIXES) and path.name not in keep:
                with contextlib.suppress(OSError):
                    path.unlink()
        return folder

    def _save_data(self, folder: Path, token: str, written: list[Path]) -> dict[str, str]:
        raise NotImplementedError

    def _manifest_extra(self) -> dict[str, Any]:
        return {}

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = False) -> "FaissIndex":
        """Read an index written by :meth:`save`; ``mmap=True`` maps the FAISS file read-only."""
        import pyarrow
        import pyarrow.parquet as pq

        folder = Path(folder)
        path = folder / INDEX_MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise StoreError(f"{folder}: no {INDEX_MANIFEST}; not a saved lookalike index") from None
        except (OSError, ValueError) as error:
            raise StoreError(f"{path}: unreadable index manifest ({error})") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: index format {manifest.get('format_version')!r} is not "
                             f"{FORMAT_VERSION}; rebuild the index")
        if manifest.get("kind") != cls.kind:
            raise ModelMismatchError(f"{path}: a {manifest.get('kind')!r} index, not {cls.kind!r}")
        index = cls(manifest["dim"], manifest.get("embedder_id", ""), **manifest.get("params", {}))
        files = manifest["files"]
        try:
            table = pq.read_table(folder / files["items"])
            index.table = AttributeTable.from_arrow(table, manifest["columns"],
                                                    manifest["label_slots"],
                                                    reuse_labels=cls.removes_from_faiss)
            del table
            pyarrow.default_memory_pool().release_unused()  # Arrow's pool keeps freed pages
            index._load_data(folder, files, manifest, mmap)
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            raise StoreError(f"{folder}: damaged index files ({error})") from None
        if len(index.table) != manifest["count"]:
            raise StoreError(f"{folder}: {len(index.table)} items on disk, manifest says "
                             f"{manifest['count']}")
        return index

    def _load_data(self, folder: Path, files: Mapping[str, str], manifest: Mapping[str, Any],
                   mmap: bool) -> None:
        raise NotImplementedError

    def _write_faiss(self, index: Any, folder: Path, name: str, written: list[Path]) -> str:
        path = folder / name
        _write_atomically(path, lambda tmp: faiss.write_index(index, str(tmp)))
        written.append(path)
        return name

    def _read_faiss(self, path: Path, mmap: bool) -> Any:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        if index.d != self.dim:
            raise StoreError(f"{path}: FAISS index of dimension {index.d}, manifest says {self.dim}")
        return index


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
        selector, _bitmap = _selector(mask)  # _bitmap must outlive the search
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


@register("hnsw")
class HNSWIndex(FaissIndex):
    """Approximate cosine search on a FAISS HNSW graph over quantised codes.

    The FAISS structure is ``IndexPreTransform(RandomRotation) -> IndexHNSW -> codes``.
    Parameters (defaults from :func:`lookalike.index.choose.choose_index` for a large index):

    * ``M`` — graph degree (level 0 keeps ``2*M`` neighbours: ~``8*M + 12`` bytes an item);
    * ``ef_search`` / ``ef_construction`` — beam widths at query / build time;
    * ``storage`` — how vectors are stored in the graph: ``SQ8`` (1 byte a dimension), ``SQ6``,
      ``SQ4``, ``SQfp16`` (2 bytes) or ``Flat`` (4 bytes, no quantisation);
    * ``rotate`` — apply a fixed random rotation (FAISS ``RandomRotationMatrix``) first. Scalar
      quantisers spend their levels per dimension; embeddings put most variance in a few
      dimensions, and rotating spreads it evenly, which cuts the inner-product error of SQ8
      several-fold (see docs/index.md);
    * ``train_size`` — vectors to collect before training the quantiser and building the graph;
    * ``compact_ratio`` — rebuild when this share of graph nodes is dead (None: never by itself);
    * ``exact_below`` — a filter (or set of live items) passing at most this many items is
      searched exactly over just those items' codes.
    """

    removes_from_faiss = False
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "M": 16, "ef_search": 56, "ef_construction": 160, "storage": "SQ8", "rotate": True,
        "train_size": 10_000, "compact_ratio": 0.2, "exact_below": 50_000,
    }
    #: Filtered searches widen the beam to ``ef_search / sqrt(share passing)``, at most this.
    MAX_FILTERED_EF = 1024

    def __init__(self, dim: int, embedder_id: str = "", **params: Any) -> None:
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise LookalikeError(f"hnsw index: unknown parameter(s) {', '.join(sorted(unknown))}; "
                                 f"known: {', '.join(self.DEFAULTS)}")
        merged = {**self.DEFAULTS, **params}
        super().__init__(dim, embedder_id, **merged)
        if int(merged["M"]) < 2 or int(merged["ef_search"]) < 1 or int(merged["train_size"]) < 1:
            raise LookalikeError("hnsw index: M must be >= 2, ef_search and train_size >= 1")
        storage = str(merged["storage"])
        if storage != "Flat" and not storage.startswith("SQ"):
            raise LookalikeError(f"hnsw index: storage {storage!r} is not Flat, SQ8, SQ6, SQ4, "
                                 "SQfp16 or SQbf16 (FAISS HNSW over PQ codes is L2-only)")
        self._factory = f"HNSW{int(merged['M'])},{storage}"
        if merged["rotate"]:
            self._factory = f"RR{self.dim},{self._factory}"
        try:  # fail now, not at the 10,000th vector, on a bad storage code
            faiss.index_factory(self.dim, self._factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as error:
            raise LookalikeError(f"hnsw index: FAISS cannot build {self._factory!r} "
                                 f"({str(error).strip().splitlines()[-1]})") from None
        self._index: Any = None  # the graph, once trained
        self._template: np.ndarray | None = None  # the trained, empty index (for rebuilds)
        self._pending = np.zeros((0, self.dim), dtype=np.float32)  # floats until trained

    # ---- structure -------------------------------------------------------------------------
    @property
    def trained(self) -> bool:
        """Whether the quantiser is trained and the graph exists (else: exact over floats)."""
        return self._index is not None

    def _graph(self, index: Any = None) -> Any:
        """The ``IndexHNSW`` inside the rotation wrapper, if any."""
        index = faiss.downcast_index(index if index is not None else self._index)
        if isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        return index

    def _to_graph_space(self, vectors: np.ndarray) -> np.ndarray:
        """Apply the rotation (if any), giving vectors comparable with the stored codes."""
        index = faiss.downcast_index(self._index)
        if isinstance(index, faiss.IndexPreTransform):
            for step in range(index.chain.size()):
                vectors = faiss.downcast_VectorTransform(index.chain.at(step)).apply(vectors)
        return vectors

    def _empty_trained(self) -> Any:
        index = faiss.deserialize_index(self._template)
        self._graph(index).hnsw.efConstruction = int(self.params["ef_construction"])
        return index

    def _train_and_build(self, new_vectors: np.ndarray) -> None:
        """Train the quantiser on the floats collected so far plus ``new_vectors`` (whose labels
        follow the collected ones) and build the graph from the live ones."""
        n_pending = len(self._pending)
        keep = self.table.compact()  # live old labels in order: pending rows, then new rows
        from_pending, from_new = keep[keep < n_pending], keep[keep >= n_pending] - n_pending
        sample = np.sort(np.random.default_rng(0).permutation(len(keep))[:_TRAIN_SAMPLE])
        in_pending = sample < len(from_pending)
        training = np.concatenate([self._pending[from_pending[sample[in_pending]]],
                                   new_vectors[from_new[sample[~in_pending] - len(from_pending)]]])
        index = faiss.index_factory(self.dim, self._factory, faiss.METRIC_INNER_PRODUCT)
        index.train(training)
        self._template = faiss.serialize_index(index)
        index = self._empty_trained()
        if len(from_pending):
            index.add(self._pending[from_pending])
        index.add(new_vectors[from_new] if len(from_new) < len(new_vectors) else new_vectors)
        self._index = index
        self._pending = np.zeros((0, self.dim), dtype=np.float32)

    def compact(self) -> None:
        """Drop dead nodes now by rebuilding the graph from the live items' stored codes."""
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

    # ---- hooks -----------------------------------------------------------------------------
    def _add_vectors(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        # HNSW labels are node numbers: new labels always continue the sequence.
        if self.trained:
            if labels[0] != self._index.ntotal or labels[-1] != self._index.ntotal + len(labels) - 1:
                raise AssertionError("hnsw labels out of step with graph nodes")
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

    #: A filter passing more than this share of the graph is searched in the graph.
    EXACT_MAX_SHARE = 0.5

    def _search_labels(self, queries: np.ndarray, k: int, mask: np.ndarray | None,
                       n_pass: int) -> tuple[np.ndarray, np.ndarray]:
        # Exact over the passing subset only when a filter made it small: a mask that merely
        # hides a few removed items (share near 1) must keep the graph search, or every query
        # after one delete would scan everything.
        if not self.trained:
            return self._exact_subset(queries, k, mask)
        selective = mask is not None and n_pass <= self.EXACT_MAX_SHARE * max(self._index.ntotal, 1)
        if selective and n_pass <= int(self.params["exact_below"]):
            return self._exact_subset(queries, k, mask)
        params = faiss.SearchParametersHNSW()
        ef = max(int(self.params["ef_search"]), k)
        selector = bitmap = None
        if mask is not None:
            # A filter hides nodes from the results but not from the walk: widen the beam so
            # enough passing nodes are met (benchmarks/RESULTS.md#index).
            share = n_pass / max(self._index.ntotal, 1)
            ef = max(ef, min(int(np.ceil(ef / np.sqrt(share))), self.MAX_FILTERED_EF))
            selector, bitmap = _selector(mask)
            params.sel = selector
        params.efSearch = ef
        if isinstance(faiss.downcast_index(self._index), faiss.IndexPreTransform):
            outer = faiss.SearchParametersPreTransform()
            outer.index_params = params
        else:
            outer = params
        scores, labels = self._index.search(queries, k, params=outer)
        del selector, bitmap  # (kept alive until here on purpose)
        short = (labels < 0).any(axis=1)
        if short.any():  # the graph walk ran dry of passing items: redo those queries exactly
            scores[short], labels[short] = self._exact_subset(queries[short], k, mask)
        return scores, labels

    def _exact_subset(self, queries: np.ndarray, k: int,
                      mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the passing items' stored codes (few, or not yet trained).

        Codes are decoded where they live (the rotated space) and the queries rotated instead,
        so scores equal the graph's own and no vector is rotated back.
        """
        labels = np.flatnonzero(self.table.alive[: self.table.size] if mask is None else mask)
        if self.trained:
            storage = faiss.downcast_index(self._graph().storage)
            codes = faiss.rev_swig_ptr(storage.codes.data(), storage.ntotal * storage.code_size)
            codes = codes.reshape(storage.ntotal, storage.code_size)
            # gather + one vectorised decode: much faster than reconstruct_batch's per-id calls
            vectors = storage.sa_decode(np.ascontiguousarray(codes[labels]))
            queries = self._to_graph_space(queries)
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

    def memory_bytes(self) -> int:
        total = self._pending.nbytes + self.table.nbytes()
        if self.trained:
            graph = self._graph()
            hnsw = graph.hnsw
            total += hnsw.neighbors.size() * 4 + hnsw.levels.size() * 4 + hnsw.offsets.size() * 8
            total += faiss.downcast_index(graph.storage).code_size * graph.ntotal
        return int(total)

    # ---- persistence -----------------------------------------------------------------------
    def _save_data(self, folder: Path, token: str, written: list[Path]) -> dict[str, str]:
        if not self.trained:
            path = folder / f"pending-{token}.npy"
            _write_atomically(path, lambda tmp: _save_npy(tmp, self._pending))
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
        self._graph().hnsw.efConstruction = int(self.params["ef_construction"])
        self._mapped = mmap
        if self._index.ntotal != self.table.size:
            raise StoreError(f"{folder}: graph has {self._index.ntotal} nodes, table "
                             f"{self.table.size} labels")

    def _make_private(self) -> None:
        self._index = faiss.deserialize_index(faiss.serialize_index(self._index))
