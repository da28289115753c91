"""The ``milvus`` index: vectors and filter attributes in a Milvus collection, searched over gRPC.

``create_index("milvus", dim, embedder_id, uri=..., collection=...)`` creates (or takes over) one
collection (schema in :mod:`lookalike.index.milvus_schema`): HNSW over COSINE on unit vectors,
the standard filter columns as typed fields and every attribute in a JSON field, so filters run
inside Milvus' search (:mod:`lookalike.index.milvus_filters`). The URI defaults to the
``LOOKALIKE_MILVUS_URI`` environment variable. A collection that exists already is dropped first
only if lookalike made it (its description says so); otherwise creating fails.

**Writes and consistency.** ``add`` is an upsert and ``remove`` a delete, applied to the server
at once. Reads use ``consistency="Session"`` by default: a handle reads its own upserts at once
(tested) and a process that has not written never waits; the first read after this handle's
``remove`` is Strong (Milvus 2.3 returns no timestamp for a delete). Other processes' writes show
within the server's time tick (200 ms by default). ``Strong`` (~200 ms per search, measured in
benchmarks/results/milvus_bench.json) is used where correctness needs it: the delete's presence
check, the item count and ``load``'s live checks; ``Bounded`` may miss a fresh row for seconds.

**Excludes** up to ``_EXCLUDE_INLINE`` ids are over-fetched and dropped; longer lists get their
own search with ``id not in [...]`` added to the expression.

**Saving** writes only ``index.json`` (URI, collection, embedder id, dimension, count, the
collection's creation token), never the vectors; ``load`` checks each against the live collection
(one-line :class:`~lookalike.errors.ModelMismatchError`s). The count moves with the project's
journal of small updates, so each write updates it in that ``index.json`` (through a handle that
follows the folder's rename). Journal replays never write here (``holds_writes``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, UnknownItemError
from lookalike.index.attribute_columns import normalised_row, unique_last
from lookalike.index.base import INDEX_MANIFEST, Filters, Hits, VectorIndex, register
from lookalike.index.manifest_handle import ManifestHandle
from lookalike.index.milvus_filters import ID_FIELD, both, expression, ids_in
from lookalike.index.milvus_schema import (META_PROPERTY, VECTOR_FIELD, attributes_of,
                                           check_collection_name, describe, make_rows,
                                           make_schema, read_meta)
from lookalike.storage import atomic_write_text

URI_ENV = "LOOKALIKE_MILVUS_URI"
DEFAULT_COLLECTION = "lookalike"
FORMAT_VERSION = 1
_EXCLUDE_INLINE = 64
MAX_LIMIT = 16_384  # Milvus' largest top-k
_ID_CHUNK = 1_000  # ids per `id in [...]` expression
STRONG = "Strong"
SESSION = "Session"
_LOAD_WAIT = 120.0  # seconds load() waits for a collection to be loaded and caught up
_COUNT_TRIES = 4  # load() reads the live and saved counts this many times before they must agree


@register("milvus")
class MilvusIndex(VectorIndex):
    """Vectors in a Milvus collection (see the module docstring).

    Parameters: ``uri`` (default ``$LOOKALIKE_MILVUS_URI``), ``collection`` (default
    ``lookalike``), ``M`` and ``ef_construction`` (HNSW graph), ``ef_search`` (beam width, raised
    to ``k`` when smaller), ``timeout`` (seconds per call, also the connect timeout) and
    ``batch_size`` (rows per upsert) and ``consistency`` of reads (``Session``; see the module
    docstring before choosing ``Strong`` or ``Bounded``).
    """

    DEFAULTS: dict[str, Any] = {"M": 16, "ef_construction": 200, "ef_search": 64,
                                "timeout": 10.0, "batch_size": 1000, "consistency": SESSION}
    LEVELS = ("Strong", "Session", "Bounded", "Eventually")
    holds_writes = True  # the collection is the truth every process shares

    def __init__(self, dim: int, embedder_id: str = "", *, uri: str | None = None,
                 collection: str | None = None, token: str | None = None, create: bool = True,
                 **params: Any) -> None:
        unknown = set(params) - set(self.DEFAULTS)
        if unknown:
            raise LookalikeError(f"milvus index: unknown parameter(s) {', '.join(sorted(unknown))}"
                                 f"; known: uri, collection, {', '.join(self.DEFAULTS)}")
        if int(dim) <= 0:
            raise LookalikeError(f"index dimension must be positive, got {dim}")
        super().__init__(dim, embedder_id, **{**self.DEFAULTS, **params})
        if self.params["consistency"] not in self.LEVELS:
            raise LookalikeError(f"milvus index: consistency must be one of {', '.join(self.LEVELS)}"
                                 f", got {self.params['consistency']!r}")
        self.uri = uri or os.environ.get(URI_ENV) or ""
        if not self.uri:
            raise LookalikeError(f"milvus index: no server URI; pass --uri (uri=...) or set {URI_ENV}")
        self.collection = check_collection_name(collection or DEFAULT_COLLECTION)
        self.token = token or uuid.uuid4().hex
        self._manifest: ManifestHandle | None = None
        self._strong_next = False  # the next read waits for everything (set by remove)
        self._client = self._connect()
        if create:
            self._create_collection()

    # ---- connection ----------------------------------------------------------------------
    def _connect(self) -> Any:
        from pymilvus import MilvusClient

        try:
            return MilvusClient(uri=self.uri, timeout=float(self.params["timeout"]))
        except Exception as error:  # pymilvus raises MilvusException and plain gRPC errors
            raise LookalikeError(f"milvus server at {self.uri} is unreachable: "
                                 f"{_one_line(error)}") from None

    def _call(self, what: str, method: str, *args: Any, wait: float | None = None,
              **kwargs: Any) -> Any:
        """Call a client method, turning server errors into one-line LookalikeErrors; ``wait``
        overrides the timeout (a collection just reloaded after a restart answers its first
        Strong read only once it has caught up, measured ~20 s)."""
        try:
            return getattr(self._client, method)(
                *args, timeout=float(wait or self.params["timeout"]), **kwargs)
        except LookalikeError:
            raise
        except Exception as error:
            raise LookalikeError(f"milvus {self.uri} collection {self.collection!r}: {what} "
                                 f"failed: {_one_line(error)}") from None

    def _create_collection(self) -> None:
        if self._call("check", "has_collection", self.collection):
            info = self._call("describe", "describe_collection", self.collection)
            if read_meta(info) is None:
                raise LookalikeError(
                    f"milvus collection {self.collection!r} on {self.uri} exists and was not made "
                    "by lookalike; choose another --collection")
            self._call("drop", "drop_collection", self.collection)
        index_params = self._client.prepare_index_params()
        self._add_vector_index(index_params)
        meta = describe(self.embedder_id, self.dim, self.token)
        self._call("create", "create_collection", self.collection, schema=self._schema(meta),
                   index_params=index_params, consistency_level=STRONG)
        self._call("describe", "alter_collection_properties", self.collection,
                   properties={META_PROPERTY: meta})

    _FLOATS_FIELD = VECTOR_FIELD  # the float vectors' field (milvus_binary overrides it + hooks)

    def _schema(self, meta: str) -> Any:
        return make_schema(self.dim, meta)

    def _add_vector_index(self, index_params: Any) -> None:
        index_params.add_index(field_name=VECTOR_FIELD, index_type="HNSW", metric_type="COSINE",
                               params={"M": int(self.params["M"]),
                                       "efConstruction": int(self.params["ef_construction"])})

    def _make_rows(self, ids: Sequence[str], vectors: np.ndarray,
                   attributes: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
        return make_rows(ids, vectors, attributes)

    def _vector_dim(self) -> int:
        """The ``dim`` of the collection's vector field."""
        return self.dim

    @classmethod
    def _load_extras(cls, folder: Path) -> dict[str, Any]:
        """Constructor arguments a variant saves beside ``index.json``."""
        return {}

    def close(self) -> None:
        """Close the connection (the collection stays on the server)."""
        if self._manifest is not None:
            self._manifest.close()
            self._manifest = None
        with contextlib.suppress(Exception):
            self._client.close()

    # ---- writing -------------------------------------------------------------------------
    def add(self, ids: Sequence[str], vectors: np.ndarray,
            attributes: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Insert or replace items (an upsert on the primary key)."""
        ids, vectors = self.checked_add(ids, vectors, attributes)
        if not ids:
            return
        unique_ids, rows = unique_last(ids)  # a repeated id: its last row wins
        chosen = None if attributes is None else [
            normalised_row(attributes[r], unique_ids[n]) for n, r in enumerate(rows.tolist())]
        data = self._make_rows(unique_ids, vectors[rows], chosen)  # validates everything first
        step = int(self.params["batch_size"])
        for start in range(0, len(data), step):
            self._call("upsert", "upsert", self.collection, data[start:start + step])
        self._after_write()

    def remove(self, ids: Iterable[str]) -> int:
        """Delete items; returns how many were present. Unknown ids are ignored."""
        wanted = sorted({i for i in ids if isinstance(i, str) and i})
        removed = 0
        for start in range(0, len(wanted), _ID_CHUNK):
            present = self._present(wanted[start:start + _ID_CHUNK])
            if present:
                self._call("delete", "delete", self.collection, ids=present)
                removed += len(present)
        if removed:
            self._strong_next = True
            self._after_write()
        return removed

    def _present(self, ids: Sequence[str], level: str = STRONG) -> list[str]:
        rows = self._call("query", "query", self.collection, filter=ids_in(ids),
                          output_fields=[ID_FIELD], limit=len(ids), consistency_level=level)
        return [row[ID_FIELD] for row in rows]

    def _after_write(self) -> None:
        if self._manifest is not None:
            self._manifest.update_count(len(self))

    def _read_level(self) -> str:
        """The consistency of the next read: Strong once after a remove, else the parameter."""
        if self._strong_next:
            self._strong_next = False
            return STRONG
        return str(self.params["consistency"])

    # ---- reading -------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int = 10, filters: Filters | None = None,
               exclude: Sequence[Iterable[str]] | None = None) -> list[Hits]:
        """The ``k`` nearest items to each query row, best first, among those passing
        ``filters``; ``exclude[i]`` lists ids query ``i`` must not return."""
        queries = self.checked_search(vectors, k, exclude)
        results = [Hits([], []) for _ in range(len(queries))]
        where = expression(filters)
        if k == 0 or not len(queries) or where is None:
            return results
        excluded = [set() if exclude is None else {i for i in exclude[q] if isinstance(i, str)}
                    for q in range(len(queries))]
        inline = [q for q in range(len(queries)) if len(excluded[q]) <= _EXCLUDE_INLINE]
        if inline:
            extra = max(len(excluded[q]) for q in inline)
            found = self._search(queries[inline], k + extra, where)
            for q, hits in zip(inline, found):
                results[q] = hits.without(excluded[q], k)
        for q in set(range(len(queries))) - set(inline):
            own = both(where, ids_in(sorted(excluded[q]), negate=True))
            results[q] = self._search(queries[q:q + 1], k, own)[0]
        return results

    def _search(self, queries: np.ndarray, limit: int, where: str) -> list[Hits]:
        if limit > MAX_LIMIT:
            raise LookalikeError(f"milvus index: at most {MAX_LIMIT} results per query "
                                 f"(k plus excluded ids), asked for {limit}")
        ef = max(int(self.params["ef_search"]), limit)
        found = self._call("search", "search", self.collection, data=list(queries), limit=limit,
                           filter=where, anns_field=VECTOR_FIELD, output_fields=[],
                           search_params={"metric_type": "COSINE", "params": {"ef": ef}},
                           consistency_level=self._read_level())
        return [Hits([str(hit["id"]) for hit in hits], [float(hit["distance"]) for hit in hits])
                for hits in found]

    def ids(self) -> list[str]:
        """Every id in the collection (read in batches)."""
        try:
            iterator = self._client.query_iterator(self.collection, batch_size=5000, filter="",
                                                   output_fields=[ID_FIELD],
                                                   consistency_level=STRONG)
        except Exception as error:
            raise LookalikeError(f"milvus {self.uri} collection {self.collection!r}: listing ids "
                                 f"failed: {_one_line(error)}") from None
        out: list[str] = []
        try:
            while batch := iterator.next():
                out += [row[ID_FIELD] for row in batch]
        finally:
            iterator.close()
        return out

    def __len__(self) -> int:
        return self._count()

    def _count(self, wait: float | None = None) -> int:
        rows = self._call("count", "query", self.collection, filter="", wait=wait,
                          output_fields=["count(*)"], consistency_level=STRONG)
        return int(rows[0]["count(*)"])

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and bool(item_id) and bool(
            self._present([item_id], self._read_level()))

    def attributes(self, item_id: str) -> dict[str, Any]:
        """The attributes an item was added with (missing ones left out)."""
        rows = self._rows([item_id], ["attrs"])
        return attributes_of(rows[item_id])

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """The stored unit vectors of ``ids``, one row each."""
        rows = self._rows(list(ids), [self._FLOATS_FIELD])
        if not ids:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray([rows[i][self._FLOATS_FIELD] for i in ids], dtype=np.float32)

    def _rows(self, ids: Sequence[str], fields: list[str]) -> dict[str, Mapping[str, Any]]:
        rows: dict[str, Mapping[str, Any]] = {}
        unique = sorted(set(ids))
        for start in range(0, len(unique), _ID_CHUNK):
            chunk = unique[start:start + _ID_CHUNK]
            for row in self._call("get", "query", self.collection, filter=ids_in(chunk),
                                  output_fields=[ID_FIELD, *fields], limit=len(chunk),
                                  consistency_level=self._read_level()):
                rows[row[ID_FIELD]] = row
        missing = [i for i in ids if i not in rows]
        if missing:
            raise UnknownItemError(f"{missing[0]!r} is not in the index"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return rows

    # ---- saving --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``index.json`` naming the collection (never the vectors).

        No flush: every acknowledged write is already durable in the server's log (a restart
        finds it, tested), and Milvus seals and indexes segments on its own schedule.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"kind": self.kind, "format_version": FORMAT_VERSION, "uri": self.uri,
                    "collection": self.collection, "embedder_id": self.embedder_id,
                    "dim": self.dim, "count": len(self), "token": self.token,
                    "params": {k: v for k, v in self.params.items()}}
        atomic_write_text(folder / INDEX_MANIFEST, json.dumps(manifest, indent=2))
        self._follow(folder)
        return folder

    def _follow(self, folder: Path) -> None:
        if self._manifest is not None:
            self._manifest.close()
        self._manifest = ManifestHandle(folder)

    @classmethod
    def load(cls, folder: str | Path, uri: str | None = None) -> "MilvusIndex":
        """Reconnect to the collection ``folder/index.json`` names and check it still matches.

        The URI is ``uri`` if given, else ``$LOOKALIKE_MILVUS_URI`` if set (a worker on another
        machine reaches the same server under another name), else the saved one.
        """
        folder = Path(folder)
        manifest = json.loads((folder / INDEX_MANIFEST).read_text())
        if manifest.get("kind") != cls.kind or manifest.get("format_version") != FORMAT_VERSION:
            raise LookalikeError(f"{folder}: not a milvus index of format {FORMAT_VERSION}")
        index = cls(manifest["dim"], manifest.get("embedder_id", ""),
                    uri=uri or os.environ.get(URI_ENV) or manifest["uri"],
                    collection=manifest["collection"], token=manifest["token"], create=False,
                    **cls._load_extras(folder), **manifest.get("params", {}))
        index._check_live(folder)
        index._follow(folder)
        return index

    @classmethod
    def rebuild_params(cls, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Saved parameters, collection and server (``$LOOKALIKE_MILVUS_URI`` first, as load)."""
        uri = os.environ.get(URI_ENV) or manifest["uri"]
        return {**manifest.get("params", {}), "collection": manifest["collection"], "uri": uri}

    def _check_live(self, folder: Path) -> None:
        """Fail with one line naming the first thing the live collection disagrees on."""
        where = f"{folder}: milvus collection {self.collection!r} on {self.uri}"
        rebuild = "; rebuild it with `lookalike index --kind milvus`"
        if not self._call("check", "has_collection", self.collection):
            raise ModelMismatchError(f"{where} does not exist (dropped?){rebuild}")
        info = self._call("describe", "describe_collection", self.collection)
        described = read_meta(info) or {}
        if described.get("embedder_id") != self.embedder_id:
            raise ModelMismatchError(f"{where} holds vectors of embedder "
                                     f"{described.get('embedder_id')!r}, not {self.embedder_id!r}")
        live_dim = next((int(f["params"]["dim"]) for f in info.get("fields", [])
                         if f.get("name") == VECTOR_FIELD), None)
        if live_dim != self._vector_dim():
            raise ModelMismatchError(f"{where} has dimension {live_dim}, the index "
                                     f"{self._vector_dim()}")
        if described.get("token") != self.token:
            raise ModelMismatchError(f"{where} is not the one this index was saved with (it was "
                                     f"dropped and created again){rebuild}")
        # After a server restart the collection loads again and catches up first: wait for it.
        self._call("load", "load_collection", self.collection, wait=_LOAD_WAIT)
        for attempt in range(_COUNT_TRIES):  # a writer elsewhere updates index.json just after
            if attempt:
                time.sleep(0.25)
            live, count = self._count(wait=_LOAD_WAIT), _saved_count(folder)
            if live == count:
                return
        raise ModelMismatchError(f"{where} holds {live} items, the saved index {count}; it was "
                                 f"changed outside this index{rebuild}")


def _saved_count(folder: Path) -> int:
    return int(json.loads((folder / INDEX_MANIFEST).read_text())["count"])


def _one_line(error: BaseException) -> str:
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    return " ".join(str(message).split())[:300]
