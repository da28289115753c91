"""Personalised picks from a shopper's history of viewed items.

Three ways to turn a history into a ranking of the catalogue, all in the vector space of a
project's index (so they work with any embedder, including fusions of handcrafted features):

``centroid``
    the mean of the history's vectors is the query (one index search).
``knn-vote``
    every history item's nearest neighbours vote with their cosine similarity; votes are summed.
``latent-svm``
    paper 000's model (eqs. 9-13): a linear SVM separates the history (positives) from items
    sampled from the catalogue (negatives, seeded). The latent variable is the *region* of each
    history image that carries the interest: every image is a bag of instances (the whole image
    plus square sub-windows, described with the same fast windowed features as shop-the-look),
    and multiple-instance learning alternates (1) fitting ``sklearn.svm.LinearSVC`` on the chosen
    positive instances against every instance of the negative images and (2) re-choosing, per
    history image, its best-scoring window -- ``f_w(x) = max_a w . phi(x, a)`` (eq. 12) -- until
    the choices stop changing. Catalogue items are then scored by the SVM on their **whole
    image**: that score is ``w . x + b`` with ``x`` the item's indexed vector, so the ranking is
    exactly an index search with ``w / |w|`` as the query (filters and exclusions apply inside
    the search, and it scales like any other query). Scoring every item's windows would need
    window features of the whole catalogue at query time; windows are used where they matter --
    to learn ``w`` from the right part of each history photo, and in shop-the-look, which scores
    the windows of a scene (eqs. 10-11).

Seen items are never returned, filters apply inside the index search, and ``diversity > 0``
re-ranks a larger candidate list with maximal marginal relevance (MMR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lookalike.caches import ProjectCaches
from lookalike.errors import LookalikeError, UnknownItemError, UnknownNameError
from lookalike.index.base import Filters
from lookalike.models.base import l2_normalise
from lookalike.recommend.contract import Recommender
from lookalike.recommend.results import Recommendation

#: A :class:`lookalike.project.Project` (not imported: project.py calls this module, so the
#: dependency points one way).
Project = Any

METHODS = ("centroid", "knn-vote", "latent-svm")
#: Latent windows of a history/negative photo: square sides as fractions of its shorter side,
#: each on a grid with half-window steps (plus the whole photo).
LATENT_WINDOW_FRACTIONS = (0.5, 0.75)
#: The SVM's C. Features are unit vectors whose classes differ by small margins, so a weakly
#: regularised SVM fits better: on planted-region scenes C = 10 picked the right window in 9 of 12
#: positives against 4 of 12 with C = 1 (and 3 with C = 0.1).
DEFAULT_C = 10.0
#: Photos are scaled to at most this many pixels on the longer side before their windows are
#: described (catalogue photos are ~60 x 80 already).
LATENT_MAX_SIDE = 128


# ---- history parsing ----------------------------------------------------------------------------
def parse_history(history: str | Sequence[Any] | None) -> list[str]:
    """Item ids from a list or a comma/space-separated string: stripped, de-duplicated (first
    occurrence kept, order kept). An empty history is a clear error."""
    if history is None:
        raw: list[Any] = []
    elif isinstance(history, str):
        raw = history.replace(",", " ").split()
    else:
        raw = list(history)
    ids = [str(i).strip() for i in raw if i is not None and str(i).strip()]
    if not ids:
        raise LookalikeError("the history is empty: give at least one item id the shopper viewed")
    return list(dict.fromkeys(ids))


def check_history(project: "Project", history: Sequence[str], index: str | None = None) -> None:
    """Raise :class:`UnknownItemError` naming every history id the index does not hold."""
    loaded = project.searcher(index)
    unknown = [i for i in history if i not in loaded.hashes]
    if unknown:
        in_store = [i for i in unknown if i in project.store]
        shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        hint = ("; some are in the catalogue but not indexed yet: run `lookalike index`"
                if in_store else "")
        raise UnknownItemError(f"unknown item id(s) in the history: {shown} "
                               f"({len(unknown)} of {len(history)}){hint}")


# ---- shopper models -----------------------------------------------------------------------------
@dataclass
class ShopperModel(Recommender):
    """A linear scorer ``score(x) = x . w + b`` over unit-length vectors of one embedder.

    ``centroid`` gives ``w`` = the history's mean vector; ``latent-svm`` the SVM's weights;
    ``knn-vote`` keeps the history vectors and scores a vector by its best similarity to them.
    A :class:`~lookalike.recommend.contract.Recommender`: ``ShopperModel("centroid").fit(rows)``.
    """

    method: str
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    bias: float = 0.0
    history_vectors: np.ndarray | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def fit(self, vectors: np.ndarray, labels: Sequence[Any] | None = None) -> "ShopperModel":
        """Learn from a history's rows: ``labels`` 1 = viewed, 0 = a negative (None: all
        viewed). centroid and knn-vote use the viewed rows; latent-svm also needs negatives
        (one instance per photo here; :func:`fit_latent_svm` takes windows)."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        marks = np.ones(len(vectors)) if labels is None else np.asarray(labels)
        viewed = vectors[marks == 1]
        if not len(viewed):
            raise LookalikeError("a shopper model needs at least one viewed item")
        _check_method(self.method)
        self.history_vectors = viewed
        if self.method == "latent-svm":
            fitted = fit_latent_svm([row[None, :] for row in viewed], vectors[marks == 0])
            self.weights, self.bias, self.info = fitted.weights, fitted.bias, fitted.info
        else:
            self.weights, self.bias = l2_normalise(viewed.mean(axis=0, keepdims=True))[0], 0.0
        return self

    def score(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.method == "knn-vote" and self.history_vectors is not None:
            return (vectors @ self.history_vectors.T).max(axis=1)
        return vectors @ self.weights + self.bias

    @property
    def query(self) -> np.ndarray:
        """A unit query vector whose cosine ranks items as :meth:`score` does (linear models)."""
        return l2_normalise(self.weights[None, :])[0]


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise UnknownNameError(f"unknown recommendation method {method!r}; "
                               f"available: {', '.join(METHODS)}")
    return method


def latent_window_boxes(width: int, height: int,
                        fractions: Sequence[float] = LATENT_WINDOW_FRACTIONS) -> list[np.ndarray]:
    """Square sub-windows of a ``width x height`` photo, grouped per size, as ``[n, 4]`` boxes."""
    groups = []
    for fraction in fractions:
        size = max(4, int(round(fraction * min(width, height))))
        step = max(1, size // 2)
        ys = np.arange(0, height - size + 1, step)
        xs = np.arange(0, width - size + 1, step)
        gy, gx = np.meshgrid(ys, xs, indexing="ij")
        gy, gx = gy.ravel(), gx.ravel()
        groups.append(np.stack([gx, gy, gx + size, gy + size], axis=1))
    return groups


def image_instances(embedder: Any, image: Any, whole: np.ndarray | None = None, *,
                    caches: ProjectCaches | None = None) -> np.ndarray:
    """The bag of one photo: its whole-image vector first, then its latent windows' vectors
    (``caches``: a project's, for what window features share between photos)."""
    from lookalike.recommend.feature_maps import windowed_features
    from lookalike.recommend.windows import prepare_scene

    scene = prepare_scene(image, max_side=LATENT_MAX_SIDE)
    if whole is None:
        whole = embedder.embed([image])[0]
    features = windowed_features(embedder, scene.pixels, block=1, caches=caches)
    parts = [np.asarray(whole, dtype=np.float32)[None, :]]
    for boxes in latent_window_boxes(scene.width, scene.height):
        parts.append(features.for_boxes(boxes))
    return np.concatenate(parts, axis=0)


class InstanceCache:
    """Bags of instances by item id, so repeated fits (evaluations, the service) reuse them.

    The project keeps one per index version (:func:`instance_cache`), bounded to
    ``max_items`` bags (~15 x dim floats each), oldest dropped first.
    """

    def __init__(self, max_items: int = 5000) -> None:
        import threading

        self._bags: dict[str, np.ndarray] = {}
        self.max_items = max_items
        self._lock = threading.Lock()  # the service calls from several threads

    def bags(self, project: "Project", ids: Sequence[str], index: str | None = None) -> list[np.ndarray]:
        loaded = project.searcher(index)
        missing = [i for i in ids if i not in self._bags]
        if missing:
            wholes = loaded.vectors_of(missing, project.store)
            fresh = {item_id: image_instances(loaded.embedder, project.store.open_image(item_id),
                                              whole, caches=project.caches)
                     for item_id, whole in zip(missing, wholes)}
            with self._lock:
                self._bags.update(fresh)
        with self._lock:
            bags = [self._bags[i] for i in ids]
            while len(self._bags) > self.max_items:
                self._bags.pop(next(iter(self._bags)))
        return bags


def instance_cache(project: "Project", index: str | None = None) -> InstanceCache:
    """The in-memory :class:`InstanceCache` of an index version (a new version starts empty),
    kept in ``project.caches`` (the last 4 versions)."""
    key = str(project.searcher(index).folder)
    return project.caches.instance_caches.get_or_make(key, InstanceCache)


def fit_latent_svm(positive_bags: Sequence[np.ndarray], negatives: np.ndarray, *,
                   C: float = DEFAULT_C,
                   iterations: int = 5, seed: int = 0, start: str = "first") -> ShopperModel:
    """Multiple-instance linear SVM (MI-SVM): alternate SVM fits and best-window choices.

    ``positive_bags[i]`` holds the instances of history photo ``i``; ``negatives`` every
    instance of the negative photos. The first witness of each bag is its row 0
    (``start="first"``: the whole photo) or, for bags with no natural first instance such as the
    windows of a scene, the instance chosen by diverse density (``start="density"``): the one
    closest to some instance of *every other* positive bag and far from all negatives
    (:func:`density_witnesses`).
    """
    from sklearn.svm import LinearSVC

    if not positive_bags:
        raise LookalikeError("latent-svm needs at least one history item")
    if len(negatives) == 0:
        raise LookalikeError("latent-svm needs negative items; the catalogue is too small")
    if start not in ("first", "density"):
        raise LookalikeError(f"start must be 'first' or 'density', got {start!r}")
    choices = ([0] * len(positive_bags) if start == "first"
               else density_witnesses(positive_bags, negatives))
    history_of_choices = []
    svm = None
    for iteration in range(1, max(1, iterations) + 1):
        positives = np.stack([bag[c] for bag, c in zip(positive_bags, choices)])
        features = np.concatenate([positives, negatives]).astype(np.float64)
        labels = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
        svm = LinearSVC(C=C, class_weight="balanced", random_state=seed, max_iter=5000)
        svm.fit(features, labels)
        weights = svm.coef_[0]
        new = [int(np.argmax(bag @ weights)) for bag in positive_bags]
        history_of_choices.append(sum(c != 0 for c in new))
        if new == choices:
            break
        choices = new
    assert svm is not None
    return ShopperModel("latent-svm", svm.coef_[0].astype(np.float32), float(svm.intercept_[0]),
                        info={"iterations": iteration, "windows_chosen": choices,
                              "sub_windows_per_iteration": history_of_choices,
                              "positives": len(positive_bags), "negative_instances": len(negatives)})


def density_witnesses(positive_bags: Sequence[np.ndarray], negatives: np.ndarray,
                      block: int = 4096) -> list[int]:
    """Per positive bag, the instance that best fits "in every positive bag, in no negative":
    mean over the *other* positive bags of its best cosine with their instances, minus its best
    cosine with any negative instance (a one-step diverse-density estimate). With one bag only
    the negative term counts."""
    negatives = np.asarray(negatives, dtype=np.float32)
    picks = []
    for i, bag in enumerate(positive_bags):
        bag = np.asarray(bag, dtype=np.float32)
        others = [b for j, b in enumerate(positive_bags) if j != i]
        shared = (np.mean([(bag @ np.asarray(b, np.float32).T).max(axis=1) for b in others],
                          axis=0) if others else np.zeros(len(bag)))
        nearest_negative = np.full(len(bag), -np.inf, dtype=np.float32)
        for start in range(0, len(negatives), block):  # bounded memory for many negatives
            chunk = negatives[start:start + block]
            nearest_negative = np.maximum(nearest_negative, (bag @ chunk.T).max(axis=1))
        picks.append(int(np.argmax(shared - nearest_negative)))
    return picks


def fit_shopper_model(project: "Project", history: str | Sequence[str], method: str = "latent-svm",
                      *, index: str | None = None, negatives: int = 100, C: float = DEFAULT_C,
                      iterations: int = 5, seed: int = 0,
                      cache: InstanceCache | None = None,
                      extra_negatives: np.ndarray | None = None) -> ShopperModel:
    """A shopper's linear model from their history (used by :func:`recommend` and ``look``).

    ``negatives`` catalogue items (seeded sample, history excluded) are the latent SVM's negative
    photos; ``cache`` keeps photos' instance bags between calls (default: the index version's
    shared cache, so the negatives' windows are described once per process);
    ``extra_negatives`` are more negative instances (shop-the-look adds windows of the scene).
    """
    _check_method(method)
    ids = parse_history(history)
    check_history(project, ids, index)
    loaded = project.searcher(index)
    vectors = loaded.vectors_of(ids, project.store)
    if method in ("centroid", "knn-vote"):
        return ShopperModel(method).fit(vectors)
    cache = cache if cache is not None else instance_cache(project, index)
    seen = set(ids)
    pool = [i for i in loaded.hashes if i not in seen]
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pool), size=min(negatives, len(pool)), replace=False) if pool else []
    negative_ids = [pool[i] for i in sorted(picks)]
    positive_bags = cache.bags(project, ids, index)
    negative_bags = cache.bags(project, negative_ids, index)
    negative_instances = (np.concatenate(negative_bags) if negative_bags
                          else np.zeros((0, vectors.shape[1]), np.float32))
    if extra_negatives is not None and len(extra_negatives):
        negative_instances = np.concatenate([negative_instances,
                                             np.asarray(extra_negatives, np.float32)])
    model = fit_latent_svm(positive_bags, negative_instances, C=C, iterations=iterations,
                           seed=seed)
    model.history_vectors = vectors
    return model


# ---- recommending -------------------------------------------------------------------------------
def recommend(project: "Project", history: str | Sequence[str], k: int = 10,
              method: str = "centroid", filters: Filters | None = None, diversity: float = 0.0,
              *, index: str | None = None, seed: int = 0, candidates: int | None = None,
              **model_options: Any) -> list[Recommendation]:
    """The ``k`` catalogue items a shopper with this ``history`` is most likely to want.

    ``method`` is ``centroid``, ``knn-vote`` or ``latent-svm`` (options for the latter:
    ``negatives``, ``C``, ``iterations``, ``cache``). History items are never returned; unknown
    ids raise :class:`UnknownItemError` naming them. ``diversity`` in [0, 1] trades relevance
    for variety (MMR over ``candidates`` items, default ``max(5k, 50)``).
    """
    _check_method(method)
    if k < 1:
        raise LookalikeError(f"k must be at least 1, got {k}")
    if not 0.0 <= float(diversity) <= 1.0:
        raise LookalikeError(f"diversity must be between 0 and 1, got {diversity}")
    ids = parse_history(history)
    check_history(project, ids, index)
    loaded = project.searcher(index)
    depth = k if diversity <= 0 else (candidates or max(5 * k, 50))
    if method == "knn-vote":
        ranked_ids, ranked_scores = _knn_vote(loaded, project, ids, depth, filters)
    else:
        model = fit_shopper_model(project, ids, method, index=index, seed=seed, **model_options)
        hits = loaded.index.search(model.query[None, :], k=depth, filters=filters,
                                   exclude=[ids])[0]
        norm = float(np.linalg.norm(model.weights)) or 1.0
        ranked_ids = list(hits.ids)
        # Report the model's own score (w . x + b) rather than the cosine with w/|w|.
        ranked_scores = [s * norm + model.bias for s in hits.scores]
    if diversity > 0 and len(ranked_ids) > k:
        order = mmr(loaded.vectors_of(ranked_ids, project.store), np.asarray(ranked_scores),
                    k, diversity)
        ranked_ids = [ranked_ids[i] for i in order]
        ranked_scores = [ranked_scores[i] for i in order]
    return project.recommendations(ranked_ids[:k], ranked_scores[:k])


def _knn_vote(loaded: Any, project: "Project", ids: list[str], depth: int,
              filters: Filters | None) -> tuple[list[str], list[float]]:
    """Sum of cosine similarities over the history items' neighbour lists."""
    vectors = loaded.vectors_of(ids, project.store)
    per_item = max(depth, 20)
    votes: dict[str, float] = {}
    for hits in loaded.index.search(vectors, k=per_item, filters=filters,
                                    exclude=[ids] * len(ids)):
        for item_id, score in zip(hits.ids, hits.scores):
            votes[item_id] = votes.get(item_id, 0.0) + float(score)
    ranked = sorted(votes.items(), key=lambda pair: (-pair[1], pair[0]))[:depth]
    return [i for i, _ in ranked], [s for _, s in ranked]


def mmr(vectors: np.ndarray, relevance: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: greedily pick ``argmax (1-d) rel_i - d max_j sim(i, j)``.

    ``relevance`` is rescaled to [0, 1] over the candidates so it is comparable to cosine
    similarity whatever the method's score scale. Returns candidate positions, best first.
    """
    relevance = np.asarray(relevance, dtype=np.float64)
    span = relevance.max() - relevance.min()
    rel = (relevance - relevance.min()) / span if span > 0 else np.ones_like(relevance)
    vectors = l2_normalise(vectors)
    chosen: list[int] = []
    closest = np.full(len(rel), -np.inf)
    available = np.ones(len(rel), dtype=bool)
    for _ in range(min(k, len(rel))):
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        value = (1 - diversity) * rel - diversity * penalty
        value[~available] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        available[best] = False
        closest = np.maximum(closest, vectors @ vectors[best])
    return chosen


# ---- thin entry points for Project ------------------------------------------------------------
def project_recommend(project: "Project", history: str | Sequence[str], k: int = 10,
                      method: str = "centroid", filters: Filters | None = None,
                      diversity: float = 0.0, *, index: str | None = None,
                      **options: Any) -> list[Recommendation]:
    """``Project.recommend``: see :func:`recommend`."""
    return recommend(project, history, k, method, filters, diversity, index=index, **options)
