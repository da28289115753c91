"""Issue 15: one Recommender contract (fit / score / rank, as in cornac) that personalisation,
category-first and clusters honour."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.recommend.category_first import CategoryProbe
from lookalike.recommend.clusters import ClusterModel
from lookalike.recommend.contract import Recommender
from lookalike.recommend.personal import ShopperModel


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def two_groups() -> tuple[np.ndarray, np.ndarray]:
    """40 rows around +e0 (label a) and 40 around +e1 (label b), 8-d."""
    rng = np.random.default_rng(0)
    centre = np.zeros((2, 8), np.float32)
    centre[0, 0] = centre[1, 1] = 1.0
    rows = np.concatenate([centre[0] + 0.2 * rng.standard_normal((40, 8)),
                           centre[1] + 0.2 * rng.standard_normal((40, 8))])
    return unit(rows), np.array(["a"] * 40 + ["b"] * 40)


@pytest.mark.parametrize("method", ["centroid", "knn-vote"])
def test_shopper_model_ranks_the_viewed_group_first(two_groups, method: str) -> None:
    rows, _ = two_groups
    model = ShopperModel(method).fit(rows[:5])  # five viewed items of group a
    assert isinstance(model, Recommender)
    top, scores = model.rank(rows, k=10, exclude=range(5))
    assert set(top.tolist()) <= set(range(5, 40))
    assert list(scores) == sorted(scores, reverse=True)


def test_latent_svm_learns_from_viewed_and_negative_rows(two_groups) -> None:
    rows, _ = two_groups
    marks = np.r_[np.ones(5), np.full(35, -1), np.zeros(40)]  # 1 viewed, 0 negative, -1 unused
    model = ShopperModel("latent-svm").fit(rows, marks)
    top, _ = model.rank(rows, k=10, exclude=range(5))
    assert set(top.tolist()) <= set(range(5, 40))
    with pytest.raises(LookalikeError):
        ShopperModel("latent-svm").fit(rows[:5])  # no negatives


def test_centroid_is_the_normalised_mean_and_exclude_is_honoured(two_groups) -> None:
    rows, _ = two_groups
    model = ShopperModel("centroid").fit(rows[:5])
    mean = rows[:5].mean(axis=0)
    assert np.allclose(model.weights, mean / np.linalg.norm(mean), atol=1e-6)
    top, _ = model.rank(rows, k=80, exclude=range(10))
    assert len(top) == 70 and not set(top.tolist()) & set(range(10))
    with pytest.raises(LookalikeError):
        ShopperModel("centroid").fit(rows, labels=np.zeros(len(rows)))


def test_category_probe_learns_scores_and_refits(two_groups) -> None:
    rows, labels = two_groups
    probe = CategoryProbe.learn(rows, labels, column="category")
    assert isinstance(probe, Recommender) and probe.classes == ["a", "b"]
    assert probe.predict(rows[:3]) == ["a", "a", "a"]
    ambiguous = unit(np.r_[[np.ones(8)]].astype(np.float32))
    assert probe.score(rows[:1])[0] > probe.score(ambiguous)[0]  # sure of a clear row
    flipped = probe.fit(rows, np.where(labels == "a", "b", "a"))
    assert flipped is probe and probe.predict(rows[:1]) == ["b"]
    with pytest.raises(LookalikeError):
        probe.fit(rows)


def test_cluster_model_assigns_groups_and_ranks_typical_rows(two_groups) -> None:
    rows, labels = two_groups
    model = ClusterModel(k=2, seed=0).fit(rows)
    assert isinstance(model, Recommender)
    assigned = model.assign(rows)
    assert len(set(assigned[:40])) == 1 and len(set(assigned[40:])) == 1
    assert assigned[0] != assigned[40]
    assert np.array_equal(assigned, model.labels)
    top, scores = model.rank(rows, k=5)
    assert np.all(scores >= np.median(model.score(rows)))
    with pytest.raises(LookalikeError):
        ClusterModel(k=2).score(rows)
