"""PHOG, GIST and fusion embedders on real product photos and scikit-image sample photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data
from skimage.feature import hog

from lookalike.errors import LookalikeError, UnknownNameError
from lookalike.models.base import available, create, load
from lookalike.models.fusion import FusionEmbedder
from lookalike.models.handcrafted import GISTEmbedder, PHOGEmbedder, grey_array, phog_descriptor


@pytest.fixture(scope="module")
def products(products_parquet: Path) -> pd.DataFrame:
    frame = pd.read_parquet(products_parquet, columns=["id", "article_type", "split",
                                                       "image_jpeg"])
    frame = frame[(frame["split"] == "train") & frame["article_type"].isin(
        ["Tshirts", "Watches", "Casual Shoes", "Handbags", "Sunglasses", "Kurtas"])]
    return frame.sample(600, random_state=0)


def _images(frame: pd.DataFrame) -> list[Image.Image]:
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in frame["image_jpeg"]]


def test_registered_and_sized() -> None:
    assert {"phog", "gist", "fusion"} <= set(available())
    assert create("phog").dim == 8 * (1 + 4 + 16)
    assert create("phog", levels=3, bins=12).dim == 12 * 85
    assert create("gist").dim == 4 * 8 * 16
    with pytest.raises(LookalikeError, match="multiple of 2"):
        create("phog", levels=3, size=60)


def test_hog_of_a_plain_image_is_zero() -> None:
    plain = Image.new("RGB", (60, 80), (180, 40, 40))
    assert not create("phog").embed([plain]).any()
    assert not create("gist").embed([plain]).any()  # zero-mean Gabor kernels: no response


def test_phog_equals_scikit_image_hog_per_level(products: pd.DataFrame) -> None:
    embedder = PHOGEmbedder(levels=2, bins=8, size=64)
    for image in _images(products.head(12)):
        grey = grey_array(image, 64).astype(np.float64)
        reference = np.concatenate([
            hog(grey, orientations=8, pixels_per_cell=(64 // 2 ** level,) * 2,
                cells_per_block=(2 ** level,) * 2, block_norm="L2")
            for level in range(3)])
        ours = phog_descriptor(grey, levels=2, bins=8)[0]
        np.testing.assert_allclose(ours, reference, atol=1e-5)
        reference /= np.linalg.norm(reference)
        np.testing.assert_allclose(embedder.embed([image])[0], reference, atol=1e-5)


def test_phog_sees_shape_not_colour(products: pd.DataFrame) -> None:
    image = _images(products.head(1))[0]
    array = np.asarray(image)
    swapped = Image.fromarray(np.ascontiguousarray(array[:, :, ::-1]))  # RGB -> BGR
    flipped = image.transpose(Image.Transpose.ROTATE_90)
    embedder = create("phog")
    a, b, c = embedder.embed([image, swapped, flipped])
    assert float(a @ b) > float(a @ c)


def _orientation_energy(vector: np.ndarray, embedder: GISTEmbedder) -> np.ndarray:
    cells = vector.reshape(embedder.scales, embedder.orientations, -1)
    return cells.sum(axis=(0, 2))


def test_gist_responds_to_stripe_orientation() -> None:
    embedder = GISTEmbedder()
    x = np.arange(64)
    stripes = ((np.sin(2 * np.pi * x / 8) > 0) * 200 + 30).astype(np.uint8)
    vertical = Image.fromarray(np.tile(stripes[None, :], (64, 1))).convert("RGB")  # varies along x
    horizontal = vertical.transpose(Image.Transpose.ROTATE_90)  # varies along y
    v_energy, h_energy = (_orientation_energy(v, embedder)
                          for v in embedder.embed([vertical, horizontal]))
    quarter = embedder.orientations // 2  # the angle index of 90 degrees
    assert int(np.argmax(v_energy)) == 0 and int(np.argmax(h_energy)) == quarter
    assert v_energy[0] > 5 * v_energy[quarter] and h_energy[quarter] > 5 * h_energy[0]


def test_gist_orientation_channels_follow_a_rotated_real_photo() -> None:
    embedder = GISTEmbedder()
    brick = Image.fromarray(data.brick()).convert("RGB").resize((128, 128))
    turned = brick.transpose(Image.Transpose.ROTATE_90)
    a, b = (_orientation_energy(v, embedder) for v in embedder.embed([brick, turned]))
    shift = embedder.orientations // 2
    assert np.corrcoef(a, np.roll(b, -shift))[0, 1] > 0.9
    assert np.corrcoef(a, b)[0, 1] < 0.5


def test_fusion_weights_blocks_and_round_trips(tmp_path: Path, products: pd.DataFrame) -> None:
    images = _images(products.head(6))
    fusion = create("phog+gist", weights=[1.0, 2.0])
    assert isinstance(fusion, FusionEmbedder) and fusion.name == "phog+gist"
    assert fusion.dim == create("phog").dim + create("gist").dim
    fused = fusion.embed(images)
    phog, gist = create("phog").embed(images), create("gist").embed(images)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-5)
    # cos_fused = (1 * cos_phog + 4 * cos_gist) / 5 with weights 1 and 2.
    expected = (1.0 * (phog @ phog.T) + 4.0 * (gist @ gist.T)) / 5.0
    np.testing.assert_allclose(fused @ fused.T, expected, atol=1e-5)
    folder = fusion.save(tmp_path / "fusion")
    loaded = load(folder)
    assert loaded.embedder_id == fusion.embedder_id and loaded.weights == [1.0, 2.0]
    np.testing.assert_allclose(loaded.embed(images), fused, atol=1e-6)
    assert create("phog+gist").embedder_id != fusion.embedder_id


def test_fusion_bad_parts_are_clear_errors() -> None:
    with pytest.raises(UnknownNameError, match="nope"):
        create("phog+nope")
    with pytest.raises(LookalikeError, match="2 parts got 3 weights"):
        create("phog+gist", weights=[1, 1, 1])
    with pytest.raises(LookalikeError, match=">= 0"):
        create("phog+gist", weights=[1, -1])


def test_fusion_fit_picks_the_best_weights_on_validation(products: pd.DataFrame) -> None:
    images = _images(products)
    labels = products["article_type"].tolist()
    fusion = create("phog+gist").fit(images, labels, weight_grid=(0.0, 0.5, 1.0, 2.0))
    tried = {tuple(point["weights"]): point["P@10"] for point in fusion.fit_report}
    assert len(tried) == 4
    assert tried[tuple(fusion.weights)] == max(tried.values())
    assert max(tried.values()) > 0.3  # six classes: chance is about 1/6
