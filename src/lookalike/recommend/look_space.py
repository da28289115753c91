"""The vector space a shop-the-look query is scored in: an index's (its stored vectors) or a
registry embedder's (catalogue photos embedded on the fly), and the window scorer of each kind of
query (a ``like`` product, a history, or product-likeness)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lookalike.caches import ProjectCaches
from lookalike.models.base import Embedder, l2_normalise

#: Catalogue prototypes (k-means centres) for product-likeness.
PROTOTYPES = 32
#: Catalogue photos whose windows are the latent SVM's negatives in shop-the-look.
LOOK_NEGATIVES = 60
#: Category vote: a region's nearest catalogue neighbours and the softmax temperature of their
#: similarities (chosen on the validation split of generated scenes).
VOTE_NEIGHBOURS = 10
VOTE_TEMPERATURE = 0.05


class QuerySpace:
    """One vector space windows are scored in: an index's (its stored vectors) or a registry
    embedder's (catalogue photos embedded on the fly, only the few a query needs). Photos'
    window bags and catalogue prototypes are kept in the project's caches."""

    def __init__(self, project: Any, loaded: Any, embedder: Embedder | None = None) -> None:
        self.project, self.loaded = project, loaded
        self.caches: ProjectCaches = project.caches
        self.embedder = embedder or loaded.embedder
        self.is_index = embedder is None

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        if self.is_index:
            return self.loaded.vectors_of(list(ids), self.project.store)
        return self.embedder.embed(self.project.store.open_image(i) for i in ids)

    def bags(self, ids: Sequence[str]) -> list[np.ndarray]:
        from lookalike.recommend.personal import image_instances

        out = []
        for item_id in ids:
            key = (self.embedder.embedder_id, item_id)
            bag = self.caches.look_bags.get(key)
            if bag is None:
                whole = self.vectors([item_id])[0]
                bag = self.caches.look_bags.put(key, image_instances(
                    self.embedder, self.project.store.open_image(item_id), whole,
                    caches=self.caches))
            out.append(bag)
        return out

    def prototypes(self, seed: int, sample: int = 4000) -> np.ndarray:
        """Unit k-means centres of a sample of the catalogue (fewer photos when embedded on the
        fly), cached per index version and embedder."""
        key = f"{self.loaded.folder}:{self.embedder.embedder_id}:{seed}"
        found = self.caches.prototypes.get(key)
        if found is None:
            from sklearn.cluster import KMeans

            ids = sorted(self.loaded.hashes)
            size = sample if self.is_index else min(sample, 600)
            if len(ids) > size:
                rng = np.random.default_rng(seed)
                ids = [ids[i] for i in sorted(rng.choice(len(ids), size, replace=False))]
            vectors = self.vectors(ids)
            centres = KMeans(n_clusters=min(PROTOTYPES, len(vectors)), n_init=1,
                             random_state=seed).fit(vectors).cluster_centers_
            found = self.caches.prototypes.put(key, l2_normalise(centres))
        return found

    def scorer(self, history: list[str] | None, like: str | None, method: str, seed: int,
               scene_windows: Callable[[], np.ndarray], negatives: int = LOOK_NEGATIVES,
               C: float | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """The window scorer of a query in this space.

        For the latent SVM, ``scene_windows()`` describes a sample of the scene's windows: the
        model learns from catalogue photos, which never show a background, so the scene's own
        windows (nearly all of which are not what the shopper wants) are negatives too.
        """
        from lookalike.recommend.personal import DEFAULT_C, fit_latent_svm

        if like is not None:
            target = self.vectors([like])[0]
            return lambda v: v @ target
        if history is None:
            prototypes = self.prototypes(seed)
            return lambda v: (v @ prototypes.T).max(axis=1)
        if method == "centroid":
            centre = l2_normalise(self.vectors(history).mean(axis=0, keepdims=True))[0]
            return lambda v: v @ centre
        if method == "knn-vote":
            seen = self.vectors(history)
            return lambda v: (v @ seen.T).max(axis=1)
        pool = sorted(set(self.loaded.hashes) - set(history))
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(pool), size=min(negatives, len(pool)), replace=False)
        negative = np.concatenate(self.bags([pool[i] for i in sorted(picks)]) + [scene_windows()])
        model = fit_latent_svm(self.bags(history), negative,
                               C=DEFAULT_C if C is None else C, seed=seed)
        return model.score


def category_vote(project: Any, loaded: Any, like: str, neighbours: int = VOTE_NEIGHBOURS,
                  temperature: float = VOTE_TEMPERATURE
                  ) -> Callable[[np.ndarray], np.ndarray] | None:
    """How much each region (index vectors ``[n, dim]``) looks like the ``like`` product's
    *category*: the share of its ``neighbours`` nearest catalogue items (searched in the index,
    weighted by a softmax of their similarities) whose category is the like's, in ``[0, 1]``.
    A different photo of the same kind of product is often not the region nearest to the like
    photo itself, while its catalogue neighbours still agree on what it is. None when the like
    product has no category."""
    category = project.store.get(like).category
    if not category:
        return None

    def vote(vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, np.float32)
        if not len(vectors):
            return np.zeros(0)
        hits = loaded.index.search(vectors, k=neighbours)
        found = sorted({i for h in hits for i in h.ids})
        categories = {item.id: item.category for item in project.store.items(found)}
        out = np.zeros(len(vectors))
        for row, h in enumerate(hits):
            if not len(h):
                continue
            weights = np.exp((np.asarray(h.scores, np.float64) - max(h.scores)) / temperature)
            same = np.array([categories.get(i) == category for i in h.ids], np.float64)
            out[row] = float((weights * same).sum() / weights.sum())
        return out

    return vote


def screen_embedder(name: str, caches: ProjectCaches) -> Embedder:
    """A registry embedder for the fast pass, built once per project (filter banks, networks)."""
    from lookalike.models.base import create

    return caches.screen_embedders.get_or_make(name, lambda: create(name))
