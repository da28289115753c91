"""The look head: persistence, a training run that separates classes across a domain shift, the
packaged head's provenance (train scenes only), and its ranking of held-out scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scene_products import common_products

from lookalike.models.base import create
from lookalike.recommend.look_head import (
    KIND,
    LookHead,
    LookHeadError,
    packaged_look_head,
)
from lookalike.recommend.scene_generator import EVALUATION_SPEC, SceneGenerator
from lookalike.recommend.scenes import decode_jpeg


@pytest.fixture(scope="module")
def frame(products_parquet: Path) -> pd.DataFrame:
    return common_products(products_parquet)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    head = LookHead("some-embedder", 16, hidden=8, seed=3)
    with pytest.raises(LookHeadError, match="need at least"):
        head.fit(np.zeros((4, 16)), np.zeros(4, int), np.zeros(4, int), np.zeros((4, 16)),
                 np.zeros(4, int))
    x = _unit(np.random.default_rng(0).normal(size=(5, 16)))
    np.testing.assert_allclose(head.project(x), x, atol=1e-6)  # the identity before training
    for p in head.network.parameters():  # any weights, so the round trip is not trivial
        p.data.normal_(0, 0.1)
    head.save(tmp_path / "h")
    again = LookHead.load(tmp_path / "h")
    np.testing.assert_array_equal(again.project(x), head.project(x))
    assert again.embedder == "some-embedder" and np.allclose(
        np.linalg.norm(again.project(x), axis=1), 1.0)
    config = json.loads((tmp_path / "h" / "config.json").read_text())
    (tmp_path / "h" / "config.json").write_text(json.dumps({**config, "kind": "other"}))
    with pytest.raises(LookHeadError, match=f"kind 'other' is not '{KIND}'"):
        LookHead.load(tmp_path / "h")
    with pytest.raises(LookHeadError, match="not a saved look head"):
        LookHead.load(tmp_path / "missing")


def test_training_brings_shifted_crops_to_their_class(tmp_path: Path) -> None:
    """Photos are class centres plus noise; crops are the same photos pushed by one of six
    strong 'background' vectors. After training, a crop's nearest photo class is mostly
    right (it was mostly wrong), and the loss fell."""
    rng = np.random.default_rng(0)
    dim, classes = 32, 12
    centres = rng.normal(size=(classes, dim))
    photo_labels = np.repeat(np.arange(classes), 60)
    photos = _unit(centres[photo_labels] + 0.4 * rng.normal(size=(len(photo_labels), dim)))
    crop_photos = rng.integers(len(photos), size=1200)
    crop_labels = photo_labels[crop_photos]
    backgrounds = 2.0 * rng.normal(size=(6, dim))
    crops = _unit(photos[crop_photos] * 2 + backgrounds[rng.integers(6, size=1200)])
    bad = _unit(backgrounds[rng.integers(6, size=200)] + 0.3 * rng.normal(size=(200, dim)))

    def accuracy(head: LookHead) -> float:
        means = _unit(np.stack([head.project(photos[photo_labels == c]).mean(0)
                                for c in range(classes)]))
        return float(np.mean(np.argmax(head.project(crops) @ means.T, 1) == crop_labels))

    head = LookHead("synthetic", dim, hidden=64, seed=0)
    before = accuracy(head)
    training = head.fit(crops, crop_labels, crop_photos, photos, photo_labels, steps=200,
                        batch=128, bad=bad)
    assert training["last_loss"] < training["first_loss"] - 1.0, training
    assert before < 0.5 and accuracy(head) >= 0.85, (before, accuracy(head))


def test_the_packaged_head_was_trained_on_train_scenes_for_the_default_index() -> None:
    head = packaged_look_head("efficientnet-lite0", 1280)
    assert head is not None, "src/lookalike/data/look-head is missing"
    trained = head.config["trained_on"]
    assert trained["split"] == "train" and trained["classes"] == "article_type|colour"
    assert packaged_look_head("gist", 1280) is None
    assert packaged_look_head("efficientnet-lite0", 256) is None


def test_the_head_ranks_the_liked_kind_first_on_held_out_scenes(frame: pd.DataFrame) -> None:
    """Validation-split like-scenes (backgrounds and products the head never saw): with each
    product's true box, the target (same type and colour as ``like``) comes first under the
    head at least as often as under the embedder's cosine, and in most scenes."""
    embedder = create("efficientnet-lite0")
    head = packaged_look_head(embedder.name, embedder.dim)
    generator = SceneGenerator(frame, "validation", EVALUATION_SPEC)
    rng = np.random.default_rng(5)
    photos = frame.set_index("id")["image_jpeg"]
    plain = under_head = 0
    for i in range(16):
        scene, like = generator.like_scene(rng, cutout=bool(i % 2))
        crops = embedder.embed([scene.image.crop(p.box) for p in scene.products])
        like_vector = embedder.embed([decode_jpeg(photos[like])])
        target = next(k for k, p in enumerate(scene.products) if p.role == "target")
        plain += int(np.argmax(crops @ like_vector[0]) == target)
        under_head += int(np.argmax(head.scorer(like_vector)(crops)) == target)
    assert under_head >= plain and under_head >= 13, (plain, under_head)  # here: 12 and 16
