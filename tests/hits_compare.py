"""Comparing search results across kernels: equal up to the order of near-tied scores.

Two indexes (or FAISS and numpy) may order items whose scores agree to ~1e-6 differently, and
which of several tied items makes the top k is then a coin toss that differs between SIMD
kernels (AVX2, AVX-512, NEON). These helpers accept exactly that and nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TIE = 1e-5


def assert_same_ranking(ids_a: Sequence[str], scores_a: Sequence[float], ids_b: Sequence[str],
                        scores_b: Sequence[float], tie: float = TIE) -> None:
    """Same length, the same score at every rank, the same score for every shared id, and ids
    that only one side has scoring within ``tie`` of the last (boundary) score."""
    assert len(ids_a) == len(ids_b), (ids_a, ids_b)
    np.testing.assert_allclose(scores_a, scores_b, atol=tie)
    score_a, score_b = dict(zip(ids_a, scores_a)), dict(zip(ids_b, scores_b))
    for item in score_a.keys() & score_b.keys():
        assert abs(score_a[item] - score_b[item]) <= tie, (item, score_a[item], score_b[item])
    if not ids_a:
        return
    boundary = min(min(scores_a), min(scores_b))
    for item in score_a.keys() ^ score_b.keys():
        score = score_a.get(item, score_b.get(item))
        assert abs(score - boundary) <= tie, f"{item} ({score}) is not a tie at the boundary"


def assert_same_hits(a, b, tie: float = TIE) -> None:
    """:func:`assert_same_ranking` for two ``Hits``."""
    assert_same_ranking(a.ids, a.scores, b.ids, b.scores, tie)
