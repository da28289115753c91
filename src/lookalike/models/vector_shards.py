"""Vector shards: embeddings as Parquet files (id, key, embedder id, vector) anyone can read.

The Ray engine can write its vectors here instead of streaming them to the driver
(``lookalike index --engine ray --shards DIR``): each model actor writes the rows of the batch it
embedded as one shard, so on a cluster the vectors go from the workers straight to shared
storage. The shards are then read by

* the embedding cache: :func:`import_shards` puts the rows it lacks (keyed by content hash), so
  ``lookalike index --shards DIR`` builds any index kind without embedding again;
* an index directly: :func:`add_shards` upserts them a batch at a time into any
  :class:`~lookalike.index.base.VectorIndex` -- e.g. a ``milvus`` collection -- with the
  attributes a caller looks up for each batch of ids.

Layout: ``DIR/part-<16 hex>.parquet``, columns ``id`` (the item id), ``key`` (the content hash
of its image, as the catalogue computes it), ``embedder_id`` and ``vector`` (``float32`` list of
the embedder's dimension, unit length). A shard is written to a hidden temporary file, synced and
renamed into place, so a reader sees a whole shard or none; its name is a hash of its ids, so a
retried batch replaces its own shard rather than adding a copy. Resuming: :func:`shard_rows`
says which (id, content hash) pairs are done; a rerun embeds only the others, so an item whose
image changed gets a new row (the old one stays: :func:`add_shards` takes ``current`` hashes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import ModelMismatchError, StoreError
from lookalike.storage import atomic_file

_SHARD = re.compile(r"^part-[0-9a-f]{16}\.parquet$")
#: Rows per batch when reading shards (bounds memory on big shard sets).
READ_BATCH = 8192


@dataclass
class ShardRows:
    """One batch of shard rows: item ids, content hashes and their unit vectors."""

    ids: list[str]
    keys: list[str]
    vectors: np.ndarray


def shard_name(ids: Sequence[str]) -> str:
    """The file name of the shard holding ``ids`` (the same ids always give the same name)."""
    digest = hashlib.sha256("\n".join(map(str, ids)).encode("utf-8")).hexdigest()
    return f"part-{digest[:16]}.parquet"


def write_shard(folder: str | Path, ids: Sequence[str], keys: Sequence[str], embedder_id: str,
                vectors: np.ndarray) -> Path:
    """Write one shard atomically (temporary file, fsync, rename) and return its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(ids) != len(keys) or len(ids) != len(vectors) or vectors.ndim != 2:
        raise StoreError(f"shard rows disagree: {len(ids)} ids, {len(keys)} keys, "
                         f"vectors of shape {vectors.shape}")
    dim = vectors.shape[1]
    table = pa.table({
        "id": pa.array([str(i) for i in ids], pa.string()),
        "key": pa.array([str(k) for k in keys], pa.string()),
        "embedder_id": pa.array([str(embedder_id)] * len(ids), pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    })
    path = folder / shard_name(ids)
    with atomic_file(path) as handle:
        pq.write_table(table, handle)
    return path


def shard_files(folder: str | Path) -> list[Path]:
    """The committed shards in ``folder`` (temporary files of unfinished writes are not)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _SHARD.match(p.name))


def shard_ids(folder: str | Path) -> set[str]:
    """Every item id the committed shards in ``folder`` hold."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for path in shard_files(folder):
        done.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return done


def shard_rows(folder: str | Path) -> set[tuple[str, str]]:
    """Every (item id, content hash) pair the committed shards in ``folder`` hold."""
    import pyarrow.parquet as pq

    done: set[tuple[str, str]] = set()
    for path in shard_files(folder):
        table = pq.read_table(path, columns=["id", "key"])
        done.update(zip(table.column("id").to_pylist(), table.column("key").to_pylist()))
    return done


def read_shards(folder: str | Path, embedder_id: str | None = None, dim: int | None = None,
                batch_rows: int = READ_BATCH) -> Iterator[ShardRows]:
    """The rows of every shard in ``folder``, ``batch_rows`` at a time. With ``embedder_id`` or
    ``dim`` given, a shard of another embedder or dimension is a one-line
    :class:`~lookalike.errors.ModelMismatchError`; a damaged shard a :class:`StoreError`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in shard_files(folder):
        try:
            reader = pq.ParquetFile(path)
            batches = list(reader.iter_batches(batch_size=batch_rows))
        except (OSError, pa.ArrowException) as error:
            raise StoreError(f"{path}: unreadable vector shard ({error})") from None
        for batch in batches:
            if not batch.num_rows:
                continue
            embedders = set(batch.column("embedder_id").to_pylist())
            if embedder_id is not None and embedders != {embedder_id}:
                raise ModelMismatchError(f"{path}: shard vectors are from embedder "
                                         f"{', '.join(sorted(embedders))}, not {embedder_id}")
            column = batch.column("vector")
            width = column.type.list_size
            if dim is not None and width != dim:
                raise ModelMismatchError(f"{path}: shard holds {width}-d vectors, not {dim}-d")
            vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            yield ShardRows(batch.column("id").to_pylist(), batch.column("key").to_pylist(),
                            vectors.reshape(batch.num_rows, width))


def import_shards(cache: Any, folder: str | Path) -> int:
    """Put the shard rows the embedding ``cache`` lacks into it (by content hash, checked
    against the cache's embedder and dimension); the number of rows put."""
    put = 0
    fresh: dict[str, np.ndarray] = {}  # rows to put, a cache chunk of about READ_BATCH at a time
    for rows in read_shards(folder, cache.embedder_id, cache.dim):
        _, found = cache.lookup(rows.keys)
        fresh.update((key, vector) for key, vector, hit in zip(rows.keys, rows.vectors, found)
                     if not hit)
        if len(fresh) >= READ_BATCH:
            cache.put(list(fresh), np.stack(list(fresh.values())))
            put, fresh = put + len(fresh), {}
    if fresh:
        cache.put(list(fresh), np.stack(list(fresh.values())))
        put += len(fresh)
    return put


def add_shards(index: Any, folder: str | Path,
               attributes: Callable[[list[str]], Sequence[Mapping[str, Any]]] | None = None,
               current: Mapping[str, str] | None = None, batch_rows: int = READ_BATCH) -> int:
    """Upsert the shard rows into ``index`` (a :class:`~lookalike.index.base.VectorIndex`, e.g.
    ``create_index("milvus", dim, embedder_id, uri=...)``), a batch at a time. ``attributes``
    maps a batch's ids to their filter attributes (category, price, title, ...); without it the
    rows have none. ``current`` (id -> content hash, e.g. the catalogue's) keeps only rows of
    those ids with that hash: an item whose image changed has a row per image in the shards.
    The shards must be from the index's embedder. Returns the rows added."""
    added = 0
    for rows in read_shards(folder, getattr(index, "embedder_id", None),
                            getattr(index, "dim", None), batch_rows):
        if current is not None:
            keep = [n for n, (i, k) in enumerate(zip(rows.ids, rows.keys)) if current.get(i) == k]
            rows = ShardRows([rows.ids[n] for n in keep], [rows.keys[n] for n in keep],
                             rows.vectors[keep])
            if not rows.ids:
                continue
        found = list(attributes(rows.ids)) if attributes is not None else [{}] * len(rows.ids)
        index.add(rows.ids, rows.vectors, found)
        added += len(rows.ids)
    return added
