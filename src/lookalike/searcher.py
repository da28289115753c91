"""The searcher: one saved index version, loaded with the embedder that built it and the cache
of its vectors, and the catalogue view its results are read through.

:meth:`lookalike.project.Project.searcher` hands out (and keeps) one per index name; every
feature that queries an index (personal picks, shop the look, clusters, duplicates, words,
category-first) goes through it instead of reaching into the project. Imports nothing of the
layers above it (``project.py``, ``recommend/``, the CLI or the service).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import ModelMismatchError, StoreError, UnknownItemError
from lookalike.index import journal
from lookalike.index.base import Filters, Hits, VectorIndex, load_index
from lookalike.layout import INDEX_EMBEDDER_DIR, INDEX_HASHES_FILE, ProjectLayout
from lookalike.recommend.results import Recommendation

#: Extra hits fetched per query so that items deleted from the catalogue between the index
#: search and the detail lookup (a concurrent writer) do not leave a result list short.
SPARE = 4


@dataclass
class Searcher:
    """An index version with the embedder that built it and the cache of its vectors."""

    name: str
    folder: Path
    index: VectorIndex
    embedder: Any
    hashes: dict[str, str]
    cache: Any
    journal_seen: int = 0  # journal entries of ``folder`` already applied to ``index``

    @classmethod
    def open(cls, name: str, folder: Path, project_path: Path,
             embedder: Any = None) -> "Searcher":
        """Load an index version; ``embedder`` (the one already loaded) is reused when the new
        version was built by the same model, which spares reloading weights on every update."""
        from lookalike.models import base as models
        from lookalike.models.cache import EmbeddingCache

        saved = json.loads((folder / INDEX_EMBEDDER_DIR / models.CONFIG_FILE).read_text())
        if embedder is None or embedder.embedder_id != saved.get("embedder_id"):
            embedder = models.load(folder / INDEX_EMBEDDER_DIR)
        index = load_index(folder / "index", expected_dim=embedder.dim)
        if index.embedder_id and index.embedder_id != embedder.embedder_id:
            was = saved.get("config", {}).get("precision")
            if was and was != embedder.config().get("precision"):
                raise ModelMismatchError(
                    f"index {name!r} holds {was} vectors, but {was} drifts from fp32 on this CPU "
                    f"(int8 self-check); rebuild it here with `lookalike index --precision "
                    f"{embedder.config().get('precision')} --name {name}`")
            raise ModelMismatchError(f"{folder}: index built with {index.embedder_id}, "
                                     f"model is {embedder.embedder_id}")
        hashes = json.loads((folder / INDEX_HASHES_FILE).read_text())
        entries = journal.read(folder)
        journal.replay(entries, index, hashes)
        cache = EmbeddingCache(ProjectLayout(project_path).embeddings(embedder.embedder_id),
                               embedder.embedder_id, embedder.dim)
        return cls(name, folder, index, embedder, hashes, cache, len(entries))

    def catch_up(self) -> int:
        """Apply journal entries another process appended since; returns how many."""
        entries = journal.read(self.folder, start=self.journal_seen)
        journal.replay(entries, self.index, self.hashes)
        self.journal_seen += len(entries)
        return len(entries)

    def vectors_of(self, ids: Sequence[str], store) -> np.ndarray:
        """The cached vectors of indexed items (``UnknownItemError`` for one not indexed)."""
        keys = []
        for item_id in ids:
            if item_id not in self.hashes:
                if item_id in store:
                    raise UnknownItemError(f"item {item_id!r} is not indexed yet; run "
                                           "`lookalike index` to add it")
                raise UnknownItemError(f"unknown item {item_id!r}")
            keys.append(self.hashes[item_id])
        vectors, found = self.cache.lookup(keys)
        if not found.all():
            missing = [ids[n] for n in np.flatnonzero(~found)[:3]]
            raise StoreError(f"embeddings missing from the cache for {missing}; re-run "
                             "`lookalike index`")
        return vectors

    def vector_of(self, item_id: str, store) -> np.ndarray:
        return self.vectors_of([item_id], store)[0]

    def search_vector(self, vector: np.ndarray, k: int, filters: Filters | None = None,
                      exclude: Sequence[str] = ()) -> Hits:
        """The ``k`` (+ :data:`SPARE`) nearest items of one query vector."""
        return self.index.search(vector[None, :], k=k + SPARE, filters=filters,
                                 exclude=[list(exclude)])[0]


def recommendations(store, ids: Sequence[str], scores: Sequence[float]) -> list[Recommendation]:
    """Hits as :class:`Recommendation` rows with their catalogue details, in order; ids deleted
    from the catalogue since the index was saved are left out."""
    items = store.find(list(ids))
    out = []
    for item_id, score in zip(ids, scores):
        item = items.get(item_id)
        if item is None:  # removed from the catalogue after the index was saved
            continue
        details = item.to_json()
        out.append(Recommendation(id=item_id, score=float(score), title=item.title,
                                  category=item.category, image=details.get("image"),
                                  attributes=item.filter_attributes()))
    return out


__all__ = ["Searcher", "recommendations", "SPARE"]
