"""What the FAISS backends share: the id table, locking, filters, excludes, saving and loading.

The backends (``exact`` in :mod:`.faiss_exact`, ``hnsw`` in :mod:`.faiss_hnsw`, ``ivf`` in
:mod:`.faiss_ivf`) keep ids and attributes in an :class:`~lookalike.index.attributes.AttributeTable`;
FAISS only ever sees int64 labels. Vectors are L2-normalised on the way in (queries too), so
inner products are cosines.

**Filters** become a bool mask over labels (:meth:`AttributeTable.mask`, the same semantics as
``Filters.matches``), packed into ``faiss.IDSelectorBitmap`` and passed in the search parameters,
so FAISS skips non-matching items while it searches instead of after it (each backend says how
it keeps a filtered query from losing results).

**Excludes** (per-query ids) are searched as ``k + len(exclude)`` and dropped afterwards; a query
with a long exclude list (> ``_EXCLUDE_INLINE``) gets its own selector instead.

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
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, StoreError, UnknownItemError
from lookalike.index.attributes import AttributeTable, columns_from_rows, unique_last
from lookalike.index.base import INDEX_MANIFEST, Filters, Hits, VectorIndex
from lookalike.index.rwlock import ReadWriteLock
from lookalike.storage import atomic_write_text

FORMAT_VERSION = 1
_EXCLUDE_INLINE = 64  # longer per-query exclude lists get their own selector
_DATA_PREFIXES = ("vectors-", "template-", "pending-", "items-")


def bitmap_selector(mask: np.ndarray) -> tuple[Any, np.ndarray]:
    """A FAISS bitmap selector for ``mask`` (keep the returned bitmap alive while it is used)."""
    bitmap = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap


def write_atomically(path: Path, write: Any) -> None:
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


def save_npy(path: Path, array: np.ndarray) -> None:
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
                write_atomically(items, lambda tmp: pq.write_table(table, tmp))
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
        write_atomically(path, lambda tmp: faiss.write_index(index, str(tmp)))
        written.append(path)
        return name

    def _read_faiss(self, path: Path, mmap: bool) -> Any:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        if index.d != self.dim:
            raise StoreError(f"{path}: FAISS index of dimension {index.d}, manifest says {self.dim}")
        return index

