"""The fused words+photo index behind :mod:`lookalike.recommend.text_search`: item texts, their
cached MiniLM vectors and the index of fused item rows (see that module for the scoring).

Every item's text (its title by default) is embedded with the all-MiniLM-L6-v2 text model and
kept beside its image embedding in one *fused* index::

    item vector  = [ sqrt(1 - s) * image_vector ,  sqrt(s) * text_vector ]      (s = 0.5)

Storage::

    <project>/embeddings/<text_embedder_id>/   text vectors, keyed by sha256 of the text
    <project>/text/<image index>/CURRENT -> v000001/
        index/        the fused VectorIndex (same item attributes, so filters work)
        text_model/   the text embedder's config.json
        text.json     columns, item share, image index version and embedder ids
        items.json    id -> [image content hash, text hash] (for incremental updates)

The fused index is rebuilt incrementally (only items whose image or text changed) by
:func:`build_text_index`; :func:`load_text_index` on a writable project refreshes it first when
the image index has changed since. Only the project's public API is used.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, StoreError, UnknownNameError
from lookalike.index.base import VectorIndex, create_index, load_index
from lookalike.storage import atomic_write_text, current_version, versioned_folder

TEXT_DIR = "text"
TEXT_META = "text.json"
TEXT_ITEMS = "items.json"  # id -> [image content hash, text hash]; read only when needed
DEFAULT_COLUMNS = ("title",)
#: The text's share ``s`` of every fused item row (see the module docstring).
ITEM_TEXT_SHARE = 0.5


# ---- item texts and their vectors ------------------------------------------------------------
def item_text(item: Any, columns: Sequence[str] = DEFAULT_COLUMNS) -> str:
    """An item's text: the values of ``columns`` (item fields or attributes) joined by spaces."""
    parts = []
    for column in columns:
        value = getattr(item, column, None) if column in _ITEM_FIELDS else None
        if value is None:
            value = item.attributes.get(column)
        if value is not None and str(value).strip() and str(value) != "nan":
            parts.append(" ".join(str(value).split()))
    return " ".join(parts)


_ITEM_FIELDS = ("title", "category", "gender", "colour", "split")


def text_key(text: str) -> str:
    """Cache key of a text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embed_texts_cached(project, embedder, texts: Sequence[str], *,
                       progress: bool = False) -> np.ndarray:
    """Vectors of ``texts``, embedding only texts not in the project's text cache."""
    from lookalike.models.cache import EmbeddingCache, save_model_once

    cache_dir = project.path / "embeddings" / embedder.embedder_id
    cache = EmbeddingCache(cache_dir, embedder.embedder_id, embedder.dim)
    if not project.read_only:
        save_model_once(embedder, cache_dir / "model")
    keys = [text_key(t) for t in texts]
    unique = list(dict.fromkeys(keys))
    vectors, found = cache.lookup(unique)
    missing = [n for n in np.flatnonzero(~found)]
    if missing:
        by_key = dict(zip(keys, texts))
        new_texts = [by_key[unique[n]] for n in missing]
        new = embedder.embed_texts(new_texts, progress=_bar(progress, len(new_texts)))
        vectors[missing] = new
        if not project.read_only:
            cache.put([unique[n] for n in missing], new)
    row = {key: n for n, key in enumerate(unique)}
    return vectors[[row[k] for k in keys]]


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import Progress

    progress = Progress(transient=True)
    task = progress.add_task("embed titles", total=total)
    progress.start()

    def advance(n: int) -> None:
        progress.advance(task, n)
        if progress.finished:
            progress.stop()

    return advance


# ---- the fused index --------------------------------------------------------------------------
@dataclass
class TextIndexSummary:
    """What :func:`build_text_index` did."""

    image_index: str
    text_embedder_id: str
    columns: list[str]
    size: int
    added: int
    removed: int
    unchanged: int
    texts_embedded: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _text_root(project, image_index: str) -> Path:
    return project.path / TEXT_DIR / image_index


def build_text_index(project, *, index: str | None = None,
                     columns: Sequence[str] = DEFAULT_COLUMNS, progress: bool = False,
                     kind: str = "exact") -> TextIndexSummary:
    """Embed the items' texts and build (or update) the fused index of image index ``index``."""
    from lookalike.models.text import MiniLMTextEmbedder

    if project.read_only:
        raise StoreError(f"{project.path}: opened read-only; cannot build the text index")
    loaded = project.searcher(index)
    columns = list(columns)
    if not columns:
        raise LookalikeError("give at least one text column, e.g. title")
    text_model = MiniLMTextEmbedder()
    ids = [i for i in project.store.ids() if i in loaded.hashes]
    items = {item.id: item for item in project.store.items(ids)}
    texts = {i: item_text(items[i], columns) for i in ids}
    text_hashes = {i: text_key(t) for i, t in texts.items()}

    root = _text_root(project, loaded.name)
    previous = current_version(root)
    fused, old = None, {}
    if previous is not None:
        meta = json.loads((previous / TEXT_META).read_text())
        if (meta.get("image_embedder_id") == loaded.embedder.embedder_id
                and meta.get("text_embedder_id") == text_model.embedder_id
                and meta.get("columns") == columns
                and meta.get("item_text_share") == ITEM_TEXT_SHARE
                and (previous / TEXT_ITEMS).is_file()):
            fused = load_index(previous / "index")
            old = json.loads((previous / TEXT_ITEMS).read_text())
    image_dim = loaded.embedder.dim
    if fused is None:
        fused = create_index(kind, image_dim + text_model.dim,
                             f"{loaded.embedder.embedder_id}+{text_model.embedder_id}")
    current = {i: [loaded.hashes[i], text_hashes[i]] for i in ids}
    changed = [i for i in ids if old.get(i) != current[i]]
    gone = [i for i in old if i not in current]
    before = _cache_size(project, text_model)
    if changed:
        for start in range(0, len(changed), 4096):
            chunk = changed[start:start + 4096]
            image_vectors = loaded.vectors_of(chunk, project.store)
            text_vectors = embed_texts_cached(project, text_model, [texts[i] for i in chunk],
                                              progress=progress and start == 0 and
                                              len(changed) > 500)
            fused.add(chunk, fuse_items(image_vectors, text_vectors),
                      [items[i].filter_attributes() for i in chunk])
    if gone:
        fused.remove(gone)
    meta = {"image_index": loaded.name, "image_index_version": loaded.folder.name,
            "image_embedder_id": loaded.embedder.embedder_id, "image_dim": image_dim,
            "text_embedder_id": text_model.embedder_id, "text_dim": text_model.dim,
            "columns": columns, "item_text_share": ITEM_TEXT_SHARE, "size": len(current)}
    with versioned_folder(root) as staging:
        fused.save(staging / "index")
        text_model.save(staging / "text_model")
        atomic_write_text(staging / TEXT_ITEMS, json.dumps(current))
        atomic_write_text(staging / TEXT_META, json.dumps(meta))
    return TextIndexSummary(image_index=loaded.name, text_embedder_id=text_model.embedder_id,
                            columns=columns, size=len(fused), added=len(changed),
                            removed=len(gone), unchanged=len(ids) - len(changed),
                            texts_embedded=_cache_size(project, text_model) - before)


def _cache_size(project, text_model) -> int:
    folder = project.path / "embeddings" / text_model.embedder_id
    try:
        from lookalike.models.cache import EmbeddingCache

        return len(EmbeddingCache(folder, text_model.embedder_id, text_model.dim))
    except (TypeError, LookalikeError, OSError):
        return 0


def fuse_items(image_vectors: np.ndarray, text_vectors: np.ndarray,
               share: float = ITEM_TEXT_SHARE) -> np.ndarray:
    """Fused item rows ``[sqrt(1-s) * image, sqrt(s) * text]`` (unit when both halves are)."""
    return np.ascontiguousarray(np.concatenate(
        [math.sqrt(1.0 - share) * np.asarray(image_vectors, dtype=np.float32),
         math.sqrt(share) * np.asarray(text_vectors, dtype=np.float32)], axis=1))


@dataclass
class LoadedTextIndex:
    """A fused index version, its text model and its settings."""

    folder: Path
    index: VectorIndex
    text_model: Any
    meta: dict[str, Any]
    _items: dict[str, list[str]] | None = None

    @property
    def items(self) -> dict[str, list[str]]:
        """id -> [image content hash, text hash] of the indexed items (read on first use)."""
        if self._items is None:
            self._items = json.loads((self.folder / TEXT_ITEMS).read_text())
        return self._items

    @property
    def image_dim(self) -> int:
        return int(self.meta["image_dim"])

    @property
    def text_dim(self) -> int:
        return int(self.meta["text_dim"])

    def text_vectors_of(self, project, ids: Sequence[str]) -> np.ndarray:
        """The cached text vectors of indexed items."""
        items = self.items
        missing = [i for i in ids if i not in items]
        if missing:
            raise UnknownNameError(f"item {missing[0]!r} is not in the text index; run "
                                   "`lookalike text-index`")
        from lookalike.models.cache import EmbeddingCache

        cache = EmbeddingCache(project.path / "embeddings" / self.text_model.embedder_id,
                               self.text_model.embedder_id, self.text_model.dim)
        vectors, found = cache.lookup([items[i][1] for i in ids])
        if not found.all():
            raise LookalikeError("text vectors missing from the cache; run `lookalike text-index`")
        return vectors


def load_text_index(project, index: str | None = None, *, refresh: bool = True) -> LoadedTextIndex:
    """The fused index of image index ``index``; on a writable project it is first brought up to
    date when the image index changed since it was built (``refresh``)."""
    from lookalike.models.text import load_text_embedder

    loaded = project.searcher(index)
    root = _text_root(project, loaded.name)
    caches = project.caches  # held by the project, never by this module
    with caches.text_lock:
        folder = current_version(root)
        cached = caches.text_indexes.get(str(root))
        if (cached is not None and folder is not None and cached.folder == folder
                and cached.meta.get("image_index_version") == loaded.folder.name):
            return cached  # the common case: nothing read from disk
        if folder is None:
            if project.read_only:
                raise UnknownNameError(f"no text index for index {loaded.name!r}; run "
                                       "`lookalike text-index` first")
            build_text_index(project, index=loaded.name)
            folder = current_version(root)
        meta = json.loads((folder / TEXT_META).read_text())
        stale = (meta.get("image_index_version") != loaded.folder.name
                 or meta.get("image_embedder_id") != loaded.embedder.embedder_id)
        if stale and refresh and not project.read_only:
            build_text_index(project, index=loaded.name,
                             columns=meta.get("columns", DEFAULT_COLUMNS))
            folder = current_version(root)
            meta = json.loads((folder / TEXT_META).read_text())
        elif meta.get("image_embedder_id") != loaded.embedder.embedder_id:
            raise ModelMismatchError(f"{folder}: text index built over another image embedder; "
                                     "run `lookalike text-index`")
        if cached is not None and cached.folder == folder:
            return cached  # stale but read-only: serve what there is
        model = load_text_embedder(folder / "text_model")
        model = caches.text_models.get_or_make(model.embedder_id, lambda: model)
        result = LoadedTextIndex(folder=folder, index=load_index(folder / "index"),
                                 text_model=model, meta=meta)
        return caches.text_indexes.put(str(root), result)


__all__ = ["build_text_index", "load_text_index", "fuse_items", "item_text", "text_key",
           "embed_texts_cached", "TextIndexSummary", "LoadedTextIndex", "ITEM_TEXT_SHARE",
           "TEXT_DIR", "TEXT_META", "TEXT_ITEMS", "DEFAULT_COLUMNS"]
