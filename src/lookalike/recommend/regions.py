"""Shop the look: find the regions of a scene photo a shopper cares about, and products for each.

Paper 000 (section III.C, Table 3, Fig. 7) slides square ``N x N`` windows (N = 20..100 px) over
a scene with a stride ``M < N``, describes every window with PHOG + colour + GIST features and
ranks the windows with the shopper's model. Windows here are ``N`` wide and ``aspect x N`` high
(default 3:4, the catalogue photos' shape; ``aspect=1`` is the paper's squares).
Every window's features are computed **once per scene** and pooled per window
(:mod:`lookalike.recommend.windows`, which this module re-exports for callers of the window
functions).

Scores of all windows go through vectorised non-maximum suppression (:func:`nms`). By default
the best windows are then re-scored from their crops (a cascade, :func:`rerank_windows`,
optionally by another embedder such as the CNN), and the best ``top_regions`` are returned with
the catalogue products most similar to each (:func:`look`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from lookalike.caches import ProjectCaches
from lookalike.errors import LookalikeError
from lookalike.models.base import Embedder, l2_normalise
from lookalike.recommend.feature_maps import (  # noqa: F401 - also re-exported from here
    EfficientNetMaps,
    FeatureMapWindows,
    FusionWindows,
    has_fast_windows,
    naive_window_features,
    windowed_features,
)
from lookalike.recommend.window_features import (  # noqa: F401 - also re-exported from here
    ColourWindows,
    CropWindows,
    GISTWindows,
    HSVHistogramAdapter,
    PHOGWindows,
    WindowFeatures,
)
from lookalike.recommend.windows import (  # noqa: F401 - also re-exported from here
    DEFAULT_MAX_SIDE,
    DEFAULT_WINDOWS,
    SCORING_THREADS,
    PreparedScene,
    SceneError,
    WindowGrid,
    box_iou,
    nms,
    prepare_scene,
    window_grids,
)


# ---- ranking regions ----------------------------------------------------------------------------
@dataclass
class Region:
    """One region of a scene: its box (working coordinates), score and feature vector."""

    box: np.ndarray
    score: float
    vector: np.ndarray = field(repr=False)


#: Windows are pooled and scored in bands of about this many feature floats (4 MB), so the
#: temporaries of one band stay in the CPU caches and memory stays flat for any scene.
BAND_FLOATS = 1 << 20


def grid_bands(grid: WindowGrid, dim: int, band_floats: int = BAND_FLOATS) -> list[WindowGrid]:
    """``grid`` cut into horizontal bands of whole window rows, each about ``band_floats``
    feature floats (at least one row of windows)."""
    rows = max(1, band_floats // max(1, len(grid.xs) * dim))
    return [WindowGrid(grid.width, grid.height, grid.stride, grid.ys[start:start + rows],
                       grid.xs) for start in range(0, len(grid.ys), rows)]


def score_windows(features: WindowFeatures, grids: Iterable[WindowGrid],
                  scorer: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Score every window of every grid; returns ``(boxes [n, 4], scores [n])``.

    Features are pooled and scored one band of window rows at a time (:func:`grid_bands`) and
    then dropped, so memory stays at one band's ``windows x dim`` floats however big the scene.
    """
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    grids = list(grids)
    if not grids:
        return np.zeros((0, 4), dtype=np.int64), np.zeros(0)
    dim = features.embedder.dim
    bands = [band for grid in grids for band in grid_bands(grid, dim, BAND_FLOATS)]

    def score(band: WindowGrid) -> np.ndarray:
        return np.asarray(scorer(features.for_grid(band)), dtype=np.float64).ravel()

    # Bands are independent and numpy releases the GIL in the pooling arithmetic, so
    # SCORING_THREADS threads each take bands (in order). One BLAS thread each: the bands are
    # small (4 MB), and OpenBLAS's own threads spinning between the many small products fought
    # the ONNX Runtime / PyTorch threads for the two cores, making the CNN pass several times
    # slower on a busy machine (benchmarks/RESULTS.md#shop-the-look).
    with threadpool_limits(limits=1, user_api="blas"):
        if SCORING_THREADS > 1 and len(bands) > 1:
            with ThreadPoolExecutor(SCORING_THREADS) as pool:
                all_scores = list(pool.map(score, bands))
        else:
            all_scores = [score(band) for band in bands]
    return np.concatenate([grid.boxes() for grid in grids]), np.concatenate(all_scores)


#: Windows of the fast pass re-scored exactly by default (see :func:`find_regions`).
DEFAULT_RERANK = 50
#: Windows of the scene added as negatives when a latent SVM is fitted for shop-the-look.
SCENE_NEGATIVES = 500
#: Default window shape, height / width: the catalogue photos' 3:4 (60 x 80 px). On the scene
#: benchmark 3:4 windows found the product far more often than paper 000's squares.
DEFAULT_ASPECT = 4 / 3


def grid_block(grids: Sequence[WindowGrid]) -> int:
    """The largest pixel block every window corner and side of these grids is a multiple of."""
    return math.gcd(grids[0].stride, *[g.width for g in grids], *[g.height for g in grids])


def refine_boxes(box: np.ndarray, width: int, height: int, step: float = 0.125,
                 scales: Sequence[float] = (0.85, 1.0, 1.15)) -> np.ndarray:
    """Boxes around ``box``: shifted by -1, 0, +1 ``step`` of its size in x and y, and scaled
    by ``scales`` about its centre (aspect kept), clipped to the ``width x height`` scene;
    unique, the original first."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    out = [np.asarray(box, dtype=np.int64)]
    for scale in scales:
        sw, sh = w * scale, h * scale
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                cx, cy = (x0 + x1) / 2 + dx * step * w, (y0 + y1) / 2 + dy * step * h
                left = min(max(0.0, cx - sw / 2), max(0.0, width - sw))
                top = min(max(0.0, cy - sh / 2), max(0.0, height - sh))
                out.append(np.round([left, top, min(width, left + sw),
                                     min(height, top + sh)]).astype(np.int64))
    boxes = np.stack(out)
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def rerank_windows(boxes: np.ndarray, scores: np.ndarray, pixels: np.ndarray,
                   embedder: Embedder, scorer: Callable[[np.ndarray], np.ndarray], *,
                   rerank: int = DEFAULT_RERANK, top_regions: int = 5,
                   iou_threshold: float = 0.3, refine: int = 0,
                   box_regressor: Any = None) -> list[Region]:
    """The cascade's second stage: crop, embed and re-score a shortlist of scored windows.

    The shortlist is the ``rerank`` best windows after a loose NMS (IoU 0.7, so they are not all
    shifts of one window) plus the ``top_regions`` windows a plain NMS would return (so the
    final NMS can always return ``top_regions`` regions). With ``refine > 0`` the ``refine``
    best re-scored windows are then nudged (:func:`refine_boxes`: shifts of 1/8 of their size
    and 0.85x / 1.15x scales, off the stride grid) and each keeps its best-scoring variant.

    With a ``box_regressor`` (:class:`~lookalike.recommend.box_regression.BoxRegressor`) every
    shortlisted window is first moved onto the object in it (one step), so the check compares
    well-framed crops, and the returned regions get two more steps (their vectors are then
    those of the final crops; their scores the check scores that ranked them). Crop similarity
    says *which* product; the regressor says *where* its edges are.
    """
    shortlist = np.unique(np.concatenate([
        nms(boxes, scores, 0.7, max_keep=rerank),
        nms(boxes, scores, iou_threshold, max_keep=top_regions)]))
    boxes = unmoved = boxes[shortlist]
    if box_regressor is not None:
        boxes = box_regressor.refine(pixels, boxes, steps=1)
    crops = CropWindows(embedder, pixels)
    vectors = crops.for_boxes(boxes)
    exact = np.asarray(scorer(vectors), dtype=np.float64).ravel()
    if refine > 0:
        height, width = pixels.shape[:2]
        for i in nms(boxes, exact, iou_threshold, max_keep=refine):
            variants = refine_boxes(boxes[i], width, height)[1:]
            if not len(variants):
                continue
            found = crops.for_boxes(variants)
            found_scores = np.asarray(scorer(found), dtype=np.float64).ravel()
            best = int(np.argmax(found_scores))
            if found_scores[best] > exact[i]:
                boxes[i], vectors[i], exact[i] = variants[best], found[best], found_scores[best]
    if box_regressor is not None:
        keep = nms(boxes, exact, iou_threshold, max_keep=top_regions + SPARE_REGIONS)
        return _regress_regions(boxes[keep], exact[keep], pixels, box_regressor, crops,
                                lambda v: np.asarray(scorer(v), dtype=np.float64).ravel(),
                                iou_threshold, top_regions,
                                unmoved[nms(unmoved, scores[shortlist], iou_threshold)])
    keep = nms(boxes, exact, iou_threshold, max_keep=top_regions)
    return [Region(boxes[i], float(exact[i]), vectors[i]) for i in keep]


#: Extra candidates moved by the box regressor: two regions may land on the same product.
SPARE_REGIONS = 5


def _regress_regions(boxes: np.ndarray, scores: np.ndarray, pixels: np.ndarray,
                     box_regressor: Any, features: WindowFeatures,
                     scorer: Callable[[np.ndarray], np.ndarray], iou_threshold: float,
                     top_regions: int, fallback: np.ndarray) -> list[Region]:
    """The ``top_regions`` final regions from ``boxes`` (best ``scores`` first), each moved by
    two regressor steps and described again (the vector of the final crop; the score that
    ranked it). A region that lands on one already kept (IoU above ``iou_threshold``) is
    dropped; when the regressor pulled several windows onto one product, the rest are filled
    from ``fallback`` (unmoved windows, best first, scored by ``scorer``) that overlap none."""
    out: list[Region] = []

    def add(candidates: np.ndarray, ranking: np.ndarray | None) -> None:
        vectors = features.for_boxes(candidates)
        ranking = scorer(vectors) if ranking is None else ranking
        for box, score, vector in zip(candidates, ranking, vectors):
            if len(out) == top_regions:
                return
            if not out or box_iou(box, np.stack([r.box for r in out])).max() <= iou_threshold:
                out.append(Region(box, float(score), vector))

    add(box_regressor.refine(pixels, boxes, steps=2), scores)
    if len(out) < top_regions and len(fallback):
        add(fallback, None)
    return sorted(out, key=lambda region: -region.score)


def find_regions(embedder: Embedder, scene: PreparedScene,
                 scorer: Callable[[np.ndarray], np.ndarray], *,
                 windows: Sequence[int] = DEFAULT_WINDOWS, stride: int | None = None,
                 top_regions: int = 5, iou_threshold: float = 0.3,
                 aspect: float = DEFAULT_ASPECT, rerank: int = DEFAULT_RERANK,
                 verifier: tuple[Embedder, Callable[[np.ndarray], np.ndarray]] | None = None,
                 fast: bool = True, features: WindowFeatures | None = None,
                 box_regressor: Any = None) -> list[Region]:
    """The ``top_regions`` best windows of a scene after NMS, with their feature vectors.

    ``scorer`` maps unit-length window features ``[n, dim]`` to scores ``[n]`` (higher is
    better): similarity to a product, a shopper's linear model, product-likeness...

    With ``rerank > 0`` this is a cascade (:func:`rerank_windows`): the ``rerank`` best windows
    of the fast pass are cropped and embedded
    exactly as catalogue photos are, and re-scored -- by ``verifier = (embedder, scorer)`` when
    given (e.g. the CNN after a handcrafted fast pass), else by the same embedder and scorer.
    The returned vectors are then the verifier's. The fast pass handles the ~10^5 windows; the
    exact price is paid for a few dozen. ``features`` may be given when already built for this
    scene (block: :func:`grid_block`). ``box_regressor`` moves the windows onto the objects in
    them (see :func:`rerank_windows`).
    """
    if top_regions < 1:
        raise SceneError(f"top_regions must be at least 1, got {top_regions}")
    grids = window_grids(scene.height, scene.width, windows, stride, aspect)
    if features is None:
        features = windowed_features(embedder, scene.pixels, grid_block(grids), fast=fast)
    boxes, scores = score_windows(features, grids, scorer)
    if rerank > 0 or verifier is not None:
        exact_embedder, exact_scorer = verifier or (embedder, scorer)
        return rerank_windows(boxes, scores, scene.pixels, exact_embedder, exact_scorer,
                              rerank=rerank, top_regions=top_regions,
                              iou_threshold=iou_threshold, box_regressor=box_regressor)
    spare = SPARE_REGIONS if box_regressor is not None else 0
    keep = nms(boxes, scores, iou_threshold, max_keep=top_regions + spare)
    if not len(keep):
        return []
    if box_regressor is not None:
        return _regress_regions(boxes[keep], scores[keep], scene.pixels, box_regressor,
                                features, scorer, iou_threshold, top_regions, boxes[keep])
    vectors = features.for_boxes(boxes[keep])
    return [Region(boxes[i], float(scores[i]), vectors[n]) for n, i in enumerate(keep)]


def proposal_regions(boxes: np.ndarray, pixels: np.ndarray, embedder: Embedder,
                     box_scorer: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                     top_regions: int = 5, iou_threshold: float = 0.3,
                     box_regressor: Any = None, steps: int = 0,
                     embed_pixels: np.ndarray | None = None) -> list[Region]:
    """Regions from a localiser's proposals (``boxes`` ``[n, 4]`` in ``pixels``' coordinates,
    e.g. :meth:`~lookalike.recommend.segmenter.SceneSegmenter.proposals`), checked like the
    window cascade's shortlist: each box is cropped and embedded with ``embedder``, scored by
    ``box_scorer(boxes, vectors)`` (e.g. the query's similarity plus objectness, or the look
    ranker, :mod:`lookalike.recommend.look_ranker`), then the best ``top_regions`` after NMS.
    With a ``box_regressor`` the boxes first get ``steps`` steps of it. ``embed_pixels`` (same
    size as ``pixels``, e.g. the backdrop faded to white) are what the crops are cut from."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if not len(boxes):
        return []
    if box_regressor is not None and steps > 0:
        boxes = box_regressor.refine(pixels, boxes, steps=steps)
    vectors = CropWindows(embedder, pixels if embed_pixels is None else embed_pixels
                          ).for_boxes(boxes)
    scores = np.asarray(box_scorer(boxes, vectors), dtype=np.float64).ravel()
    keep = nms(boxes, scores, iou_threshold, max_keep=top_regions)
    return [Region(boxes[i], float(scores[i]), vectors[i]) for i in keep]
