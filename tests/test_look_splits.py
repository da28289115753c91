"""Generated shop-the-look scenes: train / validation / test share no background and no product,
by construction, and the generator draws what its docstring says."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from scene_products import common_products

from lookalike.recommend.scene_backgrounds import (
    SPLITS,
    BackgroundError,
    Backgrounds,
    photo_ids,
    procedural_ids,
    procedural_texture,
    split_manifest,
    split_of,
)
from lookalike.recommend.scene_generator import (
    EVALUATION_SPEC,
    SceneGenerationError,
    SceneGenerator,
    product_split,
)


@pytest.fixture(scope="module")
def frame(products_parquet: Path) -> pd.DataFrame:
    """Real products per catalogue split, enough article types for like-scenes."""
    return common_products(products_parquet)


def test_every_background_is_in_exactly_one_split() -> None:
    ids = photo_ids() + procedural_ids()
    assert len(ids) == len(set(ids)) and len(ids) > 20_000
    by_split = {name: set(Backgrounds(name).ids()) for name in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a != b:
                assert not by_split[a] & by_split[b], (a, b)
    assert set().union(*by_split.values()) == set(ids)
    assert all(split_of(i) == name for name, found in by_split.items() for i in found)
    # Every split has photos and textures (the bundled photos alone give each split some).
    manifest = split_manifest()
    for name in SPLITS:
        assert manifest["splits"][name]["procedural"] > 1000, name
    assert sum(len(manifest["splits"][n]["photos"]) for n in SPLITS) == len(photo_ids())
    # The split depends on the id and seed only, not on which other backgrounds exist.
    assert split_of("skimage:coffee") == split_of("skimage:coffee")
    assert {split_of(i, seed=99) for i in procedural_ids()[:300]} == set(SPLITS)


def test_products_are_split_by_catalogue_split_and_a_seeded_hash(frame: pd.DataFrame) -> None:
    splits = {name: set(SceneGenerator(frame, name).products["id"]) for name in SPLITS}
    assert not splits["train"] & splits["validation"]
    assert not (splits["train"] | splits["validation"]) & splits["test"]
    test_ids = set(frame.loc[frame["split"] == "test", "id"])
    assert splits["test"] == test_ids
    assert all(product_split(i, "train") in ("train", "validation") for i in splits["train"])
    assert 0.03 < len(splits["validation"]) / (len(frame) - len(test_ids)) < 0.2


@pytest.mark.parametrize("split", SPLITS)
def test_scenes_of_a_split_use_only_its_backgrounds_and_products(frame: pd.DataFrame,
                                                                  split: str) -> None:
    generator = SceneGenerator(frame, split, EVALUATION_SPEC)
    own = set(generator.products["id"])
    rng = np.random.default_rng(3)
    for i in range(4):
        cutout = bool(i % 2)
        scene, like = generator.like_scene(rng, cutout=cutout)
        assert split_of(scene.background) == split
        assert {p.item_id for p in scene.products} <= own
        assert frame.set_index("id").loc[like, "split"] == "train" and like != scene.target.item_id
        assert scene.image.size == (640, 480) and scene.instances.shape == (480, 640)
        for index, product in enumerate(scene.products):
            x0, y0, x1, y1 = product.box
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
            assert max(x1 - x0, y1 - y0) <= 160 * 1.25  # side, then rotation
            assert cutout or max(x1 - x0, y1 - y0) >= 70  # a pasted photo's box is the photo's
            seen = scene.instances[y0:y1, x0:x1] == index + 1
            assert seen.any()  # visible, at least in part
            assert (scene.instances == index + 1).sum() == seen.sum()  # only inside its box


def test_pasted_and_cut_out_products_differ_as_documented(frame: pd.DataFrame) -> None:
    generator = SceneGenerator(frame, "validation", EVALUATION_SPEC)
    pasted, _ = generator.like_scene(np.random.default_rng(5), cutout=False)
    cut, _ = generator.like_scene(np.random.default_rng(5), cutout=True)
    fill = lambda s: np.mean([(s.instances[b[1]:b[3], b[0]:b[2]] > 0).mean()  # noqa: E731
                              for b in (p.box for p in s.products)])
    assert fill(pasted) > 0.9 > fill(cut)  # a pasted photo fills its box; a cut-out does not


def test_procedural_textures_are_deterministic_and_ids_are_checked() -> None:
    first = np.asarray(procedural_texture("procedural:noise:12", (64, 48)))
    again = np.asarray(procedural_texture("procedural:noise:12", (64, 48)))
    other = np.asarray(procedural_texture("procedural:noise:13", (64, 48)))
    assert first.shape == (48, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    with pytest.raises(BackgroundError, match="not a procedural texture id"):
        procedural_texture("procedural:plaid:1", (64, 48))
    with pytest.raises(BackgroundError, match="unknown split"):
        Backgrounds("holdout")


def test_a_split_without_enough_products_is_a_clear_error() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (60, 80), "white").save(buffer, "JPEG")
    tiny = pd.DataFrame({"id": ["1", "2"], "split": ["test", "test"],
                         "article_type": ["Tshirts", "Watches"], "base_colour": ["Red", "Red"],
                         "image_jpeg": [buffer.getvalue()] * 2})
    with pytest.raises(SceneGenerationError, match="the test split has 2 products"):
        SceneGenerator(tiny, "test")
