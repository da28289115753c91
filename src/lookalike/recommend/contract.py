"""The recommenders' one contract, as in cornac: ``fit``, ``score``, ``rank``.

Every recommender works on unit float32 rows of one embedder:

- ``fit(vectors, labels=None)`` learns from rows (with labels where it is supervised) and
  returns itself;
- ``score(vectors)`` gives each candidate row one number, higher is better;
- ``rank(vectors, k, exclude)`` turns those scores into the best ``k`` rows.

Honoured by :class:`lookalike.recommend.personal.ShopperModel` (a shopper's history: centroid,
knn-vote, latent SVM), :class:`lookalike.recommend.category_first.CategoryProbe` (a linear probe:
a row's score is how sure it is of the row's category) and
:class:`lookalike.recommend.clusters.ClusterModel` (K-means: a row's score is its closeness to
its cluster's centre, so ``rank`` gives the most typical rows).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


class Recommender(ABC):
    """fit / score / rank over unit vectors (see the module's docstring)."""

    @abstractmethod
    def fit(self, vectors: np.ndarray, labels: Sequence[Any] | None = None) -> "Recommender":
        """Learn from ``vectors`` (and ``labels`` where the recommender needs them)."""

    @abstractmethod
    def score(self, vectors: np.ndarray) -> np.ndarray:
        """One score per row of ``vectors``; higher is better."""

    def rank(self, vectors: np.ndarray, k: int = 10,
             exclude: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The row numbers of the best ``k`` rows of ``vectors``, best first (ties keep row
        order), and their scores; rows in ``exclude`` never appear."""
        scores = np.asarray(self.score(vectors), dtype=np.float64).copy()
        excluded = np.fromiter((int(i) for i in exclude), dtype=np.int64)
        if excluded.size:
            scores[excluded] = -np.inf
        k = max(0, min(int(k), int(np.isfinite(scores).sum())))
        order = np.argsort(-scores, kind="stable")[:k]
        return order, scores[order]
