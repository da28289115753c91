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

The fused index itself (building, storage, loading) lives in :mod:`.text_index`; its names are
re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, UnknownNameError
from lookalike.index.base import Filters, Hits, VectorIndex
from lookalike.recommend.results import Recommendation
from lookalike.recommend.text_index import (DEFAULT_COLUMNS, ITEM_TEXT_SHARE, TEXT_DIR,
                                            TEXT_ITEMS, TEXT_META, LoadedTextIndex,
                                            TextIndexSummary, build_text_index,
                                            embed_texts_cached, fuse_items, item_text,
                                            load_text_index, text_key)

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
        loaded = project.searcher(index)
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
    return project.recommendations(hits.ids, hits.scores)


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
           "ITEM_TEXT_WEIGHT", "ITEM_TEXT_SHARE", "FUSIONS", "DEFAULT_FUSION", "TEXT_DIR",
           "TEXT_META", "TEXT_ITEMS", "DEFAULT_COLUMNS"]
