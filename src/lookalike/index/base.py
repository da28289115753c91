"""The index interface every vector-search backend honours.

Ids are strings, vectors are L2-normalised float32 rows, attributes are plain dicts and filters are
:class:`Filters` — no backend type (FAISS, Milvus, ...) appears here, so a backend can be swapped
without touching callers. Scores are cosine similarities: higher is more similar.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, UnknownNameError
from lookalike.registry import Registry

#: Attribute columns every catalogue may have and filters know by name.
STANDARD_FILTER_COLUMNS = ("category", "gender", "colour", "price")


@dataclass(frozen=True)
class Filters:
    """Which items a search may return: equality sets and inclusive numeric ranges.

    ``Filters(equals={"category": ("Shoes", "Sandals")}, ranges={"price": (None, 50.0)})`` keeps
    items whose category is Shoes *or* Sandals *and* whose price is at most 50. A missing
    attribute never matches a filter on it. Empty filters match everything.
    """

    equals: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @classmethod
    def of(cls, *, category: str | Sequence[str] | None = None,
           gender: str | Sequence[str] | None = None, colour: str | Sequence[str] | None = None,
           price_min: float | None = None, price_max: float | None = None,
           **equals: str | Sequence[str] | None) -> "Filters":
        """Build filters from keyword arguments, dropping the ones that are None."""
        eq: dict[str, tuple[str, ...]] = {}
        for column, value in {"category": category, "gender": gender, "colour": colour,
                              **equals}.items():
            if value is None:
                continue
            values = (value,) if isinstance(value, str) else tuple(value)
            eq[column] = tuple(str(v) for v in values)
        ranges: dict[str, tuple[float | None, float | None]] = {}
        if price_min is not None or price_max is not None:
            if price_min is not None and price_max is not None and price_min > price_max:
                raise LookalikeError(f"price range is empty: min {price_min} > max {price_max}")
            ranges["price"] = (price_min, price_max)
        return cls(equals=eq, ranges=ranges)

    def is_empty(self) -> bool:
        return not self.equals and not self.ranges

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        """Whether one item's attributes pass (the reference semantics every backend follows)."""
        for column, allowed in self.equals.items():
            value = attributes.get(column)
            if value is None or str(value) not in allowed:
                return False
        for column, (low, high) in self.ranges.items():
            value = attributes.get(column)
            try:
                number = float(value)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return False
            if np.isnan(number) or (low is not None and number < low) or (
                    high is not None and number > high):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {"equals": {k: list(v) for k, v in self.equals.items()},
                "ranges": {k: list(v) for k, v in self.ranges.items()}}


@dataclass
class Hits:
    """The results of one query, best first."""

    ids: list[str]
    scores: list[float]

    def __len__(self) -> int:
        return len(self.ids)

    def without(self, excluded: set[str], k: int) -> "Hits":
        """The first ``k`` hits whose ids are not in ``excluded``, in order."""
        keep = [n for n, i in enumerate(self.ids) if i not in excluded][:k]
        return Hits([self.ids[n] for n in keep], [self.scores[n] for n in keep])


class VectorIndex(ABC):
    """Add, remove and search vectors by string id, with attribute filters.

    Implementations must: keep ``add`` an upsert (an id added again replaces its vector and
    attributes), apply filters *inside* the search so a filtered query returns ``k`` hits whenever
    ``k`` items pass, never return removed ids, and save atomically.
    """

    kind: ClassVar[str] = ""
    #: True for an index whose writes live in a server every process shares (Milvus): the
    #: project's journal entries are already in it, so replaying them only updates the readers'
    #: id -> hash map and never writes again (a late replay could undo a newer delete).
    holds_writes: ClassVar[bool] = False

    def __init__(self, dim: int, embedder_id: str = "", **params: Any) -> None:
        self.dim = int(dim)
        self.embedder_id = embedder_id
        self.params = params

    @abstractmethod
    def add(self, ids: Sequence[str], vectors: np.ndarray,
            attributes: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Insert or replace items."""

    @abstractmethod
    def remove(self, ids: Iterable[str]) -> int:
        """Delete items; returns how many were present. Unknown ids are ignored."""

    @abstractmethod
    def search(self, vectors: np.ndarray, k: int = 10, filters: Filters | None = None,
               exclude: Sequence[Iterable[str]] | None = None) -> list[Hits]:
        """The ``k`` nearest items to each query row, best first.

        ``exclude[i]`` lists ids query ``i`` must not return (the item itself, seen items).
        """

    @abstractmethod
    def ids(self) -> list[str]:
        """Every id currently in the index."""

    @abstractmethod
    def __len__(self) -> int: ...

    def __contains__(self, item_id: object) -> bool:
        return item_id in set(self.ids())

    @abstractmethod
    def save(self, folder: str | Path) -> Path:
        """Write the index into ``folder`` atomically (see :mod:`lookalike.storage`)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: str | Path) -> "VectorIndex":
        """Read an index written by ``save``."""

    @classmethod
    def rebuild_params(cls, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters a rebuild of the saved index (its ``index.json``) keeps unless the caller
        gives others: none for an in-process index (its defaults fit the new data); a
        server-backed kind keeps its server and collection."""
        return {}

    def memory_bytes(self) -> int:
        """Approximate resident bytes of the searchable structure (for reports)."""
        return 0

    def unit_rows(self, vectors: np.ndarray, where: str) -> np.ndarray:
        """Checked ``[n, dim]`` rows scaled to unit length; NaN, infinity or an all-zero row is a
        one-line error naming ``where``."""
        array = self.check_vectors(vectors, f"{self.kind} index {where}")
        if not np.isfinite(array).all():
            raise LookalikeError(f"{self.kind} index {where}: vectors contain NaN or infinity")
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        if (norms == 0).any():
            raise LookalikeError(f"{self.kind} index {where}: a vector is all zeros (no direction)")
        return np.ascontiguousarray(array / norms, dtype=np.float32)

    def checked_add(self, ids: Sequence[str], vectors: np.ndarray,
                    attributes: Sequence[Mapping[str, Any]] | None) -> tuple[list[str], np.ndarray]:
        """``add``'s arguments checked: as many ids as vectors (and attribute rows, if given),
        vectors as unit rows."""
        ids = list(ids)
        vectors = self.unit_rows(vectors, "add")
        if len(ids) != len(vectors):
            raise LookalikeError(f"add: {len(ids)} ids but {len(vectors)} vectors")
        if attributes is not None and len(attributes) != len(ids):
            raise LookalikeError(f"add: {len(ids)} ids but {len(attributes)} attribute rows")
        return ids, vectors

    def checked_search(self, vectors: np.ndarray, k: int,
                       exclude: Sequence[Iterable[str]] | None) -> np.ndarray:
        """``search``'s arguments checked: ``k >= 0`` and one exclude list per query; returns
        the queries as unit rows."""
        queries = self.unit_rows(vectors, "search")
        if k < 0:
            raise LookalikeError(f"search: k must be >= 0, got {k}")
        if exclude is not None and len(exclude) != len(queries):
            raise LookalikeError(f"search: {len(queries)} queries but {len(exclude)} exclude lists")
        return queries

    def check_vectors(self, vectors: np.ndarray, where: str = "") -> np.ndarray:
        """Validate a ``[n, dim]`` array and return it as contiguous float32."""
        array = np.ascontiguousarray(vectors, dtype=np.float32)
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ModelMismatchError(
                f"{where or self.kind}: vectors of dimension {array.shape[-1]} given to an index of "
                f"dimension {self.dim} (built with embedder {self.embedder_id or 'unknown'})")
        return array


# ---- registry and loading -------------------------------------------------------------------
INDEX_MANIFEST = "index.json"

_BUILTIN: dict[str, str] = {
    "exact": "lookalike.index.faiss_exact:ExactIndex",
    "hnsw": "lookalike.index.faiss_hnsw:HNSWIndex",
    "ivf": "lookalike.index.faiss_ivf:IVFIndex",
    "binary": "lookalike.index.binary_backend:BinaryIndex",
    "milvus": "lookalike.index.milvus_backend:MilvusIndex",
    "milvus-binary": "lookalike.index.milvus_binary:MilvusBinaryIndex",
}
#: The plugin registry of index kinds (built-ins load lazily; plugins use :func:`register`).
_REGISTRY: Registry[type[VectorIndex]] = Registry("index type", _BUILTIN)


def register(kind: str):  # noqa: ANN201 - decorator
    """Class decorator: make an index backend available by name."""
    return _REGISTRY.register(kind)


def available() -> list[str]:
    return _REGISTRY.available()


def index_class(kind: str) -> type[VectorIndex]:
    return _REGISTRY.get(kind)


def create_index(kind: str, dim: int, embedder_id: str = "", **params: Any) -> VectorIndex:
    """Build an empty index of a registered kind."""
    return index_class(kind)(dim=dim, embedder_id=embedder_id, **params)


def load_index(folder: str | Path, expected_embedder_id: str | None = None,
               expected_dim: int | None = None, **options: Any) -> VectorIndex:
    """Load any saved index, checking it was built for the embedder the caller will query with.

    ``options`` go to the backend's ``load`` (the FAISS backends take ``mmap=True``).
    """
    folder = Path(folder)
    manifest_path = folder / INDEX_MANIFEST
    if not manifest_path.is_file():
        raise UnknownNameError(f"{folder}: no {INDEX_MANIFEST}; not a saved lookalike index")
    manifest = json.loads(manifest_path.read_text())
    if expected_embedder_id and manifest.get("embedder_id") != expected_embedder_id:
        raise ModelMismatchError(
            f"{folder}: index was built with embedder {manifest.get('embedder_id')!r}, "
            f"not {expected_embedder_id!r}; re-run `lookalike index` with that embedder")
    if expected_dim is not None and manifest.get("dim") != expected_dim:
        raise ModelMismatchError(
            f"{folder}: index has dimension {manifest.get('dim')}, the embedder gives {expected_dim}")
    return index_class(manifest["kind"]).load(folder, **options)
