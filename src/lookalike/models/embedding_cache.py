"""The embedding cache: vectors of one embedder keyed by content hash, in memory-mapped chunks.

Layout, one folder per embedder id (``<project>/embeddings/<embedder_id>/``)::

    cache.json                     {"embedder_id": ..., "dim": ...}; a different dim is refused
    chunk-000001-3f9a1c.npy        float32 [rows, dim] vectors, opened memory-mapped
    chunk-000001-3f9a1c.keys.npy   the rows' keys (content hashes), same order
    model/                         the embedder's own save() output (see save_model_once)

A chunk is committed by renaming its keys file into place *after* its vector file: a chunk
without keys (a crash between the two renames) is ignored and later swept by ``compact``. So an
interrupted run keeps every chunk it finished (resume) and a re-run embeds only keys that are
missing (incremental). Later chunks win when a key appears twice; ``compact`` merges all chunks
into one and drops superseded rows.

Vectors are never all in memory: chunks are ``np.load(mmap_mode="r")`` and only the rows asked
for are copied. The key index is a sorted numpy array of keys (bytes) with (chunk, row) columns,
rebuilt from the small keys files on open (about 70 MB for a million keys).

The pipeline that fills it is :mod:`lookalike.models.embed_pipeline`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, StoreError
from lookalike.models.base import Embedder
from lookalike.storage import atomic_file, atomic_write_text

META_FILE = "cache.json"
MODEL_DIR = "model"
_CHUNK = re.compile(r"^chunk-(\d{6,})-([0-9a-f]+)\.npy$")


def _keys_path(vectors_path: Path) -> Path:
    return vectors_path.with_name(vectors_path.name[: -len(".npy")] + ".keys.npy")


def _encode_keys(keys: Sequence[str]) -> np.ndarray:
    """Keys as a fixed-width bytes array (sha256 hex keys are 64 ASCII bytes each)."""
    encoded = [str(k).encode("utf-8") for k in keys]
    width = max((len(k) for k in encoded), default=1)
    return np.array(encoded, dtype=f"S{max(width, 1)}")


def _save_npy_atomically(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as handle:
        np.save(handle, array, allow_pickle=False)


class EmbeddingCache:
    """Vectors of one embedder keyed by content hash, stored as memory-mapped ``.npy`` chunks."""

    def __init__(self, folder: str | Path, embedder_id: str, dim: int) -> None:
        self.folder = Path(folder)
        self.embedder_id = str(embedder_id)
        self.dim = int(dim)
        meta_path = self.folder / META_FILE
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError) as error:
                raise StoreError(f"{meta_path}: unreadable cache metadata ({error})") from None
            if int(meta.get("dim", -1)) != self.dim:
                raise ModelMismatchError(f"{self.folder}: cache holds {meta.get('dim')}-d vectors, "
                                         f"the embedder makes {self.dim}-d")
            if meta.get("embedder_id") != self.embedder_id:
                raise ModelMismatchError(f"{self.folder}: cache is for embedder "
                                         f"{meta.get('embedder_id')}, not {self.embedder_id}")
        else:
            try:
                atomic_write_text(meta_path, json.dumps({"embedder_id": self.embedder_id,
                                                         "dim": self.dim}, indent=2))
            except OSError:
                if self.folder.exists():
                    raise
                # A read-only project that never cached this embedder: an empty cache to read;
                # put() will fail with the filesystem's own error.
        self._lock = threading.RLock()
        self._chunks: list[Path] = []
        self._vectors: list[np.ndarray] = []  # memory maps, one per chunk
        self._chunk_keys: list[np.ndarray] = []
        self._sorted_keys = np.zeros(0, dtype="S1")
        self._where = np.zeros((0, 2), dtype=np.int64)  # (chunk, row) per sorted key
        self._stale = True
        self._refresh()

    # ---- reading ----------------------------------------------------------------------------
    def _committed_chunks(self) -> list[Path]:
        found = []
        if not self.folder.is_dir():
            return []
        for path in self.folder.iterdir():
            match = _CHUNK.match(path.name)
            if match and not path.name.endswith(".keys.npy") and _keys_path(path).is_file():
                found.append((int(match.group(1)), match.group(2), path))
        return [path for _, _, path in sorted(found)]

    def _refresh(self) -> None:
        """Open chunks that appeared on disk since the last look (other writers, or our own)."""
        with self._lock:
            on_disk = self._committed_chunks()
            if on_disk == self._chunks and not self._stale:
                return
            known = dict(zip(self._chunks, zip(self._vectors, self._chunk_keys)))
            chunks, vectors, keys = [], [], []
            for path in on_disk:
                opened = known.get(path) or self._open_chunk(path)
                if opened is None:  # removed by a concurrent compact since we listed it
                    continue
                chunks.append(path)
                vectors.append(opened[0])
                keys.append(opened[1])
            self._chunks, self._vectors, self._chunk_keys = chunks, vectors, keys
            self._rebuild_index()

    def _open_chunk(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            vectors = np.load(path, mmap_mode="r", allow_pickle=False)
            keys = np.load(_keys_path(path), allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            raise StoreError(f"{path}: damaged cache chunk ({error})") from None
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ModelMismatchError(f"{path}: chunk holds vectors of shape {vectors.shape}, "
                                     f"cache dim is {self.dim}")
        if len(keys) != len(vectors):
            raise StoreError(f"{path}: {len(keys)} keys for {len(vectors)} vectors")
        return vectors, keys

    def _rebuild_index(self) -> None:
        if not self._chunk_keys:
            self._sorted_keys = np.zeros(0, dtype="S1")
            self._where = np.zeros((0, 2), dtype=np.int64)
            self._stale = False
            return
        width = max(k.dtype.itemsize for k in self._chunk_keys)
        all_keys = np.concatenate([k.astype(f"S{width}") for k in self._chunk_keys])
        chunk = np.concatenate([np.full(len(k), i, dtype=np.int64)
                                for i, k in enumerate(self._chunk_keys)])
        row = np.concatenate([np.arange(len(k), dtype=np.int64) for k in self._chunk_keys])
        # Stable sort keeps chunk order within equal keys; the last of each run is the newest.
        order = np.argsort(all_keys, kind="stable")
        sorted_keys = all_keys[order]
        last = np.ones(len(sorted_keys), dtype=bool)
        last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
        keep = order[last]
        self._sorted_keys = all_keys[keep]
        self._where = np.stack([chunk[keep], row[keep]], axis=1)
        self._stale = False

    def _positions(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Index into the sorted key array per key, and the found mask."""
        if len(self._sorted_keys) == 0 or len(keys) == 0:
            return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        wanted = _encode_keys(keys)
        pos = np.searchsorted(self._sorted_keys, wanted)
        pos = np.minimum(pos, len(self._sorted_keys) - 1)
        found = self._sorted_keys[pos] == wanted
        return pos, found

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors [n, dim], found [n])``: cached rows in ``keys`` order, zeros where missing."""
        keys = list(keys)
        with self._lock:
            if self._stale:
                self._refresh()
            pos, found = self._positions(keys)
            if not found.all():  # another process may have added chunks since we looked
                self._refresh()
                pos, found = self._positions(keys)
            out = np.zeros((len(keys), self.dim), dtype=np.float32)
            if found.any():
                where = self._where[pos[found]]
                targets = np.flatnonzero(found)
                for chunk in np.unique(where[:, 0]):
                    pick = where[:, 0] == chunk
                    rows = where[pick, 1]
                    order = np.argsort(rows)  # ascending rows read the memory map front to back
                    out[targets[pick][order]] = self._vectors[chunk][rows[order]]
            return out, found

    def __contains__(self, key: object) -> bool:
        return bool(self.lookup([str(key)])[1][0])

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._sorted_keys)

    def keys(self) -> list[str]:
        """Every cached key (sorted)."""
        with self._lock:
            self._refresh()
            return [k.decode("utf-8") for k in self._sorted_keys]

    # ---- writing ----------------------------------------------------------------------------
    def _next_name(self) -> Path:
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := _CHUNK.match(p.name))]
        return self.folder / f"chunk-{max(numbers, default=0) + 1:06d}-{secrets.token_hex(3)}.npy"

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Append one chunk (``keys`` with their ``[n, dim]`` rows) atomically."""
        keys = [str(k) for k in keys]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ModelMismatchError(f"{self.folder}: cannot store vectors of shape "
                                     f"{vectors.shape} in a {self.dim}-d cache")
        if len(keys) != len(vectors):
            raise LookalikeError(f"{self.folder}: {len(keys)} keys for {len(vectors)} vectors")
        if not keys:
            return
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._next_name()
            _save_npy_atomically(path, vectors)
            _save_npy_atomically(_keys_path(path), _encode_keys(keys))  # the commit
            self._stale = True

    def compact(self) -> None:
        """Merge all chunks into one, keeping only the newest row per key; atomic per file.

        Run it while no other process writes to this cache (the project holds its write lock).
        """
        with self._lock:
            if not self.folder.is_dir():
                return
            self._refresh()
            old = list(self._chunks)
            rows = sum(len(v) for v in self._vectors)
            if len(old) > 1 or (old and len(self._sorted_keys) < rows):
                target = self._next_name()
                tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
                try:
                    merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                       shape=(len(self._sorted_keys), self.dim))
                    block = 8192  # rows copied per step (~40 MB at 1,280-d): bounded memory
                    for start in range(0, len(self._sorted_keys), block):
                        where = self._where[start:start + block]
                        for chunk in np.unique(where[:, 0]):
                            pick = np.flatnonzero(where[:, 0] == chunk)
                            merged[start + pick] = self._vectors[chunk][where[pick, 1]]
                    merged.flush()
                    del merged
                    with open(tmp, "rb+") as handle:
                        os.fsync(handle.fileno())
                    os.replace(tmp, target)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                _save_npy_atomically(_keys_path(target), self._sorted_keys.copy())
                for path in old:  # the merged chunk is committed: the old ones are redundant
                    _keys_path(path).unlink(missing_ok=True)
                    path.unlink(missing_ok=True)
            # Sweep what crashed runs left: temporary files and vector files never committed.
            for path in self.folder.iterdir():
                if path.name.endswith(".tmp") and path.name.startswith(".chunk-"):
                    path.unlink(missing_ok=True)
                elif (_CHUNK.match(path.name) and not path.name.endswith(".keys.npy")
                      and not _keys_path(path).exists()):
                    path.unlink(missing_ok=True)
            self._chunks, self._vectors, self._chunk_keys = [], [], []
            self._stale = True
            self._refresh()


def save_model_once(embedder: Embedder, folder: str | Path) -> Path:
    """Save ``embedder`` into ``folder`` (the cache's ``model/``) unless a save is already there.

    Also points an embedder that builds files (the ONNX models of efficientnet-lite0) at
    ``folder/onnx`` when it has no cache folder of its own, so they live inside the project.
    """
    folder = Path(folder)
    config = folder / "config.json"
    if config.is_file():
        try:
            saved = json.loads(config.read_text()).get("embedder_id")
        except (OSError, ValueError):
            saved = None
        if saved is not None and saved != embedder.embedder_id:
            raise ModelMismatchError(f"{folder}: holds model {saved}, not {embedder.embedder_id}")
    else:
        staging = folder.with_name(f".{folder.name}.{secrets.token_hex(4)}.tmp")
        try:
            embedder.save(staging)
            if not config.is_file():  # another process may have won the race; theirs is equal
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if hasattr(embedder, "cache_dir") and getattr(embedder, "cache_dir") is None:
        embedder.cache_dir = folder / "onnx"  # type: ignore[attr-defined]
    return folder
