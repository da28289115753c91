"""Shop the look, the public verb: the regions of a scene photo worth shopping, each with the
catalogue products most similar to it (:func:`look`).

Two localisers find *where* products are (``localiser``):

- ``segmenter`` (the default, chosen on the validation split of generated scenes): a small
  fully convolutional net (:mod:`lookalike.recommend.segmenter`) marks product pixels; its
  connected components and a watershed of them are the candidate boxes. Scenes smaller than
  :data:`MIN_SEGMENT_SIDE` px, or a segmenter that finds fewer than ``top_regions`` distinct
  boxes, add the windows' regions below as further candidates;
- ``windows``: paper 000's sliding windows (:mod:`lookalike.recommend.regions`), a fast pass
  over every window, a crop-and-embed check of the best ones, a learned box regressor;
- ``both``: the segmenter's and the windows' candidates together.

Every candidate is then cropped and embedded with the index's embedder and scored by the query
(a ``like`` product -- its cosine plus a vote of the candidate's catalogue neighbours for the
like's category, :func:`~lookalike.recommend.look_space.category_vote` --, a shopper's history,
or -- with neither -- the segmenter's objectness, "what in this photo is a product?").
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.recommend.look_space import QuerySpace, category_vote, screen_embedder
from lookalike.recommend.regions import (
    DEFAULT_ASPECT,
    DEFAULT_RERANK,
    Region,
    find_regions,
    grid_block,
    proposal_regions,
)
from lookalike.recommend.window_features import CropWindows
from lookalike.recommend.feature_maps import has_fast_windows, windowed_features
from lookalike.recommend.windows import (
    DEFAULT_MAX_SIDE,
    DEFAULT_WINDOWS,
    PreparedScene,
    WindowGrid,
    nms,
    prepare_scene,
    window_grids,
)

#: The fast pass's default features: PHOG + HSV colour, paper 000's best pair (Table 3), whose
#: windows are pooled in well under a second; the project's index then checks the best windows.
DEFAULT_LOOK_FEATURES = "phog+hsv-histogram"
LOCALISERS = ("segmenter", "windows", "both")
#: Chosen on the validation split (benchmarks/look_wild_bench.py, benchmarks/RESULTS.md).
DEFAULT_LOCALISER = "segmenter"
#: Box-regressor steps applied to the segmenter's boxes (chosen on validation).
PROPOSAL_STEPS = 0
#: Weight of objectness added to the query's similarity (chosen on validation).
OBJECTNESS_WEIGHT = 0.5
#: Weight of the category vote (:func:`~lookalike.recommend.look_space.category_vote`) added to
#: a ``like`` query's similarity (chosen on validation).
CATEGORY_WEIGHT = 0.5
#: What the segmenter's regions are embedded on: the scene as it is, or the product on white
#: (chosen on validation).
BACKDROPS = ("scene", "white")
DEFAULT_BACKDROP = "scene"
#: Whether a ``like`` query is scored under the packaged look head
#: (:mod:`lookalike.recommend.look_head`) when the index's embedder is the one it was trained
#: for (chosen on validation).
USE_LOOK_HEAD = True
#: Whether a ``like`` query's boxes are ranked by the packaged look ranker
#: (:mod:`lookalike.recommend.look_ranker`) when it was fitted for the index's embedder and the
#: look head in use, rather than by head cosine + category vote + objectness (chosen on
#: validation).
USE_LOOK_RANKER = True
#: The segmenter's input side at inference (None: the side it was trained at; chosen on
#: validation).
SEGMENTER_SIDE: int | None = 384
#: Scenes whose shorter side is below this are searched with windows only.
MIN_SEGMENT_SIDE = 64


@dataclass
class _Query:
    """A checked query: the index, the history or ``like`` ids, and its vector spaces."""

    loaded: Any
    ids: list[str] | None
    like: str | None
    checker: QuerySpace
    screen: QuerySpace
    own: bool


def _sample_boxes(grids: Sequence[WindowGrid], n: int, seed: int) -> np.ndarray:
    boxes = np.concatenate([g.boxes() for g in grids])
    rng = np.random.default_rng(seed)
    return boxes[rng.choice(len(boxes), size=min(n, len(boxes)), replace=False)]


def _check_query(project: Any, history: Any, like: str | None, k: int, method: str,
                 index: str | None, features: str | None, localiser: str) -> _Query:
    from lookalike.errors import UnknownItemError
    from lookalike.recommend.personal import _check_method, check_history, parse_history

    if k < 1:
        raise LookalikeError(f"k must be at least 1, got {k}")
    if history is not None and like is not None:
        raise LookalikeError("give either a history or a `like` product, not both")
    if localiser not in LOCALISERS:
        raise LookalikeError(f"unknown localiser {localiser!r}; use one of "
                             f"{', '.join(LOCALISERS)}")
    _check_method(method)
    loaded = project.searcher(index)
    ids = parse_history(history) if history is not None else None
    if ids is not None:
        check_history(project, ids, index)
    like = str(like).strip() if like is not None else None
    if like is not None and like not in loaded.hashes:
        raise UnknownItemError(f"unknown item {like!r} for `like`")
    own = features is None or features == loaded.embedder.name
    checker = QuerySpace(project, loaded)
    screen = checker if own else QuerySpace(project, loaded,
                                            screen_embedder(features, project.caches))
    return _Query(loaded, ids, like, checker, screen, own)


def _backdrop(backdrop: str) -> str:
    if backdrop not in BACKDROPS:
        raise LookalikeError(f"backdrop is one of {', '.join(BACKDROPS)}, not {backdrop!r}")
    return backdrop


def _side(side: int | None) -> int | None:
    if side is not None and not 32 <= int(side) <= 2048:
        raise LookalikeError(f"segmenter_side is between 32 and 2048 px, not {side}")
    return None if side is None else int(side)


def _voted(project: Any, query: _Query, scorer: Any, weight: float, head: bool) -> Any:
    """A ``like`` query's checker-space scorer (under the look head when ``head`` and one fits
    the checker's embedder) plus ``weight`` x the category vote."""
    if query.like is not None and head:
        scorer = _head_scorer(project, query) or scorer
    vote = category_vote(project, query.loaded, query.like) \
        if query.like is not None and weight > 0 else None
    if vote is None:
        return scorer
    return lambda vectors: np.asarray(scorer(vectors), np.float64).ravel() + weight * vote(vectors)


def _head_scorer(project: Any, query: _Query) -> Any:
    """Cosine to the ``like`` product under the packaged look head, or None when no head was
    trained for the checker's embedder."""
    from lookalike.recommend.look_head import packaged_look_head

    embedder = query.checker.embedder
    head = packaged_look_head(embedder.name, embedder.dim, project.caches)
    return None if head is None else head.scorer(query.checker.vectors([query.like]))


def ranking_features(project: Any, scene_image: Any, like: str, *, index: str | None = None,
                     segmenter_side: int | None = SEGMENTER_SIDE
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Every segmenter proposal of a scene photo (``[n, 4]``, the photo's pixels) and what the
    look ranker reads of it for a ``like`` query (``[n, 9]``,
    :data:`~lookalike.recommend.look_ranker.FEATURES`): the data ``scripts/train_look_ranker.py``
    fits the ranker on. Empty when no segmenter or look head applies."""
    from lookalike.catalogue.images import as_image
    from lookalike.recommend.look_ranker import ranking_cues
    from lookalike.recommend.segmenter import packaged_segmenter

    query = _check_query(project, None, like, 1, "centroid", index, None, "segmenter")
    image = scene_image if isinstance(scene_image, Image.Image) else as_image(scene_image)
    scene = prepare_scene(image)
    segmenter = packaged_segmenter(project.caches)
    boxes, _, scored = segmenter.proposals(Image.fromarray(scene.pixels), side=segmenter_side) \
        if segmenter is not None else (np.zeros((0, 4), np.int64), None, None)
    cues = ranking_cues(project, query.loaded, query.checker, str(like), scored,
                        (scene.width, scene.height)) if len(boxes) else None
    if cues is None:
        return np.zeros((0, 4), np.int64), np.zeros((0, 9))
    vectors = CropWindows(query.checker.embedder, scene.pixels).for_boxes(boxes)
    return scene.to_original(boxes), cues[0](boxes, vectors)


def _window_regions(project: Any, query: _Query, scene: PreparedScene,
                    grids: list[WindowGrid], sample: np.ndarray, regressor: Any,
                    options: dict[str, Any], model_options: dict[str, Any]) -> list[Region]:
    """The windows localiser: fast pass, CNN check, box regressor."""
    ids, like, method, seed = query.ids, query.like, options["method"], options["seed"]
    window_features = windowed_features(query.screen.embedder, scene.pixels, grid_block(grids),
                                        fast=options["fast"], caches=project.caches)
    scorer = query.screen.scorer(ids, like, method, seed,
                                 lambda: window_features.for_boxes(sample), **model_options)
    verifier = None
    if not query.own:
        crops = sample[:max(1, options["scene_negatives"] // 5)]  # crops cost more
        verifier = (query.checker.embedder, _voted(project, query, query.checker.scorer(
            ids, like, method, seed,
            lambda: CropWindows(query.checker.embedder, scene.pixels).for_boxes(crops),
            **model_options), options["category_weight"], options["look_head"]))
    return find_regions(query.screen.embedder, scene, scorer, windows=options["windows"],
                        stride=options["stride"], top_regions=options["top_regions"],
                        iou_threshold=options["iou_threshold"], aspect=options["aspect"],
                        rerank=options["rerank"], verifier=verifier, fast=options["fast"],
                        features=window_features, box_regressor=regressor)


def _segmenter_regions(project: Any, query: _Query, scene: PreparedScene, sample: np.ndarray,
                       regressor: Any, options: dict[str, Any],
                       model_options: dict[str, Any]) -> tuple[list[Region], Any, Any]:
    """The segmenter localiser's regions, their box scorer ``(boxes, vectors) -> scores`` and
    the objectness map (both None when the segmenter is not used for this scene)."""
    from lookalike.recommend.segmenter import packaged_segmenter

    segmenter = packaged_segmenter(project.caches)
    if segmenter is None or min(scene.width, scene.height) < MIN_SEGMENT_SIDE:
        return [], None, None
    boxes, _, scored = segmenter.proposals(Image.fromarray(scene.pixels),
                                           side=options["segmenter_side"])
    pixels = scored.on_white(scene.pixels) if options["backdrop"] == "white" else scene.pixels

    def query_scorer() -> Any:  # the query's own score of a box's vector (the sum's first part)
        crops, checker = sample[:max(1, options["scene_negatives"] // 5)], query.checker
        scorer = checker.scorer(
            query.ids, query.like, options["method"], options["seed"],
            lambda: CropWindows(checker.embedder, pixels).for_boxes(crops), **model_options)
        return _voted(project, query, scorer, options["category_weight"], options["look_head"])

    box_scorer = _box_scorer(project, query, scored, (scene.width, scene.height), options,
                             query_scorer)
    regions = proposal_regions(boxes, scene.pixels, query.checker.embedder, box_scorer,
                               top_regions=options["top_regions"],
                               iou_threshold=options["iou_threshold"], box_regressor=regressor,
                               steps=options["steps"], embed_pixels=pixels)
    return regions, box_scorer, scored


def _box_scorer(project: Any, query: _Query, scored: Any, size: tuple[int, int],
                options: dict[str, Any], query_scorer: Any) -> Any:
    """How the segmenter's (and any topping-up) boxes are scored, ``(boxes, vectors) ->
    scores``: the look ranker for a ``like`` query when it applies, else ``query_scorer()``'s
    score + ``objectness_weight`` x objectness, or objectness alone with no query."""
    if query.like is not None and options["look_ranker"] and options["look_head"]:
        from lookalike.recommend.look_ranker import ranked_scorer

        ranked = ranked_scorer(project, query.loaded, query.checker, query.like, scored, size)
        if ranked is not None:
            return ranked
    if query.ids is None and query.like is None:
        return lambda boxes, vectors: scored.of(boxes)
    scorer, weight = query_scorer(), options["objectness_weight"]
    return lambda boxes, vectors: np.asarray(scorer(vectors), np.float64).ravel() + \
        weight * scored.of(boxes)


def _merged(found: list[Region], extra: list[Region], box_scorer: Any, top_regions: int,
            iou_threshold: float) -> list[Region]:
    """The segmenter's regions topped up with windows' regions, all scored the same way."""
    if not extra:
        return found
    vectors = np.stack([r.vector for r in extra])
    boxes = np.stack([r.box for r in extra])
    scores = np.asarray(box_scorer(boxes, vectors), np.float64).ravel()
    pool = found + [Region(b, float(s), v) for b, s, v in zip(boxes, scores, vectors)]
    keep = nms(np.stack([r.box for r in pool]), np.array([r.score for r in pool]),
               iou_threshold, max_keep=top_regions)
    return [pool[i] for i in keep]


def look(project: Any, scene_image: Any, history: Any = None, like: str | None = None,
         k: int = 5, windows: Sequence[int] = DEFAULT_WINDOWS, stride: int | None = None,
         top_regions: int = 5, features: str | None = DEFAULT_LOOK_FEATURES, *,
         method: str = "centroid", rerank: int = DEFAULT_RERANK, aspect: float = DEFAULT_ASPECT,
         filters: Any = None, index: str | None = None, iou_threshold: float = 0.3,
         max_side: int = DEFAULT_MAX_SIDE, fast: bool = True, scene_negatives: int = 500,
         seed: int = 0, refine: bool = True, localiser: str = DEFAULT_LOCALISER,
         proposal_steps: int = PROPOSAL_STEPS, objectness_weight: float = OBJECTNESS_WEIGHT,
         category_weight: float = CATEGORY_WEIGHT, backdrop: str = DEFAULT_BACKDROP,
         look_head: bool = USE_LOOK_HEAD, segmenter_side: int | None = SEGMENTER_SIDE,
         look_ranker: bool = USE_LOOK_RANKER, **model_options: Any) -> dict[str, Any]:
    """Shop the look: the regions of a scene photo worth shopping, each with similar products.

    Regions are ranked by the shopper's model when ``history`` is given (``method``:
    ``centroid``, the default; ``knn-vote``; or ``latent-svm``, paper 000's eqs. 10-11), by
    cosine similarity to one catalogue product when ``like`` is given, otherwise by
    *product-likeness* (the segmenter's objectness; with ``localiser="windows"`` the best
    similarity to one of the catalogue's k-means centres).

    ``localiser``: ``segmenter`` (default), ``windows`` or ``both`` (see the module's docstring);
    ``proposal_steps`` box-regressor steps on the segmenter's boxes (with ``refine``) and
    ``objectness_weight`` x objectness added to the query's similarity; with ``like``,
    ``category_weight`` x the share of a region's nearest catalogue items that are of the like
    product's category is added too (0: similarity alone); ``backdrop="white"`` embeds the
    segmenter's regions with everything the segmenter does not call product faded to white
    (``"scene"``: as they are); ``look_head`` scores a ``like`` query under the packaged look
    head when it was trained for the index's embedder (False: the embedder's cosine);
    ``look_ranker`` ranks a ``like`` query's boxes by the packaged look ranker when it was
    fitted for that embedder and head (False, or no ranker: the sum above);
    ``segmenter_side`` is the longer side the segmenter reads the scene at (None: the side it was
    trained at). The
    windows are ``N`` px wide and ``aspect * N`` high for ``N`` in ``windows`` on a ``stride``
    grid, described by ``features`` in the fast pass (``None``: the index's embedder) and the
    ``rerank`` best checked with the index's embedder; ``refine`` applies the learned box
    regressor. The scene is scaled to at most ``max_side`` px; boxes are in the original
    photo's ``[x0, y0, x1, y1]`` pixels. Returns ``{"regions": [{"box", "score", "items"}, ...],
    "mode", "scene", "localiser", ...}``.
    """
    from lookalike.catalogue.images import as_image
    from lookalike.recommend.box_regression import box_regressor_for

    started = time.perf_counter()
    query = _check_query(project, history, like, k, method, index, features, localiser)
    image = scene_image if isinstance(scene_image, Image.Image) else as_image(scene_image)
    scene = prepare_scene(image, max_side=max_side)
    grids = window_grids(scene.height, scene.width, windows, stride, aspect)
    sample = _sample_boxes(grids, scene_negatives, seed)
    regressor = box_regressor_for(project) if refine else None
    options = {"method": method, "seed": seed, "fast": fast, "scene_negatives": scene_negatives,
               "windows": windows, "stride": stride, "top_regions": top_regions,
               "iou_threshold": iou_threshold, "aspect": aspect, "rerank": rerank,
               "steps": proposal_steps, "objectness_weight": float(objectness_weight),
               "category_weight": float(category_weight), "backdrop": _backdrop(backdrop),
               "look_head": bool(look_head), "segmenter_side": _side(segmenter_side),
               "look_ranker": bool(look_ranker)}
    regions: list[Region] = []
    used, box_scorer = "windows", None
    if localiser in ("segmenter", "both"):
        regions, box_scorer, scored = _segmenter_regions(project, query, scene, sample,
                                                         regressor, options, model_options)
        used = "segmenter" if scored is not None else "windows"
    if len(regions) < top_regions or localiser == "both":
        extra = _window_regions(project, query, scene, grids, sample, regressor, options,
                                model_options)
        if used == "segmenter":
            regions = _merged(regions, extra, box_scorer, top_regions, iou_threshold)
        else:
            regions = extra
    return _answer(project, query, scene, grids, regions, k, filters, used, regressor, options,
                   fast, started)


def _answer(project: Any, query: _Query, scene: PreparedScene, grids: list[WindowGrid],
            regions: list[Region], k: int, filters: Any, used: str, regressor: Any,
            options: dict[str, Any], fast: bool, started: float) -> dict[str, Any]:
    ids, like = query.ids, query.like
    out_regions = []
    if regions:
        vectors = np.stack([r.vector for r in regions])  # the checker's (index) vectors
        exclude = ids or ([like] if like else [])
        hits = query.loaded.index.search(vectors, k=k, filters=filters,
                                         exclude=[exclude] * len(regions))
        boxes = scene.to_original(np.stack([r.box for r in regions]))
        for region, box, found in zip(regions, boxes, hits):
            items = project.recommendations(found.ids, found.scores)
            out_regions.append({"box": [int(v) for v in box], "score": round(region.score, 6),
                                "items": [item.to_json() for item in items]})
    mode = "history" if ids is not None else "like" if like is not None else "product-likeness"
    return {
        "mode": mode, "method": options["method"] if ids is not None else None,
        "localiser": used, "features": query.screen.embedder.name,
        "checked_by": None if query.own else query.checker.embedder.name,
        "index": query.loaded.name,
        "scene": {"width": scene.original_size[0], "height": scene.original_size[1],
                  "working_scale": round(scene.scale, 6)},
        "windows": {"sizes": [[g.width, g.height] for g in grids], "stride": grids[0].stride,
                    "count": int(sum(len(g) for g in grids)), "rerank": options["rerank"],
                    "fast": fast and has_fast_windows(query.screen.embedder),
                    "boxes_refined": regressor is not None},
        "regions": out_regions,
        "seconds": round(time.perf_counter() - started, 4),
    }

