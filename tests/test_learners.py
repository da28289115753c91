"""The training contract: each learning embedder declares the one input family it trains on."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.models import base
from lookalike.models.base import Embedder
from lookalike.models.learners import TensorLearner, VectorLearner, training_input

EXPECTED = {"cnn": "tensors", "cnn-hash": "tensors", "finetune": "tensors",
            "autoencoder": "tensors", "conv-autoencoder": "tensors", "infogan": "tensors",
            "pca": "vectors", "projection": "vectors",
            "copy-descriptor": "images"}  # makes its own edited copies, then trains a head


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_learning_method_declares_its_input(kind: str) -> None:
    cls = base.embedder_class(kind)
    assert cls.needs_fit
    assert training_input(cls) == EXPECTED[kind]


def test_every_learning_method_is_covered() -> None:
    learners = {k for k in base.available() if base.embedder_class(k).needs_fit}
    # fusion learns through fit(images) of its parts; everything else declares a family
    assert learners - set(EXPECTED) <= {"fusion"}
    assert training_input(base.embedder_class("efficientnet-lite0")) == "images"


def test_a_tensor_learner_without_its_entry_point_cannot_be_made() -> None:
    class Incomplete(TensorLearner, Embedder):  # no fit_tensors
        kind = "incomplete"
        dim = 1

        def config(self) -> dict:
            return {}

        def _embed_batch(self, images):  # noqa: ANN001, ANN202
            return []

    with pytest.raises(TypeError, match="fit_tensors"):
        Incomplete()


def test_contract_methods_are_the_ones_training_calls() -> None:
    assert set(TensorLearner.__abstractmethods__) == {"fit_tensors"}
    assert set(VectorLearner.__abstractmethods__) == {"fit_vectors"}
    assert "hasattr" not in (Path(base.__file__).parents[1] / "training_run.py").read_text()
