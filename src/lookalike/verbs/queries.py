"""The query verbs of :class:`lookalike.project.Project`: more like this, search by photo and/or
words, personal picks, shop the look and category-first search.

A mixin (never imported the other way): each method is a thin, documented entry point; the work
is done in :mod:`lookalike.recommend` (imported on first use, which keeps ``import lookalike``
light) over the project's :class:`~lookalike.searcher.Searcher`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.index.base import Filters
from lookalike.recommend.results import Recommendation

#: A photo as the query verbs take it: a path, raw bytes or a PIL image.
Photo = str | Path | bytes | Image.Image


def as_image(image: Photo) -> Image.Image:
    """A photo given as a path, raw bytes or a PIL image, decoded safely."""
    from lookalike.catalogue.images import as_image as decode  # lazily: keeps imports light

    return decode(image)


class QueryVerbs:
    """``similar``, ``search``, ``answer``, ``embed_query``, ``recommend``, ``look``,
    ``category_probe`` and ``category_search`` of :class:`~lookalike.project.Project`."""

    def similar(self, item_id: str, k: int = 5, filters: Filters | None = None, *,
                index: str | None = None, text: str | None = None,
                **words: Any) -> list[Recommendation]:
        """Products most like catalogue item ``item_id`` (the item itself excluded).

        With ``text`` (e.g. ``"in red"``), or any option of :meth:`answer` (``with_title``,
        ``per_cluster``, ...), the words refine the item: the results of :meth:`answer`."""
        if text is not None or words:
            return self.answer(item_id=item_id, text=text, k=k, filters=filters, index=index,
                               **words).results
        searcher = self.searcher(index)
        item_id = str(item_id)
        vector = searcher.vector_of(item_id, self.store)
        hits = searcher.search_vector(vector, k, filters, exclude=[item_id])
        return self.recommendations(hits.ids, hits.scores)[:k]

    def search(self, image: Photo | None = None, k: int = 5, filters: Filters | None = None,
               *, index: str | None = None, exclude: Iterable[str] = (),
               text: str | None = None, **words: Any) -> list[Recommendation]:
        """Products most like a photo (a path, raw bytes or a PIL image), like words
        (``text="red running shoes"``), or like a photo refined by words (``text="in red"``).

        A photo alone is the plain image search; with ``text`` (or any option of
        :meth:`answer`) these are the results of :meth:`answer`."""
        if text is not None or words or image is None:
            return self.answer(image=image, text=text, k=k, filters=filters, index=index,
                               exclude=exclude, **words).results
        searcher = self.searcher(index)
        vector = searcher.embedder.embed_one(as_image(image))
        hits = searcher.search_vector(vector, k, filters, exclude=list(exclude))
        return self.recommendations(hits.ids, hits.scores)[:k]

    def answer(self, *, image: Photo | None = None, item_id: str | None = None,
               text: str | None = None, k: int = 5, filters: Filters | None = None,
               **options: Any):  # -> lookalike.recommend.understood.Answer
        """The one query verb behind ``lookalike search`` / ``similar`` and the service: a
        photo, an item and/or words, with what the words were understood as (an
        :class:`~lookalike.recommend.understood.Answer`). ``options``: ``text_weight``,
        ``fusion``, ``with_title``, ``per_cluster``, ``index``, ``exclude``, ``understand``,
        ``literal``, ``keep_type``; see :func:`lookalike.recommend.query.answer`."""
        from lookalike.recommend.query import answer

        return answer(self, image=image, item_id=item_id, text=text, k=k, filters=filters,
                      **options)

    def embed_query(self, image: Photo, *, index: str | None = None) -> np.ndarray:
        """The query vector of a photo under the embedder of index ``index``."""
        return self.searcher(index).embedder.embed_one(as_image(image))

    def recommend(self, history: str | Sequence[str], k: int = 10, method: str = "centroid",
                  filters: Filters | None = None, diversity: float = 0.0, *,
                  index: str | None = None, **options: Any) -> list[Recommendation]:
        """Personalised picks from a viewing history (ids, or "id,id"); seen items excluded.
        ``method``: centroid, knn-vote or latent-svm. See
        :func:`lookalike.recommend.personal.recommend`."""
        from lookalike.recommend.personal import recommend

        return recommend(self, history, k=k, method=method, filters=filters,
                         diversity=diversity, index=index, **options)

    def look(self, scene: Photo, *, history: Any = None, like: str | None = None, k: int = 5,
             **options: Any) -> dict[str, Any]:
        """Shop the look: the regions of a scene photo worth shopping, each with the most similar
        products. See :func:`lookalike.recommend.look.look` for the options."""
        from lookalike.recommend.look import look

        return look(self, as_image(scene), history=history, like=like, k=k, **options)

    def category_probe(self, *, column: str = "category", index: str | None = None,
                       **options: Any):  # -> lookalike.recommend.category_first.CategoryProbe
        """Train (and save) the linear probe category-first search uses, on the train split;
        see :func:`lookalike.recommend.category_first.train_category_probe`."""
        from lookalike.recommend.category_first import train_category_probe

        return train_category_probe(self, column=column, index=index, **options)

    def category_search(self, image: Photo | None = None, *, item_id: str | None = None,
                        k: int = 5, filters: Filters | None = None, index: str | None = None,
                        **options: Any):  # -> CategoryFirstResult
        """Classify the query's category first, then search inside it (a photo or an item);
        see :func:`lookalike.recommend.category_first.category_first_search`."""
        from lookalike.recommend.category_first import category_first_search

        return category_first_search(self, image, item_id=item_id, k=k, filters=filters,
                                     index=index, **options)


__all__ = ["QueryVerbs", "Photo", "as_image"]
