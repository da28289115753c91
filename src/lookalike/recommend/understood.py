"""Searching with understood words: attribute values named by the words become filters.

:func:`search_understood` runs a query whose words :func:`lookalike.recommend.words.understand`
has split into understood values and free text:

* **filter, filled up** -- the understood values (and, see below, the photo's kept category) are a
  hard filter. When fewer than ``k`` items pass, the list is filled from the same search without
  the kept category, then without the understood values (the caller's own filters always
  apply). So values the catalogue holds enough of act as a filter, rarer ones as the strongest
  possible boost (every matching item ranks first), and a query never loses results.
* **ranking** -- a photo or an item ranks by its picture; free text left over refines it with
  today's weighted (or RRF) fusion; with nothing left there is no text fusion at all (and no text
  model is loaded). Words alone rank by the text model on the *whole* query, inside the filter.
* **keeping the photo's type** -- "like this, but in red" asks for the same kind of product: when
  a photo or an item comes with understood words that name no category, the search also keeps
  the query's category -- an item's own, or for a photo the most common category among its
  :data:`TYPE_VOTES` nearest products (ties: the better ranked). ``keep_type=False`` turns it off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lookalike.index.base import Filters, Hits
from lookalike.recommend.results import Recommendation
from lookalike.recommend.words import Understanding

#: Nearest products whose categories vote for a photo's category (chosen on a validation split
#: carved from train by benchmarks/words_bench.py; see docs/text-search.md).
TYPE_VOTES = 5


@dataclass
class Answer:
    """Results plus what the words were understood as (None: no words, or understanding off)."""

    results: list[Recommendation]
    understood: dict[str, list[str]] | None = None
    free_text: str | None = None
    #: Attributes kept from the photo or item (``{"category": ["Tshirts"]}``).
    kept: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"results": [...]}`` plus ``understood``, ``free_text`` and ``kept`` when the words
        went through understanding."""
        out: dict[str, Any] = {"results": [r.to_json() for r in self.results]}
        if self.understood is not None:
            out.update(understood=self.understood, free_text=self.free_text, kept=self.kept)
        return out


def with_values(filters: Filters | None, values: dict[str, list[str]]) -> Filters | None:
    """``filters`` narrowed by ``column -> allowed values`` (a column already filtered keeps the
    values both allow)."""
    if not values:
        return filters
    equals = dict(filters.equals) if filters else {}
    for column, allowed in values.items():
        wanted = tuple(str(v) for v in allowed)
        if column in equals:
            wanted = tuple(v for v in equals[column] if v in wanted)
        equals[column] = wanted
    return Filters(equals=equals, ranges=dict(filters.ranges) if filters else {})


def fill_up(run: Callable[[Filters | None, int], Hits], levels: Sequence[Filters | None],
            k: int) -> Hits:
    """The ``k`` best hits of the first filter level, filled up from the next levels while
    fewer than ``k`` came back (an id is listed once, at its first level)."""
    ids: list[str] = []
    scores: list[float] = []
    tried: list[Filters | None] = []
    for level in levels:
        if len(ids) >= k:
            break
        if level in tried:
            continue
        tried.append(level)
        hits = run(level, k + len(ids))
        for item_id, score in zip(hits.ids, hits.scores):
            if item_id not in ids and len(ids) < k:
                ids.append(item_id)
                scores.append(float(score))
    return Hits(ids, scores)


def vote_category(project, hits: Hits) -> str | None:
    """The most common category among ``hits`` (ties: the best ranked), or None."""
    items = project.store.find(list(hits.ids))
    categories = [items[i].category for i in hits.ids if i in items and items[i].category]
    if not categories:
        return None
    counts = Counter(categories)
    best = max(counts.values())
    return next(c for c in categories if counts[c] == best)


def search_understood(project, understanding: Understanding, *, image: Any = None,
                      item_id: str | None = None, k: int = 5, filters: Filters | None = None,
                      text_weight: float | None = None, fusion: str = "weighted",
                      use_item_text: bool = False, index: str | None = None,
                      exclude: Sequence[str] = (), keep_type: bool = True,
                      type_votes: int = TYPE_VOTES, vector: np.ndarray | None = None) -> Answer:
    """Run a query whose words were understood (see the module docstring). ``vector`` is a
    photo already embedded by the index's embedder (instead of ``image``)."""
    from lookalike.recommend.text_search import PHOTO_TEXT_WEIGHT, fused_search, load_text_index

    loaded = project.loaded_index(index)
    exclude = [str(i) for i in exclude]
    image_vector = vector
    if item_id is not None:
        item_id = str(item_id)
        image_vector = loaded.vector_of(item_id, project.store)
        exclude.append(item_id)
    elif image is not None:
        image_vector = project.embed_query(image, index=index)
    words = understanding.text if image_vector is None else understanding.free_text
    text_index = text_vector = None
    if words or use_item_text:
        text_index = load_text_index(project, index)
        text_vector = text_index.text_model.embed_query(words) if words else None
        if use_item_text:
            own = text_index.text_vectors_of(project, [item_id])[0]
            text_vector = own if text_vector is None else _unit(text_vector + own)
    weight = 1.0 if image_vector is None else (
        PHOTO_TEXT_WEIGHT if text_weight is None else text_weight)

    def run(level: Filters | None, n: int) -> Hits:
        if text_vector is None:
            return loaded.index.search(image_vector[None, :], k=n, filters=level,
                                       exclude=[exclude])[0]
        return fused_search(text_index, image_vector, text_vector, weight, n, level, exclude,
                            fusion=fusion)

    kept: dict[str, list[str]] = {}
    if (keep_type and image_vector is not None and "category" not in understanding.understood
            and not (filters and "category" in filters.equals)):
        category = (project.store.get(item_id).category if item_id is not None else
                    vote_category(project, loaded.index.search(
                        image_vector[None, :], k=type_votes, filters=filters,
                        exclude=[exclude])[0]))
        if category:
            kept["category"] = [category]
    understood = with_values(filters, understanding.understood)
    levels = [with_values(understood, kept), understood, filters]
    hits = fill_up(run, levels, k)
    return Answer(results=project.recommendations(hits.ids, hits.scores),
                  understood={c: list(v) for c, v in understanding.understood.items()},
                  free_text=understanding.free_text, kept=kept)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


__all__ = ["Answer", "search_understood", "fill_up", "with_values", "vote_category",
           "TYPE_VOTES"]
