"""Retrieval metrics against hand-computed values (and scikit-learn where it has them)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from lookalike.errors import LookalikeError
from lookalike.evaluate.metrics import (
    EvaluationError,
    average_precision_at_k,
    hit_rate_at_k,
    mean,
    mean_metrics,
    ndcg_at_k,
    per_query_metrics,
    precision_at_k,
    recall_against_exact,
    recall_at_k,
)

# Two queries, five ranks each. Query 0 has 2 relevant items in the gallery, query 1 has 4.
RELEVANT = np.array([[1, 0, 1, 0, 0],
                     [0, 1, 0, 0, 1]], dtype=bool)
N_RELEVANT = np.array([2, 4])
LOG2_3 = math.log2(3)


def test_precision_by_hand() -> None:
    assert precision_at_k(RELEVANT, 1).tolist() == [1.0, 0.0]
    np.testing.assert_allclose(precision_at_k(RELEVANT, 3), [2 / 3, 1 / 3])
    np.testing.assert_allclose(precision_at_k(RELEVANT, 5), [0.4, 0.4])


def test_recall_by_hand() -> None:
    np.testing.assert_allclose(recall_at_k(RELEVANT, N_RELEVANT, 1), [0.5, 0.0])
    np.testing.assert_allclose(recall_at_k(RELEVANT, N_RELEVANT, 2), [0.5, 0.25])
    np.testing.assert_allclose(recall_at_k(RELEVANT, N_RELEVANT, 5), [1.0, 0.5])


def test_average_precision_by_hand() -> None:
    # Query 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / min(5, 2).
    # Query 1: hits at ranks 2 and 5 -> (1/2 + 2/5) / min(5, 4).
    np.testing.assert_allclose(average_precision_at_k(RELEVANT, N_RELEVANT, 5),
                               [(1 + 2 / 3) / 2, (0.5 + 0.4) / 4])
    assert average_precision_at_k(RELEVANT, N_RELEVANT, 5)[0] == pytest.approx(0.833333, abs=1e-6)
    # At k=1 the best possible is one hit, so query 0 is perfect.
    np.testing.assert_allclose(average_precision_at_k(RELEVANT, N_RELEVANT, 1), [1.0, 0.0])


def test_average_precision_normalises_by_min_k_and_n_relevant() -> None:
    # Three hits out of three places is perfect even though the class has 50 members.
    assert average_precision_at_k(np.ones((1, 3), bool), 50, 3)[0] == pytest.approx(1.0)
    # Normalising by n_relevant instead would give 3/50; make sure that is not what we do.
    assert average_precision_at_k(np.ones((1, 3), bool), 50, 3)[0] != pytest.approx(3 / 50)


def test_ndcg_by_hand() -> None:
    # Query 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3).
    # Query 1: DCG = 1/log2(3) + 1/log2(6); ideal = 1 + 1/log2(3) + 1/2 + 1/log2(5).
    expected_0 = 1.5 / (1 + 1 / LOG2_3)
    expected_1 = (1 / LOG2_3 + 1 / math.log2(6)) / (1 + 1 / LOG2_3 + 0.5 + 1 / math.log2(5))
    np.testing.assert_allclose(ndcg_at_k(RELEVANT, N_RELEVANT, 5), [expected_0, expected_1])
    assert expected_0 == pytest.approx(0.919721, abs=1e-6)
    assert expected_1 == pytest.approx(0.397322, abs=1e-6)


def test_hit_rate_by_hand() -> None:
    assert hit_rate_at_k(RELEVANT, 1).tolist() == [1.0, 0.0]
    assert hit_rate_at_k(RELEVANT, 2).tolist() == [1.0, 1.0]


def test_query_with_no_relevant_items_scores_zero_everywhere() -> None:
    empty = np.zeros((1, 5), bool)
    for values in per_query_metrics(empty, [0], ks=(1, 5), map_at=5, ndcg_at=5).values():
        assert values.tolist() == [0.0]


def test_k_larger_than_the_list_pads_with_misses() -> None:
    short = np.array([[True, True]])
    assert precision_at_k(short, 5)[0] == pytest.approx(0.4)  # divides by k, as trec_eval
    assert recall_at_k(short, 2, 5)[0] == pytest.approx(1.0)
    assert average_precision_at_k(short, 2, 5)[0] == pytest.approx(1.0)
    assert ndcg_at_k(short, 2, 5)[0] == pytest.approx(1.0)
    assert hit_rate_at_k(short, 5)[0] == 1.0


def test_single_flat_list_is_one_query() -> None:
    assert precision_at_k([1, 0, 1, 0, 0], 5).tolist() == [0.4]


def test_matches_scikit_learn_over_a_full_ranking() -> None:
    """AP@N over a full ranking is sklearn's average precision; NDCG@k is sklearn's ndcg_score."""
    rng = np.random.default_rng(0)
    n_queries, n_gallery = 20, 60
    scores = rng.random((n_queries, n_gallery))  # distinct, so no ties
    truth = rng.random((n_queries, n_gallery)) < 0.2
    truth[:, 0] = True  # every query has at least one relevant item
    order = np.argsort(-scores, axis=1)
    ranked = np.take_along_axis(truth, order, axis=1)
    n_relevant = truth.sum(axis=1)
    ours_ap = average_precision_at_k(ranked, n_relevant, n_gallery)
    sklearn_ap = [average_precision_score(truth[i], scores[i]) for i in range(n_queries)]
    np.testing.assert_allclose(ours_ap, sklearn_ap, rtol=1e-10)
    for k in (1, 5, 10):
        ours = ndcg_at_k(ranked, n_relevant, k)
        theirs = [ndcg_score(truth[i][None].astype(float), scores[i][None], k=k)
                  for i in range(n_queries)]
        np.testing.assert_allclose(ours, theirs, rtol=1e-10)


def test_means() -> None:
    assert mean([0.2, 0.4]) == pytest.approx(0.3)
    assert math.isnan(mean([]))
    means = mean_metrics(per_query_metrics(RELEVANT, N_RELEVANT, ks=(5,), map_at=5, ndcg_at=5))
    assert means["P@5"] == pytest.approx(0.4)
    assert means["R@5"] == pytest.approx(0.75)
    assert means["mAP@5"] == pytest.approx(((1 + 2 / 3) / 2 + 0.9 / 4) / 2)
    assert list(means) == ["P@5", "R@5", "HR@5", "mAP@5", "NDCG@5"]


def test_bad_input_raises_a_lookalike_error() -> None:
    with pytest.raises(EvaluationError, match="positive integer"):
        precision_at_k(RELEVANT, 0)
    with pytest.raises(LookalikeError, match="one count per query"):
        recall_at_k(RELEVANT, [1, 2, 3], 5)
    with pytest.raises(EvaluationError, match="whole gallery"):
        average_precision_at_k(RELEVANT, [1, 4], 5)  # query 0 shows 2 hits but claims 1
    with pytest.raises(EvaluationError, match="shape"):
        precision_at_k(np.zeros((2, 2, 2), bool), 1)


def test_recall_against_exact() -> None:
    approx = np.array([[1, 2, 3], [4, 5, -1]])
    exact = np.array([[1, 3, 7], [4, 5, 6]])
    np.testing.assert_allclose(recall_against_exact(approx, exact, 3), [2 / 3, 2 / 3])
    np.testing.assert_allclose(recall_against_exact(approx, exact, 1), [1.0, 1.0])
    # String ids, ragged lists, and an exact list shorter than k (a small or filtered gallery).
    got = recall_against_exact([["a", "b"], ["c"], []], [["b", "x"], ["c", -1, -1], []], 2)
    np.testing.assert_allclose(got, [0.5, 1.0, 1.0])
    with pytest.raises(EvaluationError, match="queries"):
        recall_against_exact([[1]], [[1], [2]], 1)
