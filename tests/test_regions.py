"""Shop-the-look building blocks: windows, fast windowed features, NMS, scenes, latent SVM.

Scenes are real photos (scikit-image samples) with real product photos pasted in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from lookalike.models.base import create, l2_normalise
from lookalike.models.handcrafted import (cell_bounds, grey_array, orientation_maps,
                                          phog_descriptor)
from lookalike.recommend.personal import fit_latent_svm
from lookalike.recommend.regions import (
    CropWindows,
    FeatureMapWindows,
    EfficientNetMaps,
    SceneError,
    box_iou,
    find_regions,
    nms,
    prepare_scene,
    window_grids,
    windowed_features,
)
from lookalike.recommend.scenes import compose_scene, decode_jpeg, like_scene, product_mask


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return prepare_scene(Image.fromarray(data.astronaut()).resize((320, 240))).pixels


@pytest.fixture(scope="module")
def products(products_parquet: Path) -> pd.DataFrame:
    return pd.read_parquet(products_parquet, columns=["id", "article_type", "base_colour",
                                                      "gender", "usage", "split", "image_jpeg"])


# ---- windows ----------------------------------------------------------------------------------
def test_window_grids_cover_the_scene_on_the_stride() -> None:
    grids = window_grids(480, 640, (20, 100), stride=5)
    assert [(g.width, g.height) for g in grids] == [(20, 20), (100, 100)]
    assert len(grids[0]) == ((640 - 20) // 5 + 1) * ((480 - 20) // 5 + 1)
    boxes = grids[1].boxes()
    assert boxes[:, 2].max() <= 640 and boxes[:, 3].max() <= 480
    assert set(np.diff(np.unique(boxes[:, 0]))) == {5}
    tall = window_grids(480, 640, (30,), stride=5, aspect=4 / 3)[0]
    assert (tall.width, tall.height) == (30, 40)


def test_window_settings_errors_are_clear() -> None:
    with pytest.raises(SceneError, match="smaller than the smallest window"):
        window_grids(15, 40, (20, 30))
    with pytest.raises(SceneError, match="M < N"):
        window_grids(480, 640, (20,), stride=20)
    assert [g.width for g in window_grids(50, 640, (20, 60, 100))] == [20]  # others do not fit


# ---- NMS --------------------------------------------------------------------------------------
def test_box_iou_hand_cases() -> None:
    box = np.array([0, 0, 10, 10])
    others = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [2, 2, 4, 4]])
    np.testing.assert_allclose(box_iou(box, others), [1.0, 50 / 150, 0.0, 4 / 100])


def test_nms_hand_cases() -> None:
    boxes = np.array([[0, 0, 10, 10],     # 0: best
                      [1, 1, 11, 11],     # 1: overlaps 0 heavily (IoU 0.68) -> dropped
                      [20, 20, 30, 30],   # 2: apart -> kept
                      [5, 0, 15, 10],     # 3: IoU 1/3 with 0 -> kept at 0.5, dropped at 0.3
                      [21, 21, 31, 31]])  # 4: overlaps 2 -> dropped
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    assert nms(boxes, scores, 0.5).tolist() == [4, 0, 3]
    assert nms(boxes, scores, 0.3).tolist() == [4, 0]
    assert nms(boxes, scores, 0.5, max_keep=2).tolist() == [4, 0]
    assert nms(boxes, scores, 1.0).tolist() == [4, 0, 1, 2, 3]  # nothing suppressed
    ties = np.array([[0, 0, 10, 10], [0, 0, 10, 10]])
    assert nms(ties, np.array([0.5, 0.5]), 0.5).tolist() == [0]  # equal scores: first wins
    assert nms(boxes, np.array([np.nan, 0.1, np.nan, np.nan, np.nan]), 0.5).tolist() == [1]
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


# ---- windowed features == features of the crops ----------------------------------------------------
def test_phog_windows_equal_phog_of_the_crops(astronaut: np.ndarray) -> None:
    embedder = create("phog")
    fast = windowed_features(embedder, astronaut, block=5)
    grey = grey_array(Image.fromarray(astronaut))
    boxes = np.array([[40, 30, 80, 70], [100, 60, 130, 100], [200, 100, 264, 164],
                      [5, 5, 25, 25]])
    pooled = fast.for_boxes(boxes)
    # Exactly the pyramid of the scene's orientation maps under each window ...
    maps = orientation_maps(grey, 8)
    for (x0, y0, x1, y1), vector in zip(boxes, pooled):
        cells = []
        for level in range(3):
            parts = 2 ** level
            sub = maps[:, y0:y1, x0:x1]
            rows, cols = cell_bounds(y1 - y0, parts), cell_bounds(x1 - x0, parts)
            level_cells = [sub[:, rows[i]:rows[i + 1], cols[j]:cols[j + 1]].mean(axis=(1, 2))
                           for i in range(parts) for j in range(parts)]
            block = np.concatenate(level_cells)
            cells.append(block / np.sqrt((block ** 2).sum() + 1e-10))
        np.testing.assert_allclose(vector, l2_normalise(np.concatenate(cells)[None])[0],
                                   atol=1e-5)
    # ... and, against PHOG of the cropped pixels, equal up to the crop's border pixels (whose
    # gradient the crop cannot see beyond its edge): close for every size, closest for large.
    crops = l2_normalise(np.concatenate([phog_descriptor(grey[y0:y1, x0:x1], 2, 8)
                                         for x0, y0, x1, y1 in boxes]))
    agreement = (pooled * crops).sum(axis=1)
    assert np.all(agreement > 0.9) and agreement[2] > 0.99, agreement
    # A 64 x 64 window is exactly what the embedder sees for a 64 x 64 crop (no resize).
    crop = Image.fromarray(astronaut).crop((200, 100, 264, 164))
    assert float(pooled[2] @ embedder.embed([crop])[0]) > 0.97
    # The grid path (strided views) and the gather path agree exactly.
    grid = window_grids(*astronaut.shape[:2], (30,), stride=5, aspect=4 / 3)[0]
    np.testing.assert_allclose(fast.for_grid(grid), fast.for_windows(30, 40, *grid.corners()),
                               atol=1e-6)


def test_colour_windows_equal_histograms_of_the_crops(astronaut: np.ndarray) -> None:
    embedder = create("hsv-histogram")  # stretches every image to 64 x 64 first
    fast = windowed_features(embedder, astronaut, block=4)
    boxes = np.array([[0, 0, 64, 64], [128, 64, 192, 128], [256, 176, 320, 240]])
    crops = [Image.fromarray(astronaut).crop(tuple(b)) for b in boxes]
    np.testing.assert_allclose(fast.for_boxes(boxes), embedder.embed(crops), atol=1e-5)
    # Other sizes only differ by the embedder's resampling to 64 px.
    boxes = np.array([[20, 20, 40, 40], [100, 40, 200, 140]])
    crops = [Image.fromarray(astronaut).crop(tuple(b)) for b in boxes]
    assert np.all((fast.for_boxes(boxes) * embedder.embed(crops)).sum(axis=1) > 0.97)


def test_gist_windows_match_the_crops_at_the_canonical_size(astronaut: np.ndarray) -> None:
    embedder = create("gist")  # canonical size 64: a 64 px window is not resized
    fast = windowed_features(embedder, astronaut)
    boxes = np.array([[60, 40, 124, 104], [160, 120, 224, 184]])
    crops = [Image.fromarray(astronaut).crop(tuple(b)) for b in boxes]
    # The crop is filtered with mirrored borders, the window with the real surroundings.
    assert np.all((fast.for_boxes(boxes) * embedder.embed(crops)).sum(axis=1) > 0.9)


def test_cnn_window_pooling_is_the_area_weighted_mean_of_the_feature_map(
        astronaut: np.ndarray) -> None:
    embedder = create("efficientnet-lite0", backend="torch", precision="fp32")
    assert EfficientNetMaps.supports(embedder)
    fast = windowed_features(embedder, astronaut, block=5)
    assert isinstance(fast, FeatureMapWindows)
    fmap, stride = fast.map, fast.stride
    assert fmap.shape[2] == 1280 and stride == pytest.approx(astronaut.shape[1] / fmap.shape[1])
    # Windows on cell boundaries: the plain mean of the cells they cover.
    cell = stride  # (fractional) scene pixels per map cell
    expected = fmap[1:4, 2:5].reshape(-1, 1280).mean(axis=0)
    got = fast.raw(3 * cell, 3 * cell, np.array([1 * cell]), np.array([2 * cell]))[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # Any window: the mean over its pixels of the map upsampled to pixels (nearest cell).
    rows = np.minimum((np.arange(astronaut.shape[0]) / stride).astype(int), fmap.shape[0] - 1)
    cols = np.minimum((np.arange(astronaut.shape[1]) / stride).astype(int), fmap.shape[1] - 1)
    for x0, y0, w, h in [(13, 27, 40, 40), (101, 52, 30, 40), (250, 150, 64, 80)]:
        direct = fmap[rows[y0:y0 + h]][:, cols[x0:x0 + w]].reshape(-1, 1280).mean(axis=0)
        pooled = fast.raw(w, h, np.array([y0]), np.array([x0]))[0]
        np.testing.assert_allclose(pooled, direct, rtol=0.1, atol=0.02)
    grid = window_grids(*astronaut.shape[:2], (40,), stride=10)[0]
    np.testing.assert_allclose(fast.for_grid(grid), fast.for_windows(40, 40, *grid.corners()),
                               atol=1e-5)


def test_threaded_band_scoring_equals_serial_for_cnn_windows(
        astronaut: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands of different window sizes are pooled on two threads at once; the CNN windows' cache
    of column weights must never mix two grids (it once raised a broadcast error mid-benchmark)."""
    import lookalike.recommend.regions as regions

    embedder = create("efficientnet-lite0")
    fast = windowed_features(embedder, astronaut, block=5)
    grids = window_grids(*astronaut.shape[:2], (20, 30, 40, 50, 60), stride=5)
    query = fast.for_boxes(np.array([[100, 60, 160, 140]]))[0]
    monkeypatch.setattr(regions, "BAND_FLOATS", 20_000)  # many small bands: much interleaving
    monkeypatch.setattr(regions, "SCORING_THREADS", 1)
    _, serial = regions.score_windows(fast, grids, lambda v: v @ query)
    monkeypatch.setattr(regions, "SCORING_THREADS", 2)
    for _ in range(3):
        _, threaded = regions.score_windows(fast, grids, lambda v: v @ query)
        np.testing.assert_allclose(threaded, serial, rtol=1e-5, atol=1e-6)


def test_fusion_windows_are_the_weighted_parts(astronaut: np.ndarray) -> None:
    fusion = create("phog+hsv-histogram", weights=[1.0, 0.5])
    fast = windowed_features(fusion, astronaut, block=5)
    grid = window_grids(*astronaut.shape[:2], (50,), stride=10)[0]
    fused = fast.for_grid(grid)
    phog = windowed_features(create("phog"), astronaut, 5).for_grid(grid)
    colour = windowed_features(create("hsv-histogram"), astronaut, 5).for_grid(grid)
    np.testing.assert_allclose(fused, l2_normalise(np.concatenate([phog, 0.5 * colour], 1)),
                               atol=1e-5)


def test_fast_windows_agree_with_crop_and_embed_on_the_best_window(
        products: pd.DataFrame) -> None:
    rng = np.random.default_rng(3)
    scene, like = like_scene(products, rng, distractors=2, size=(320, 240), side_range=(50, 70))
    embedder = create("phog+hsv-histogram")
    query = embedder.embed([decode_jpeg(products.loc[products["id"].astype(str) == like,
                                                     "image_jpeg"].iloc[0])])[0]
    prepared = prepare_scene(scene.image)
    grid = window_grids(prepared.height, prepared.width, (50,), stride=10, aspect=4 / 3)[0]
    fast = windowed_features(embedder, prepared.pixels, block=10).for_grid(grid)
    naive = CropWindows(embedder, prepared.pixels).for_grid(grid)
    # Not equal (the crops are resized to 64 px first) but they rank windows alike.
    assert np.corrcoef(fast @ query, naive @ query)[0, 1] > 0.8


# ---- scenes: edge cases ------------------------------------------------------------------------
def test_scene_edge_cases(products: pd.DataFrame) -> None:
    embedder = create("phog+hsv-histogram")
    query = embedder.embed([decode_jpeg(products["image_jpeg"].iloc[0])])[0]

    def best(image: Image.Image, **options) -> list:
        return find_regions(embedder, prepare_scene(image, **options), lambda v: v @ query,
                            top_regions=2)

    with pytest.raises(SceneError, match="smaller than the smallest window"):
        best(Image.new("RGB", (15, 12), (90, 90, 90)))
    grey = Image.fromarray(data.camera()).resize((200, 150))  # mode "L"
    regions = best(grey)
    assert len(regions) == 2 and all(r.box[2] <= 200 and r.box[3] <= 150 for r in regions)
    flat = Image.new("RGB", (120, 90), (255, 255, 255))  # no texture at all: no crash, no NaN
    assert all(np.isfinite(r.score) for r in best(flat))
    rgba = Image.fromarray(data.logo())  # 4 channels
    assert prepare_scene(rgba).pixels.shape[2] == 3
    huge = Image.fromarray(data.astronaut()).resize((3000, 2000))
    prepared = prepare_scene(huge, max_side=600)
    assert (prepared.width, prepared.height) == (600, 400)
    back = prepared.to_original(np.array([[60, 40, 120, 100]]))
    assert back.tolist() == [[300, 200, 600, 500]]


def test_scene_generator_places_real_products_without_overlap(products: pd.DataFrame) -> None:
    rng = np.random.default_rng(0)
    scene, like = like_scene(products, rng, distractors=4)
    assert scene.image.size == (640, 480) and len(scene.products) == 5
    boxes = np.array([p.box for p in scene.products])
    for n, box in enumerate(boxes):
        sides = box[2:] - box[:2]
        assert 40 <= sides.max() <= 160
        others = np.delete(boxes, n, axis=0)
        assert not box_iou(box, others).any()
    target = products.set_index(products["id"].astype(str)).loc[scene.target.item_id]
    liked = products.set_index(products["id"].astype(str)).loc[like]
    assert (liked["article_type"], liked["base_colour"]) == (target["article_type"],
                                                            target["base_colour"])
    assert liked["split"] == "train" and target["split"] == "test"
    x0, y0, x1, y1 = scene.target.box  # the pasted pixels are the product photo's, white included
    patch = np.asarray(scene.image)[y0:y1, x0:x1]
    assert patch[:3, :3].mean() > 200


def test_product_mask_drops_the_backdrop_and_keeps_the_product(products: pd.DataFrame) -> None:
    photo = decode_jpeg(products.iloc[0]["image_jpeg"])
    pixels = np.asarray(photo)
    mask = product_mask(photo)
    assert mask.shape == pixels.shape[:2]
    assert not mask[0].any() and not mask[-1].any()  # a catalogue photo's border is backdrop
    assert 0.05 < mask.mean() < 0.95
    # a white patch *inside* a dark product is not backdrop: it is not connected to the border
    framed = np.full((40, 30, 3), 255, np.uint8)
    framed[10:30, 8:22] = 20
    framed[17:23, 12:18] = 255
    inner = product_mask(Image.fromarray(framed))
    assert inner[10:30, 8:22].all() and not inner[:10].any()
    noisy = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert product_mask(Image.fromarray(noisy)).all()  # no plain border: all product


def test_cutout_scenes_place_the_product_itself(products: pd.DataFrame) -> None:
    scene, _ = like_scene(products, np.random.default_rng(3), distractors=2, cutout=True)
    background = np.asarray(compose_scene(scene.background, [], np.random.default_rng(0)).image)
    pixels = np.asarray(scene.image)
    for placed in scene.products:
        x0, y0, x1, y1 = placed.box  # the object's own box: its border rows hold product pixels
        changed = np.abs(pixels[y0:y1, x0:x1].astype(int)
                         - background[y0:y1, x0:x1].astype(int)).max(axis=2) > 30
        assert changed[0].any() and changed[-1].any() and changed[:, 0].any()
        assert changed.mean() < 0.97  # the white backdrop was not pasted


# ---- latent SVM --------------------------------------------------------------------------------
def test_latent_svm_recovers_the_planted_region(products: pd.DataFrame) -> None:
    """Each positive scene hides one watch among background and a non-watch product; the MI-SVM
    must pick the watch's window (IoU >= 0.5; a random window does in < 10% of cases) in most
    positive scenes and find the watch in new scenes."""
    rng = np.random.default_rng(0)
    train = products[products["split"] == "train"]
    watches = train[train["article_type"] == "Watches"].sample(30, random_state=1)
    others = train[train["article_type"].isin(["Tshirts", "Casual Shoes", "Kurtas",
                                               "Handbags", "Jeans"])].sample(60, random_state=1)
    embedder = create("phog+hsv-histogram")
    backgrounds = ["coffee", "brick", "grass", "gravel", "rocket", "chelsea"]

    def bag(products_in_scene: list, background: str) -> tuple[np.ndarray, np.ndarray, object]:
        scene = compose_scene(background, products_in_scene, rng, size=(160, 120),
                              side_range=(52, 56))
        prepared = prepare_scene(scene.image)
        grids = window_grids(prepared.height, prepared.width, (40, 50), stride=5, aspect=4 / 3)
        fast = windowed_features(embedder, prepared.pixels, block=5)
        return (np.concatenate([fast.for_grid(g) for g in grids]),
                np.concatenate([g.boxes() for g in grids]), scene)

    def photo(row: pd.Series, role: str) -> tuple:
        return str(row["id"]), decode_jpeg(row["image_jpeg"]), role

    positives, truths = [], []
    for n in range(12):
        features, boxes, scene = bag([photo(watches.iloc[n], "target"),
                                      photo(others.iloc[n], "distractor")], backgrounds[n % 6])
        positives.append(features)
        truths.append((scene.target.box, boxes))
    negatives = np.concatenate([
        bag([photo(others.iloc[12 + n], "distractor"), photo(others.iloc[36 + n], "distractor")],
            backgrounds[n % 6])[0] for n in range(12)])
    model = fit_latent_svm(positives, negatives, start="density", iterations=10)
    chosen = [box_iou(truth, boxes[c])[0]
              for (truth, boxes), c in zip(truths, model.info["windows_chosen"])]
    chance = np.mean([np.mean(box_iou(truth, boxes) >= 0.5) for truth, boxes in truths])
    assert chance < 0.1
    assert np.mean(np.array(chosen) >= 0.5) >= 2 / 3, np.round(chosen, 2)
    found = []
    for n in range(12, 22):
        features, boxes, scene = bag([photo(watches.iloc[n], "target"),
                                      photo(others.iloc[n + 12], "distractor")], backgrounds[n % 6])
        found.append(box_iou(scene.target.box, boxes[int(np.argmax(model.score(features)))])[0])
    assert np.mean(np.array(found) >= 0.5) >= 0.7, np.round(found, 2)


def test_refine_boxes_nudges_within_the_scene() -> None:
    from lookalike.recommend.regions import refine_boxes

    boxes = refine_boxes(np.array([40, 40, 80, 90]), width=200, height=150)
    assert boxes[0].tolist() == [40, 40, 80, 90] and len(boxes) == 27
    assert len({tuple(b) for b in boxes}) == len(boxes)
    assert [45, 40, 85, 90] in boxes.tolist() and [35, 34, 75, 84] in boxes.tolist()
    # At the scene's corner, variants are pushed inside (never cut smaller than their scale).
    corner = refine_boxes(np.array([0, 0, 40, 50]), width=60, height=60)
    assert (corner[:, :2] >= 0).all() and (corner[:, 2] <= 60).all() and (corner[:, 3] <= 60).all()
    assert {b[2] - b[0] for b in corner.tolist()} == {34, 40, 46}
