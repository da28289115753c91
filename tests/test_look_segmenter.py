"""The scene segmenter: its objectness sums, persistence, a short training run, and the
packaged model finding products on test-split scenes it never saw (held-out backgrounds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from scene_products import common_products

from lookalike.recommend.scene_generator import EVALUATION_SPEC, SceneGenerator, SceneSpec
from lookalike.recommend.segmenter import (
    OUTPUT_STRIDE,
    ObjectnessMap,
    SceneSegmenter,
    SegmenterError,
    packaged_segmenter,
    scene_input,
    scene_targets,
    split_touching,
)
from lookalike.recommend.windows import box_iou


@pytest.fixture(scope="module")
def frame(products_parquet: Path) -> pd.DataFrame:
    return common_products(products_parquet)


def test_objectness_is_the_mean_probability_in_a_box() -> None:
    rng = np.random.default_rng(0)
    product = rng.random((48, 64)).astype(np.float32)
    scored = ObjectnessMap(product, scale=0.5)  # photo pixels are twice the map's
    boxes = np.array([[0, 0, 128, 96], [10, 20, 50, 60], [2, 2, 4, 4]])
    expected = [product[0:48, 0:64].mean(), product[10:30, 5:25].mean(), product[1:2, 1:2].mean()]
    np.testing.assert_allclose(scored.of(boxes), expected, rtol=1e-6)


def test_on_white_fades_what_is_not_product_to_white() -> None:
    product = np.zeros((12, 16), np.float32)
    product[3:9, 4:12] = 1.0
    pixels = np.full((48, 64, 3), 40, np.uint8)  # photo pixels are four times the map's
    faded = ObjectnessMap(product, scale=0.25).on_white(pixels)
    assert faded.shape == pixels.shape and faded.dtype == np.uint8
    assert (faded[20:28, 24:40] == 40).all()  # the product's middle is untouched
    assert (faded[:4] == 255).all() and (faded[:, :8] == 255).all()  # the backdrop is white


def test_targets_mark_products_and_their_cores() -> None:
    instances = np.zeros((480, 640), np.int16)
    instances[100:260, 200:320] = 1  # a pasted photo, 120 x 160
    targets = scene_targets(instances, [(200, 100, 320, 260)], scale=0.4, shape=(48, 64))
    assert targets.shape == (2, 48, 64) and targets.dtype == np.float16
    cell = OUTPUT_STRIDE / 0.4  # 10 photo px per cell
    inside = targets[0, int(110 / cell):int(250 / cell), int(210 / cell):int(310 / cell)]
    assert inside.min() == 1.0 and targets[0, :5].max() == 0.0
    assert 0 < targets[1].sum() < 0.3 * targets[0].sum()  # the core is the product's middle
    pixels, scale = scene_input(Image.new("RGB", (640, 480)))
    assert pixels.shape == (3, 192, 256) and scale == 0.4


def test_touching_products_are_split_at_their_neck() -> None:
    yy, xx = np.mgrid[0:80, 0:140]
    left = (yy - 40) ** 2 + (xx - 40) ** 2 < 30 ** 2
    right = (yy - 40) ** 2 + (xx - 95) ** 2 < 28 ** 2  # overlaps the left disc a little
    labels = split_touching(left | right, min_distance=8)
    assert labels.max() == 2 and set(np.unique(labels)) == {0, 1, 2}
    assert labels[40, 40] != labels[40, 95] and labels[40, 40] > 0 and labels[40, 95] > 0
    assert split_touching(np.zeros((10, 10), bool), 8).max() == 0


def test_training_on_crops_sees_windows_on_the_pad_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 3, 64, 96), np.uint8)
    targets = (rng.random((4, 2, 16, 24)) > 0.5).astype(np.float16)
    result = SceneSegmenter(seed=0).fit(images, targets, epochs=1, batch_size=2, crop=32)
    assert result["crop"] == 32 and len(result["history"]) == 1
    assert np.isfinite(result["history"][0]["loss"])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    segmenter = SceneSegmenter(seed=3)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 200, 3), np.uint8))
    before = segmenter.maps(photo)[0]
    loaded = SceneSegmenter.load(segmenter.save(tmp_path / "seg"))
    np.testing.assert_array_equal(loaded.maps(photo)[0], before)
    assert before.shape == (154, 256)  # 120 x 200 scaled to 256 on the longer side
    with pytest.raises(SegmenterError, match="not a saved scene segmenter"):
        SceneSegmenter.load(tmp_path / "nothing")
    (tmp_path / "seg" / "config.json").write_text('{"kind": "box-regressor"}')
    with pytest.raises(SegmenterError, match="is not 'scene-segmenter'"):
        SceneSegmenter.load(tmp_path / "seg")


def test_a_short_training_run_lowers_the_loss(frame: pd.DataFrame, tmp_path: Path) -> None:
    generator = SceneGenerator(frame, "train", SceneSpec(photo_share=0.0))  # textures: fast
    rng = np.random.default_rng(0)
    images, targets = [], []
    for _ in range(16):
        scene = generator.scene(rng)
        pixels, scale = scene_input(scene.image)
        images.append(pixels)
        targets.append(scene_targets(scene.instances, [p.box for p in scene.products], scale,
                                     (pixels.shape[1] // 4, pixels.shape[2] // 4)))
    segmenter = SceneSegmenter(seed=0)
    torch.set_num_threads(2)
    result = segmenter.fit(np.stack(images), np.stack(targets), epochs=4, batch_size=8,
                           checkpoint=tmp_path / "ckpt.safetensors")
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < losses[0] - 0.05, losses
    # A rerun with the same checkpoint resumes after the last epoch: nothing left to do.
    again = SceneSegmenter(seed=0).fit(np.stack(images), np.stack(targets), epochs=4,
                                       batch_size=8, checkpoint=tmp_path / "ckpt.safetensors")
    assert [r["loss"] for r in again["history"]] == losses


def test_the_packaged_segmenter_finds_products_on_held_out_scenes(frame: pd.DataFrame) -> None:
    segmenter = packaged_segmenter()
    assert segmenter is not None, "src/lookalike/data/scene-segmenter is missing"
    assert segmenter.training is not None and segmenter.config["trained_on"]["split"] == "train"
    generator = SceneGenerator(frame, "test", EVALUATION_SPEC)
    rng = np.random.default_rng(11)
    found = total = 0
    for i in range(6):
        scene, _ = generator.like_scene(rng, cutout=bool(i % 2))
        boxes, objectness, _ = segmenter.proposals(scene.image)
        assert len(boxes) == len(objectness) and np.all(np.diff(objectness) <= 1e-9)
        for product in scene.products:
            total += 1
            found += bool(len(boxes)) and box_iou(np.array(product.box), boxes).max() >= 0.5
    assert found / total >= 0.7, f"{found} of {total} products found"
