"""One query verb for the main commands: a photo, an item or words, in any mix, optionally
diversified over the catalogue's clusters.

``lookalike search`` / ``lookalike similar`` and ``POST /v1/search`` /
``GET /v1/items/{id}/similar`` all call :func:`recommend`, so the CLI, the API and the web page
offer exactly the same options:

* a photo alone or an item alone: the plain image search (no text model is loaded);
* words alone, a photo refined by words, an item refined by words (or by its own title): the
  fused words+photo index of :mod:`lookalike.recommend.text_search`;
* words that name the catalogue's own colours, genders or categories ("in red", "for women",
  "sandals") are understood as filters (:mod:`lookalike.recommend.words`,
  :mod:`lookalike.recommend.understood`); :func:`answer` also says what was understood.
  ``understand=False`` (or a column in ``literal``) sends those words to the text model instead;
* ``exact=True`` (a photo alone): find *this* product in a shopper's photo -- the embedding's
  nearest products re-ranked by an affine photo check (:mod:`lookalike.recommend.photo_match`);
* ``per_cluster=n``: at most ``n`` results from any one K-means cluster of
  :mod:`lookalike.recommend.clusters` (the clusters must have been computed with
  ``lookalike clusters``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lookalike.errors import LookalikeError
from lookalike.index.base import Filters
from lookalike.recommend.results import Recommendation
from lookalike.recommend.understood import Answer
from lookalike.recommend.words import Understanding


def recommend(project, **query: Any) -> list[Recommendation]:
    """The ``k`` best products for a photo, a catalogue item and/or words: the results of
    :func:`answer` (same keyword arguments)."""
    return answer(project, **query).results


def answer(project, *, image: Any = None, item_id: str | None = None,
           text: str | None = None, k: int = 5, filters: Filters | None = None,
           text_weight: float | None = None, fusion: str = "weighted",
           with_title: bool = False, per_cluster: int | None = None,
           index: str | None = None, exclude: Iterable[str] = (), understand: bool = True,
           literal: Sequence[str] = (), keep_type: bool = True, exact: bool = False) -> Answer:
    """The ``k`` best products for a photo (path, bytes or PIL image), a catalogue item and/or
    words, with what the words were understood as; see the module docstring.

    Blank ``text`` with a photo or an item is a plain image search; blank text alone, text in a
    script the text model cannot read and a query with nothing to search with raise
    :class:`~lookalike.models.text.TextQueryError` (a :class:`~lookalike.errors.LookalikeError`).
    ``with_title`` adds the item's own title to a more-like-this query (fused item embeddings).
    ``understand`` turns query understanding on or off; ``literal`` lists columns whose words
    stay words (e.g. ``["colour"]``); ``keep_type`` keeps the photo's category when the words
    name a colour or gender but no category. ``exact`` (a photo without words) looks for *this
    very product*: the nearest products by embedding are re-ranked so those whose photo lines up
    with the query photo come first (:func:`~lookalike.recommend.photo_match.search_exact`).
    """
    from lookalike.recommend.text_search import search_with_text
    from lookalike.recommend.understood import search_understood

    if per_cluster is not None and per_cluster < 1:
        raise LookalikeError(f"per_cluster must be at least 1, not {per_cluster}")
    if with_title and item_id is None:
        raise LookalikeError("with_title refines more-like-this; give an item id")
    if image is not None and item_id is not None:
        raise LookalikeError("give a photo or an item id, not both")
    if exact and (image is None or (text is not None and str(text).strip())):
        raise LookalikeError("exact looks for the product in a photo; give a photo and no words")
    exclude = list(exclude)
    understanding = _understanding(project, text, filters, literal) if understand else None
    if image is not None and not hasattr(image, "convert"):
        # Decode once, not on every (longer) fetch.
        from lookalike.catalogue.images import as_image

        image = as_image(image)

    kept: dict[str, list[str]] = {}

    def fetch(n: int) -> list[Recommendation]:
        if exact:
            from lookalike.recommend.photo_match import search_exact

            return search_exact(project, image, n, filters, index=index, exclude=exclude)
        if understanding is not None and understanding.understood:
            found = search_understood(project, understanding, image=image, item_id=item_id,
                                      k=n, filters=filters, text_weight=text_weight,
                                      fusion=fusion, use_item_text=with_title, index=index,
                                      exclude=exclude, keep_type=keep_type)
            kept.clear()
            kept.update(found.kept)
            return found.results
        return search_with_text(project, image=image, text=text, item_id=item_id, k=n,
                                filters=filters, text_weight=text_weight, fusion=fusion,
                                use_item_text=with_title, index=index, exclude=exclude)

    if per_cluster is None:
        results = fetch(k)
    else:
        from lookalike.recommend.clusters import _diverse, load_clusters

        saved = load_clusters(project, index)
        limit = len(project.searcher(index).index)
        results = _diverse(fetch, saved.cluster_of, k, per_cluster, limit)
    if understanding is None:
        return Answer(results=results)
    return Answer(results=results, understood=understanding.to_json()["understood"],
                  free_text=understanding.free_text, kept=kept)


def _understanding(project, text: str | None, filters: Filters | None,
                   literal: Sequence[str]) -> Understanding | None:
    """What non-blank words mean against the catalogue; a column the caller filters explicitly
    is not understood from words (the filter wins, the words stay words)."""
    from lookalike.recommend.words import understand

    if text is None or not str(text).strip():
        return None
    explicit = list(filters.equals) if filters else []
    return understand(str(text).strip(), project.vocabulary(), literal=[*literal, *explicit])


__all__ = ["recommend", "answer", "Answer"]
