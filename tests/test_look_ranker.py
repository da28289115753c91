"""The look ranker: the cues it reads of a box, persistence, the packaged ranker's provenance
(train scenes only, the packaged head), and that ``look`` ranks by it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lookalike.models.weights import weights_digest
from lookalike.recommend.look_head import PACKAGED as HEAD, packaged_look_head
from lookalike.recommend.look_ranker import (
    FEATURES,
    KIND,
    KindClassifier,
    LookRanker,
    LookRankerError,
    packaged_look_ranker,
    region_features,
)
from lookalike.recommend.segmenter import ObjectnessMap


def _one_product_map() -> ObjectnessMap:
    """A 100 x 80 photo (map at scale 1) whose product fills x 20-60, y 10-50."""
    product = np.zeros((80, 100), np.float32)
    product[10:50, 20:60] = 1.0
    return ObjectnessMap(product, 1.0)


def test_the_cues_tell_a_tight_box_from_a_fragment_and_a_loose_box() -> None:
    boxes = np.array([[20, 10, 60, 50], [20, 10, 40, 30], [0, 0, 80, 70]])
    ones = np.ones(3)
    rows = region_features(boxes, _one_product_map(), 0.5 * ones, 0.4 * ones, ones, (100, 80))
    assert rows.shape == (3, len(FEATURES))
    cue = {name: rows[:, k] for k, name in enumerate(FEATURES)}
    np.testing.assert_allclose(cue["head"], 0.5)
    np.testing.assert_allclose(cue["objectness"][0], 1.0)
    assert cue["ring"][0] == 0.0 and cue["ring"][1] > 0.3  # the fragment's product goes on
    assert cue["core"][0] == 1.0 and cue["objectness"][2] < 0.3  # the loose box: its middle is
    assert cue["core"][2] > cue["objectness"][2] + 0.15  # more product than the whole of it
    assert cue["at_edge"].tolist() == [0.0, 0.0, 1.0]
    np.testing.assert_allclose(cue["log_area"][0], np.log(40 * 40 / (100 * 80)))


def test_fit_save_and_load_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, len(FEATURES)))
    labels = features[:, 0] + 0.5 * features[:, 2] > 0.8  # the target: head and vote
    ranker = LookRanker.fit(features, labels * 0.9, "some-embedder", "abc")
    assert ranker.training["coefficients"]["head"] > 1.0
    scores = ranker.score(features)
    assert np.mean((scores > 0) == labels) > 0.9
    ranker.save(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["config.json",
                                                                 "weights.safetensors"]
    again = LookRanker.load(tmp_path / "r")
    np.testing.assert_allclose(again.score(features), scores)
    assert again.config["embedder"] == "some-embedder" and again.config["look_head"] == "abc"
    assert ranker.training["on_target"] == labels.sum() > 0  # IoU 0.9 >= 0.5; 0 is not
    with pytest.raises(LookRankerError, match="both on and off"):
        LookRanker.fit(features, np.full(400, 0.2), "e", "h")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    (tmp_path / "r" / "config.json").write_text(json.dumps({**config, "features": ["head"]}))
    with pytest.raises(LookRankerError, match="this version reads"):
        LookRanker.load(tmp_path / "r")
    (tmp_path / "r" / "config.json").write_text(json.dumps({**config, "kind": "other"}))
    with pytest.raises(LookRankerError, match=f"kind 'other' is not '{KIND}'"):
        LookRanker.load(tmp_path / "r")


def test_the_kind_classifier_learns_categories_and_travels_with_the_ranker(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 32))
    labels = rng.integers(3, size=600)
    vectors = centres[labels] + 0.5 * rng.normal(size=(600, 32))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = np.array(["bags", "shoes", "watches"])[labels]
    kinds = KindClassifier.fit(vectors, names, epochs=20)
    assert kinds.categories == ["bags", "shoes", "watches"]
    bags = kinds.log_prob(vectors, "bags")
    assert bags.shape == (600,) and bags.max() <= 0
    assert np.mean(bags[names == "bags"]) > np.mean(bags[names != "bags"]) + 1.0
    assert kinds.log_prob(vectors, "hats") is None
    total = np.logaddexp.reduce([kinds.log_prob(vectors, c) for c in kinds.categories], axis=0)
    np.testing.assert_allclose(total, 0.0, atol=1e-4)  # probabilities over the categories
    features = rng.normal(size=(600, len(FEATURES)))
    ranker = LookRanker.fit(features, (features[:, 0] > 0.5) * 0.9, "e", "h")
    ranker.kinds, ranker.kind_weight = kinds, 2.0
    ranker.save(tmp_path / "r")
    again = LookRanker.load(tmp_path / "r")
    np.testing.assert_allclose(again.score(features, bags),
                               ranker.score(features) + 2.0 * bags, atol=1e-9)
    np.testing.assert_allclose(again.kinds.log_prob(vectors, "shoes"),
                               kinds.log_prob(vectors, "shoes"), atol=1e-6)


def test_the_packaged_ranker_was_fitted_on_train_scenes_with_the_packaged_head() -> None:
    head = packaged_look_head("efficientnet-lite0", 1280)
    assert head is not None and head.digest == weights_digest(HEAD)
    ranker = packaged_look_ranker("efficientnet-lite0", head.digest)
    assert ranker is not None, "src/lookalike/data/look-ranker is missing or not for this head"
    trained = ranker.config["trained_on"]
    assert trained["split"] == "train" and trained["scenes_per_kind"] >= 1000
    assert packaged_look_ranker("efficientnet-lite0", "another-head") is None
    assert packaged_look_ranker("gist", head.digest) is None
    coefficients = ranker.training["coefficients"]
    assert coefficients["head"] > 0 and coefficients["vote"] > 0  # what "like this" means
    assert ranker.kind_weight > 0 and "Handbags" in ranker.kinds.categories
    assert "train catalogue photos" in trained["kind_classifier"]


@pytest.fixture(scope="module")
def like_scenes(products_parquet: Path) -> list:
    from scene_products import common_products

    from lookalike.recommend.scene_generator import EVALUATION_SPEC, SceneGenerator

    frame = common_products(products_parquet)
    generator = SceneGenerator(frame, "validation", EVALUATION_SPEC)
    rng = np.random.default_rng(11)
    return [generator.like_scene(rng, cutout=bool(i % 2)) for i in range(6)], frame


@pytest.fixture(scope="module")
def lite_project(like_scenes: tuple, tmp_path_factory: pytest.TempPathFactory):
    import pandas as pd

    from lookalike.project import Project

    scenes, frame = like_scenes
    likes = {like for _, like in scenes}
    rows = frame[frame["id"].isin(likes) | frame.index.isin(range(0, len(frame), 40))]
    folder = tmp_path_factory.mktemp("ranker")
    pd.DataFrame({"id": rows["id"], "image": rows["image_jpeg"], "title": rows["id"],
                  "category": rows["article_type"]}).to_parquet(folder / "m.parquet")
    project = Project(folder / "project")
    project.ingest(folder / "m.parquet", progress=False)
    project.index("efficientnet-lite0", progress=False)
    return project


def test_look_ranks_a_likes_boxes_by_the_packaged_ranker(like_scenes: tuple,
                                                          lite_project) -> None:
    """On held-out (validation) scenes with an efficientnet-lite0 index, ``look``'s top region
    is the proposal the ranker scores highest (its cues and the kind classifier), with that
    score; without the ranker the scores are the hand-set sum. The ranker's top box is the
    target in most scenes."""
    from lookalike.recommend.look import look, ranking_features
    from lookalike.recommend.windows import box_iou

    head = packaged_look_head("efficientnet-lite0", 1280)
    ranker = packaged_look_ranker("efficientnet-lite0", head.digest)
    hits = 0
    for scene, like in like_scenes[0]:
        found = look(lite_project, scene.image, like=like, top_regions=1, k=1)
        boxes, rows = ranking_features(lite_project, scene.image, like)
        vectors = lite_project.searcher().embedder.embed([scene.image.crop(tuple(b))
                                                          for b in boxes])
        category = lite_project.store.get(like).category
        logits = ranker.score(rows, ranker.kinds.log_prob(vectors, category))
        assert found["regions"][0]["score"] == pytest.approx(logits.max(), abs=1e-5)
        assert found["regions"][0]["box"] == boxes[int(np.argmax(logits))].tolist()
        hits += int(box_iou(np.array(scene.target.box), boxes[int(np.argmax(logits))][None])[0]
                    >= 0.5)
        summed = look(lite_project, scene.image, like=like, top_regions=1, k=1,
                      look_ranker=False)
        assert summed["regions"][0]["score"] != pytest.approx(logits.max(), abs=1e-3)
    assert hits >= 4, hits
