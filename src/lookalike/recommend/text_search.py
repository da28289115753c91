"""Words with pictures: search by words, by a photo refined by words, or more-like-this + words.

Every item's text (its title by default) is embedded with the all-MiniLM-L6-v2 text model and
kept beside its image embedding in one *fused* index::

    item vector  = [ sqrt(1 - s) * image_vector ,  sqrt(s) * text_vector ]      (s = 0.5)

Both halves are unit rows, so the fused row is a unit row too and a query

    query vector = [ (1 - w) / sqrt(1 - s) * image_query ,  w / sqrt(s) * text_query ]

scores every item with exactly ``(1 - w) * cos(image) + w * cos(text)``: weighted score fusion,
for any text weight ``w`` chosen at query time, in one exact filtered search. ``w = 1`` is a
words-only search over the titles; ``w = 0`` is a plain photo search. Reciprocal rank fusion
(``fusion="rrf"``) is offered too: the photo's and the words' ranked lists (the top
``RRF_DEPTH``), each item scored ``(1 - w) / (60 + rank_image) + w / (60 + rank_text)``.
``benchmarks/text_bench.py`` compares them; see ``docs/text-search.md``.

Storage::

    <project>/embeddings/<text_embedder_id>/   text vectors, keyed by sha256 of the text
    <project>/text/<image index>/CURRENT -> v000001/
        index/        the fused VectorIndex (same item attributes, so filters work)
        text_model/   the text embedder's config.json
        text.json     columns, item share, image index version and embedder ids
        items.json    id -> [image content hash, text hash] (for incremental updates)

The fused index is rebuilt incrementally (only items whose image or text changed) by
:func:`build_text_index`; a query on a writable project refreshes it first when the image
index has changed since.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, UnknownNameError
from lookalike.index.base import Filters, Hits, VectorIndex, create_index, load_index
from lookalike.recommend.results import Recommendation
from lookalike.storage import atomic_write_text, current_version, versioned_folder

TEXT_DIR = "text"
TEXT_META = "text.json"
TEXT_ITEMS = "items.json"  # id -> [image content hash, text hash]; read only when needed
DEFAULT_COLUMNS = ("title",)
#: The text's share ``s`` of every fused item row (see the module docstring).
ITEM_TEXT_SHARE = 0.5
#: Default text weight ``w`` for a photo refined by words, and for more-like-this + its own
#: title. Chosen on train-split queries by benchmarks/text_bench.py (docs/text-search.md): the
#: best ``w`` for "photo + colour word" was 0.5; for "item + own title" the type precision
#: rises up to 0.9 but the colour precision falls past 0.2, so 0.5 is the middle ground.
PHOTO_TEXT_WEIGHT = 0.5
ITEM_TEXT_WEIGHT = 0.5
FUSIONS = ("weighted", "rrf")
DEFAULT_FUSION = "weighted"
RRF_K = 60
RRF_DEPTH = 200


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

    project._require_writable("build the text index")
    loaded = project._index(index)
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


def fuse_query(image_vector: np.ndarray | None, text_vector: np.ndarray | None,
               text_weight: float, image_dim: int, text_dim: int,
               share: float = ITEM_TEXT_SHARE) -> tuple[np.ndarray, float]:
    """The fused query row (unit length) and the factor that turns the index's cosine back into
    ``(1 - w) * cos(image) + w * cos(text)``. A missing half counts as zeros."""
    if not 0.0 <= text_weight <= 1.0:
        raise LookalikeError(f"text weight must be between 0 and 1, not {text_weight}")
    image_part = (np.zeros(image_dim, np.float32) if image_vector is None
                  else (1.0 - text_weight) / math.sqrt(1.0 - share) * np.asarray(image_vector))
    text_part = (np.zeros(text_dim, np.float32) if text_vector is None
                 else text_weight / math.sqrt(share) * np.asarray(text_vector))
    query = np.concatenate([image_part, text_part]).astype(np.float32)
    norm = float(np.linalg.norm(query))
    if norm == 0.0:
        raise LookalikeError("the query has neither a photo nor words to search with")
    return query / norm, norm


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

    loaded = project._index(index)
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


# ---- queries ----------------------------------------------------------------------------------
def search_with_text(project, image: Any = None, text: str | None = None,
                     item_id: str | None = None, k: int = 5, filters: Filters | None = None, *,
                     text_weight: float | None = None, fusion: str = DEFAULT_FUSION,
                     use_item_text: bool = False, index: str | None = None,
                     exclude: Iterable[str] = ()) -> list[Recommendation]:
    """One entry point for every mix of photo, item and words.

    * words alone (``text``): the items whose titles mean the most the same;
    * a photo (``image``: path, bytes or PIL image) refined by words: items like the photo *and*
      the words, e.g. ``search_with_text(p, "shoe.jpg", "in red")``;
    * more-like-this (``item_id``) refined by words, or -- with ``use_item_text`` -- by the item's
      own title (fused item embeddings).

    ``text_weight`` is ``w`` in ``(1 - w) * cos(image) + w * cos(text)`` (defaults:
    :data:`PHOTO_TEXT_WEIGHT`, :data:`ITEM_TEXT_WEIGHT`, 1.0 for words alone).
    Empty or blank text with a photo or an item is a plain image search; empty text alone, and
    text with no word the model can read (another script), raise
    :class:`~lookalike.models.text.TextQueryError`.
    """
    from lookalike.models.text import TextQueryError

    if image is not None and item_id is not None:
        raise LookalikeError("give a photo or an item id, not both")
    if fusion not in FUSIONS:
        raise UnknownNameError(f"unknown fusion {fusion!r}; use one of {', '.join(FUSIONS)}")
    words = None if text is None or not str(text).strip() else str(text)
    has_picture = image is not None or item_id is not None
    if words is None and not has_picture:
        raise TextQueryError("nothing to search with: give words, a photo or an item id")
    exclude = [str(i) for i in exclude]
    if words is None and not use_item_text:  # a plain image search: no text model needed
        if item_id is not None:
            return project.similar(item_id, k, filters, index=index)
        return project.search(image, k, filters, index=index, exclude=exclude)

    text_index = load_text_index(project, index)
    text_vector = text_index.text_model.embed_query(words) if words is not None else None
    image_vector = None
    if item_id is not None:
        item_id = str(item_id)
        loaded = project._index(index)
        image_vector = loaded.vector_of(item_id, project.store)
        exclude.append(item_id)
        if use_item_text:
            own = text_index.text_vectors_of(project, [item_id])[0]
            text_vector = own if text_vector is None else _unit(text_vector + own)
    elif image is not None:
        image_vector = project.embed_query(image, index=index)
    if text_weight is None:
        text_weight = (1.0 if image_vector is None else
                       PHOTO_TEXT_WEIGHT if words is not None else ITEM_TEXT_WEIGHT)
    if image_vector is None:
        text_weight = 1.0
    hits = fused_search(text_index, image_vector, text_vector, text_weight, k, filters,
                        exclude, fusion=fusion)
    return project._recommendations(hits.ids, hits.scores)


def fused_search(text_index: LoadedTextIndex, image_vector: np.ndarray | None,
                 text_vector: np.ndarray | None, text_weight: float, k: int,
                 filters: Filters | None = None, exclude: Sequence[str] = (), *,
                 fusion: str = DEFAULT_FUSION, depth: int = RRF_DEPTH) -> Hits:
    """Search the fused index with optional halves; scores are fused cosines (``weighted``) or
    weighted reciprocal-rank sums (``rrf``)."""
    return fused_search_many(text_index.index, text_index.image_dim, text_index.text_dim,
                             None if image_vector is None else image_vector[None, :],
                             None if text_vector is None else text_vector[None, :],
                             text_weight, k, filters, [list(exclude)], fusion=fusion,
                             depth=depth)[0]


def fused_search_many(index: VectorIndex, image_dim: int, text_dim: int,
                      image_vectors: np.ndarray | None, text_vectors: np.ndarray | None,
                      text_weight: float, k: int, filters: Filters | None = None,
                      exclude: Sequence[Sequence[str]] | None = None, *,
                      fusion: str = DEFAULT_FUSION, depth: int = RRF_DEPTH,
                      share: float = ITEM_TEXT_SHARE) -> list[Hits]:
    """Batched :func:`fused_search` (benchmarks use it): row ``i`` of ``image_vectors`` and of
    ``text_vectors`` make query ``i``; either array may be None (that half is absent)."""
    n = len(image_vectors) if image_vectors is not None else len(text_vectors)
    if fusion == "weighted" or image_vectors is None or text_vectors is None:
        rows, norms = zip(*[fuse_query(None if image_vectors is None else image_vectors[i],
                                       None if text_vectors is None else text_vectors[i],
                                       text_weight if image_vectors is not None else 1.0,
                                       image_dim, text_dim, share) for i in range(n)])
        found = index.search(np.stack(rows), k=k, filters=filters, exclude=exclude)
        return [Hits(h.ids, [s * norm for s in h.scores]) for h, norm in zip(found, norms)]
    if fusion != "rrf":
        raise UnknownNameError(f"unknown fusion {fusion!r}; use one of {', '.join(FUSIONS)}")
    depth = max(depth, k)
    image_rows = np.stack([fuse_query(v, None, 0.0, image_dim, text_dim, share)[0]
                           for v in image_vectors])
    text_rows = np.stack([fuse_query(None, v, 1.0, image_dim, text_dim, share)[0]
                          for v in text_vectors])
    by_image = index.search(image_rows, k=depth, filters=filters, exclude=exclude)
    by_text = index.search(text_rows, k=depth, filters=filters, exclude=exclude)
    out = []
    for a, b in zip(by_image, by_text):
        score: dict[str, float] = {}
        for weight, ranked in ((1.0 - text_weight, a.ids), (text_weight, b.ids)):
            for rank, item_id in enumerate(ranked, 1):
                score[item_id] = score.get(item_id, 0.0) + weight / (RRF_K + rank)
        best = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        out.append(Hits([i for i, _ in best], [s for _, s in best]))
    return out


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


__all__ = ["search_with_text", "build_text_index", "load_text_index", "fused_search",
           "fused_search_many", "fuse_items", "fuse_query", "item_text", "text_key",
           "embed_texts_cached", "TextIndexSummary", "LoadedTextIndex", "PHOTO_TEXT_WEIGHT",
           "ITEM_TEXT_WEIGHT", "ITEM_TEXT_SHARE", "FUSIONS", "DEFAULT_FUSION"]
