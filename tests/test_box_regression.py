"""The learned box regressor of shop-the-look: box arithmetic, crops, training, the packaged model.

Scenes are real product photos on scikit-image's real background photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lookalike.recommend.box_regression import (
    BoxRegressionError,
    BoxRegressor,
    apply_deltas,
    box_samples,
    context_crops,
    encode_deltas,
    jitter_boxes,
    packaged_box_regressor,
)
from lookalike.recommend.regions import box_iou
from lookalike.recommend.scenes import compose_scene, decode_jpeg


@pytest.fixture(scope="module")
def products(products_parquet: Path) -> pd.DataFrame:
    return pd.read_parquet(products_parquet, columns=["id", "split", "image_jpeg"])


def _opener(frame: pd.DataFrame):
    jpegs = dict(zip(frame["id"].astype(str), frame["image_jpeg"]))
    return (lambda item: decode_jpeg(jpegs[item])), list(jpegs)


def test_deltas_round_trip_and_hand_case() -> None:
    rng = np.random.default_rng(0)
    corner = rng.uniform(0, 300, (50, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(5, 150, (50, 2))], axis=1)
    corner = rng.uniform(0, 300, (50, 2))
    truths = np.concatenate([corner, corner + rng.uniform(5, 150, (50, 2))], axis=1)
    keep = np.all(np.abs(np.log((truths[:, 2:] - truths[:, :2]) / (boxes[:, 2:] - boxes[:, :2])))
                  < np.log(4), axis=1)  # apply_deltas caps size changes at x4
    moved = apply_deltas(boxes[keep], encode_deltas(boxes[keep], truths[keep]))
    np.testing.assert_allclose(moved, truths[keep], atol=1e-6)
    # A 10x20 box whose truth is shifted 5 px right and twice as tall.
    deltas = encode_deltas(np.array([[0, 0, 10, 20]]), np.array([[5, -10, 15, 30]]))
    np.testing.assert_allclose(deltas, [[0.5, 0.0, 0.0, np.log(2)]], atol=1e-12)


def test_context_crops_see_the_surround_and_black_outside_the_scene() -> None:
    pixels = np.zeros((100, 100, 3), np.uint8)
    pixels[40:60, 40:60] = 255  # a white square in the middle
    crops = context_crops(pixels, np.array([[40, 40, 60, 60], [0, 0, 20, 20]]), 2.0, 32)
    assert crops.shape == (2, 3, 32, 32) and crops.dtype == np.uint8
    # With context 2 the square fills the central half of its crop, black around it.
    assert crops[0, :, 12:20, 12:20].min() == 255 and crops[0, :, :6].max() == 0
    # The corner box's crop reaches outside the scene: that part is black, not wrapped.
    assert crops[1].max() == 0


def test_jittered_boxes_overlap_their_truth_enough(products: pd.DataFrame) -> None:
    truth = np.array([100.0, 80.0, 160.0, 160.0])
    boxes = jitter_boxes(truth, 200, np.random.default_rng(1), min_iou=0.3)
    ious = box_iou(truth, boxes)
    assert ious.min() >= 0.3 and ious.mean() < 0.9  # near the truth, but not on it


def test_training_on_real_scenes_tightens_boxes_and_save_load_is_identical(
        products: pd.DataFrame, tmp_path: Path) -> None:
    open_photo, ids = _opener(products[products["split"] == "train"].head(400))
    samples = box_samples(open_photo, ids, 40, seed=3, per_product=6, input_size=32)
    assert len(samples) == 40 * 5 * 6 and samples.labels.shape == (1200, 4)
    regressor = BoxRegressor(input_size=32, channels=(16, 32, 32), hidden=64, seed=0)
    result = regressor.fit(samples, epochs=4, learning_rate=3e-3, progress=False, patience=0)
    last = result.history[-1]
    # Learning happened: the corrected boxes overlap the truth clearly better than the jittered.
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert last["val_iou"] > last["val_iou_before"] + 0.05
    regressor.save(tmp_path / "boxes")
    loaded = BoxRegressor.load(tmp_path / "boxes")
    pixels = np.asarray(compose_scene("brick", [(i, open_photo(i), "p") for i in ids[:3]],
                                      np.random.default_rng(0)).image)
    boxes = np.array([[10, 10, 70, 90], [200, 100, 260, 180]])
    np.testing.assert_array_equal(regressor.deltas(pixels, boxes), loaded.deltas(pixels, boxes))
    assert loaded.config == regressor.config


def test_loading_something_else_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BoxRegressionError, match="not a saved box regressor"):
        BoxRegressor.load(tmp_path)
    small = BoxRegressor(input_size=32, channels=(8,), hidden=8)
    small.save(tmp_path / "a")
    config = (tmp_path / "a" / "config.json").read_text().replace('"hidden": 8', '"hidden": 9')
    (tmp_path / "a" / "config.json").write_text(config)
    with pytest.raises(BoxRegressionError, match="weights do not match"):
        BoxRegressor.load(tmp_path / "a")
    with pytest.raises(BoxRegressionError, match="too small"):
        BoxRegressor(input_size=8, channels=(8, 8, 8, 8))


def test_packaged_regressor_moves_loose_boxes_onto_unseen_test_products(
        products: pd.DataFrame) -> None:
    """The shipped weights (trained on train-split scenes) tighten boxes on test-split scenes,
    with and without the photos' backdrop, and keep every box inside the scene."""
    regressor = packaged_box_regressor()
    assert regressor is not None, "the package ships src/lookalike/data/box-regressor"
    open_photo, ids = _opener(products[products["split"] == "test"].head(300))
    rng = np.random.default_rng(7)
    before, after = [], []
    for n in range(8):
        chosen = [ids[i] for i in rng.choice(len(ids), 5, replace=False)]
        scene = compose_scene("grass" if n % 2 else "coffee",
                              [(i, open_photo(i), "p") for i in chosen], rng, cutout=n % 2 == 1)
        pixels = np.asarray(scene.image)
        for placed in scene.products:
            truth = np.asarray(placed.box, np.float64)
            loose = jitter_boxes(truth, 3, rng)
            refined = regressor.refine(pixels, loose)
            assert refined.dtype == np.int64 and (refined[:, :2] >= 0).all()
            assert (refined[:, 2] <= pixels.shape[1]).all() and (refined[:, 3] <= 480).all()
            assert (refined[:, 2:] > refined[:, :2]).all()
            before += list(box_iou(truth, loose))
            after += list(box_iou(truth, refined.astype(np.float64)))
    assert np.mean(after) > np.mean(before) + 0.15
    assert np.mean(np.array(after) >= 0.5) > 0.85


def test_refine_handles_degenerate_boxes_at_the_scene_edge() -> None:
    regressor = packaged_box_regressor()
    pixels = np.asarray(Image.new("RGB", (50, 40), (128, 128, 128)))
    boxes = regressor.refine(pixels, np.array([[0, 0, 1, 1], [45, 35, 50, 40], [0, 0, 50, 40]]))
    assert ((boxes[:, 2] - boxes[:, 0]) >= 2).all() and ((boxes[:, 3] - boxes[:, 1]) >= 2).all()
    assert (boxes[:, [0, 2]] <= 50).all() and (boxes[:, [1, 3]] <= 40).all()
    assert regressor.refine(pixels, np.zeros((0, 4))).shape == (0, 4)


def test_train_boxes_command_trains_resumes_and_look_uses_the_project_model(
        products_parquet: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    import lookalike.commands.personal  # noqa: F401  (registers the command)
    from lookalike import Project
    from lookalike.cli import app
    from lookalike.recommend.box_regression import box_regressor_for

    frame = pd.read_parquet(products_parquet).iloc[:60]
    manifest = tmp_path / "m.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "category": frame["article_type"], "split": frame["split"]}
                 ).to_parquet(manifest)
    project = Project(tmp_path / "shop")
    assert project.ingest(manifest, progress=False).added == 60
    packaged = box_regressor_for(project)  # nothing trained yet: the packaged one, loaded once
    assert packaged is box_regressor_for(project) is packaged_box_regressor(project.caches)
    assert packaged.training == packaged_box_regressor().training
    args = ["train-boxes", "--scenes", "12", "--epochs", "2", "--project", str(project.path),
            "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert summary["samples"] == 12 * 5 * 6 and summary["epochs"] == 2
    assert summary["photos"] == int((frame["split"] == "train").sum())
    own = box_regressor_for(project)
    assert own is not packaged and own.training["best_epoch"] >= 1
    # Resuming a finished run trains nothing more and gives the same model.
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["val_iou"] == summary["val_iou"]
    bad = CliRunner().invoke(app, ["train-boxes", "--project", str(tmp_path / "nowhere")])
    assert bad.exit_code != 0 and "not a lookalike project" in bad.output
