"""The three built-in embedders on real images: scikit-image's samples, the bundled catalogue's
product photos and Fashion-MNIST.

EfficientNet runs at 112 px here (4x cheaper than 224) except where 224 matters; its ONNX files
go to a temporary folder, never the user's cache.
"""

from __future__ import annotations

import gzip
import io
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data

from lookalike.errors import LookalikeError, ModelMismatchError, UnknownNameError
from lookalike.models import base, int8
from lookalike.models.baselines import HSVHistogramEmbedder, PixelsEmbedder
from lookalike.models.efficientnet import EfficientNetLite0Embedder, packaged_weights_path

CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module", autouse=True)
def onnx_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOKALIKE_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def catalogue() -> pd.DataFrame:
    with resources.as_file(resources.files("lookalike") / "data" / "demo.parquet") as path:
        return pd.read_parquet(path).sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def product_photos(catalogue) -> list[Image.Image]:
    """16 real product photos (60x80 JPEGs) of different article types."""
    rows = catalogue.drop_duplicates("article_type").head(16)
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in rows["image_jpeg"]]


@pytest.fixture(scope="module")
def fp32_112() -> EfficientNetLite0Embedder:
    return EfficientNetLite0Embedder(image_size=112, precision="fp32")


def torch_lite0(**options) -> EfficientNetLite0Embedder:
    """The PyTorch backend on one thread (two OpenMP threads crawl on a busy 2-core machine)."""
    return EfficientNetLite0Embedder(backend="torch", precision="fp32", num_threads=1, **options)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ---- EfficientNet-Lite0 ---------------------------------------------------------------------
def test_chelsea_is_a_cat_and_coffee_is_not():
    model = torch_lite0()  # 224 px
    cat, coffee = model.classify([Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())])
    assert cat[0][0] in CATS and cat[0][1] > 0.5, cat
    assert sum(p for i, p in cat if i in CATS) > 0.9
    assert coffee[0][0] not in CATS and coffee[0][0] in (967, 968, 504), coffee  # espresso/cup/mug
    assert all(0 <= p <= 1 for _, p in cat) and [p for _, p in cat] == sorted(
        [p for _, p in cat], reverse=True)


def test_classification_survives_112_px():
    model = torch_lite0(image_size=112)
    ranked = model.classify([Image.fromarray(data.chelsea())])[0]
    assert ranked[0][0] in CATS, ranked


def test_weights_load_strictly_with_clear_errors(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in
             torch.load(packaged_weights_path(), map_location="cpu", weights_only=True).items()}
    partial = {k: v for k, v in state.items() if k != "_blocks.3._bn1.weight"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelMismatchError, match=r"1 missing: _blocks\.3\._bn1\.weight"):
        EfficientNetLite0Embedder(weights_path=tmp_path / "partial.safetensors")

    wrong = dict(state, **{"_fc.weight": torch.zeros(10, 1280)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ModelMismatchError, match=r"wrong shape: _fc\.weight"):
        EfficientNetLite0Embedder(weights_path=tmp_path / "wrong.safetensors")

    extra = dict(state, **{"head.extra": torch.zeros(3)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ModelMismatchError, match=r"1 unexpected: head\.extra"):
        EfficientNetLite0Embedder(weights_path=tmp_path / "extra.safetensors")

    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ModelMismatchError, match="cannot read weights"):
        EfficientNetLite0Embedder(weights_path=tmp_path / "junk.pth")

    # Lite0 weights do not fit Lite2's wider, deeper network: named keys, not a traceback.
    with pytest.raises(ModelMismatchError, match="do not fit efficientnet-lite2"):
        EfficientNetLite0Embedder(variant="efficientnet-lite2",
                                  weights_path=tmp_path / "partial.safetensors")
    with pytest.raises(ModelMismatchError, match="no weights loaded"):
        EfficientNetLite0Embedder(variant="efficientnet-lite1").embedder_id
    with pytest.raises(LookalikeError, match="not found"):
        EfficientNetLite0Embedder(weights_path=tmp_path / "absent.safetensors")


def test_local_weights_give_the_same_model(tmp_path, product_photos):
    from safetensors.torch import save_file

    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "lite0.safetensors"))
    packaged = torch_lite0(image_size=112)
    local = torch_lite0(image_size=112, weights_path=tmp_path / "lite0.safetensors")
    assert local.embedder_id == packaged.embedder_id  # the id follows the weights' content
    np.testing.assert_array_equal(local.embed(product_photos[:4]),
                                  packaged.embed(product_photos[:4]))


def test_onnx_agrees_with_torch_and_the_default_is_int8_only_where_it_holds(fp32_112,
                                                                           product_photos):
    torch_model = torch_lite0(image_size=112)
    default = EfficientNetLite0Embedder(image_size=112)  # precision int8, self-checked
    reference = torch_model.embed(product_photos)
    onnx_fp32 = fp32_112.embed(product_photos)
    assert cosine_rows(onnx_fp32, reference).min() > 0.99
    verdict = default.int8_verdict()
    assert verdict.images == int8.CHECK_IMAGES and verdict.minimum <= verdict.p1 <= verdict.mean
    vectors = default.embed(product_photos)
    if verdict.passed:  # this CPU runs int8 faithfully (VNNI, AMX, ARM dot products, ...)
        assert default.effective_precision == default.config()["precision"] == "int8"
        # the self-check's thresholds hold on other photos too
        assert int8.check_agreement(vectors, onnx_fp32).passed
        assert default.onnx_path().stat().st_size < fp32_112.onnx_path().stat().st_size / 2
        assert len({torch_model.embedder_id, fp32_112.embedder_id, default.embedder_id}) == 3
    else:  # e.g. x86 without VNNI: int8 drifts, so the default runs fp32 under fp32's id
        assert default.effective_precision == default.config()["precision"] == "fp32"
        assert default.embedder_id == fp32_112.embedder_id
        np.testing.assert_allclose(vectors, onnx_fp32, atol=1e-5)
    # Same photos, a different order and batch size: the same rows (nothing leaks across a batch).
    again = default.embed(product_photos[::-1], batch_size=5)[::-1]
    np.testing.assert_allclose(again, vectors, atol=1e-5)


def test_failed_int8_self_check_falls_back_to_fp32_and_says_so_once(fp32_112, monkeypatch,
                                                                    caplog, tmp_path):
    EfficientNetLite0Embedder(image_size=112).int8_verdict()  # measured (or cached) as usual
    monkeypatch.setattr(int8, "MIN_MEAN_COSINE", 1.01)  # a bar no CPU clears
    model = EfficientNetLite0Embedder(image_size=112)
    with caplog.at_level("WARNING", logger="lookalike"):
        assert model.effective_precision == "fp32"
        assert model.embedder_id == fp32_112.embedder_id  # never mixed with int8 vectors
        assert model.config()["precision"] == "fp32"
    said = [r.getMessage() for r in caplog.records if "drifts from fp32" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and "using fp32" in said[0]
    # The saved config records what was used; loading it here gives fp32 again.
    loaded = base.load(model.save(tmp_path / "model"))
    assert loaded.config()["precision"] == "fp32" and loaded.embedder_id == model.embedder_id
    forced = EfficientNetLite0Embedder(image_size=112, check_int8=False)
    assert forced.effective_precision == "int8" and forced.embedder_id != fp32_112.embedder_id


def test_self_check_verdicts_are_cached_per_machine(tmp_path):
    calls = []

    def measure() -> int8.Verdict:
        calls.append(1)
        return int8.check_agreement(np.eye(4, 8), np.eye(4, 8) + 0.01)

    first = int8.cached_verdict(tmp_path / "v.json", measure)
    second = int8.cached_verdict(tmp_path / "v.json", measure)
    assert calls == [1] and first == second and first.passed and first.mean > 0.99
    bad = int8.check_agreement(np.eye(4, 8), np.roll(np.eye(4, 8), 1, axis=1) + np.eye(4, 8))
    assert not bad.passed and bad.mean == pytest.approx(0.5 ** 0.5, abs=1e-6)


def test_built_onnx_files_are_shared_between_projects(onnx_cache, tmp_path, product_photos):
    project_model = EfficientNetLite0Embedder(image_size=112, precision="int8",
                                              cache_dir=tmp_path / "project" / "onnx")
    vectors = project_model.embed(product_photos[:4])
    local = project_model.onnx_path()
    shared = onnx_cache / "onnx" / local.name
    assert local.parent == tmp_path / "project" / "onnx" and local.is_file() and shared.is_file()
    assert local.read_bytes() == shared.read_bytes()
    assert not list(local.parent.glob(".*"))  # no temporary files left behind
    np.testing.assert_array_equal(
        EfficientNetLite0Embedder(image_size=112, precision="int8").embed(product_photos[:4]),
        vectors)


def test_resize_policy_and_size_are_part_of_the_identity(fp32_112, product_photos):
    pad = EfficientNetLite0Embedder(image_size=112, precision="fp32", resize="pad")
    full = EfficientNetLite0Embedder(precision="fp32")
    ids = {fp32_112.embedder_id, pad.embedder_id, full.embedder_id}
    assert len(ids) == 3 and full.config()["image_size"] == 224
    assert fp32_112.config()["resize"] == "stretch"  # the default
    padded = pad.prepare(product_photos[0])
    assert padded.shape == (112, 112, 3) and padded.dtype == np.uint8
    assert (padded[:, :5] == 255).all()  # a 60x80 photo is padded with white at the sides
    np.testing.assert_array_equal(fp32_112.prepare(product_photos[0]), np.asarray(
        product_photos[0].resize((112, 112), Image.Resampling.BILINEAR)))


def test_bad_options_fail_with_one_line_errors():
    for options, message in [({"precision": "fp16"}, "unknown precision"),
                             ({"backend": "tf"}, "unknown backend"),
                             ({"backend": "torch", "precision": "int8"}, "needs backend 'onnx'"),
                             ({"resize": "squash"}, "unknown resize policy"),
                             ({"image_size": 8}, "out of range"),
                             ({"image_size": "big"}, "whole number"),
                             ({"num_threads": 0}, "at least 1"),
                             ({"variant": "efficientnet-b0"}, "unknown variant")]:
        with pytest.raises(LookalikeError, match=message) as caught:
            EfficientNetLite0Embedder(**options)
        assert "\n" not in str(caught.value)
    with pytest.raises(UnknownNameError):
        base.create("efficientnet-lite9")


# ---- all three embedders --------------------------------------------------------------------
@pytest.fixture(scope="module")
def three(fp32_112) -> list[base.Embedder]:
    return [base.create("pixels"), base.create("hsv-histogram", grid=2), fp32_112]


def test_outputs_are_deterministic_unit_float32_rows(three, product_photos):
    for model in three:
        vectors = model.embed(product_photos)
        assert vectors.shape == (len(product_photos), model.dim) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(model.embed(product_photos), vectors)
        # Different products are not all the same vector.
        assert (vectors @ vectors.T)[np.triu_indices(len(vectors), 1)].min() < 0.999
    assert [m.dim for m in three] == [32 * 32 * 3, 5 * 256, 1280]


def test_save_then_load_gives_identical_embeddings(three, tmp_path, product_photos):
    int8 = EfficientNetLite0Embedder(image_size=112, precision="int8")
    for n, model in enumerate([*three, int8]):
        folder = model.save(tmp_path / f"model-{n}")
        assert {p.name for p in folder.iterdir()} <= {"config.json", "weights.safetensors"}
        loaded = base.load(folder)
        assert type(loaded) is type(model) and loaded.embedder_id == model.embedder_id
        np.testing.assert_array_equal(loaded.embed(product_photos), model.embed(product_photos))


# ---- the baselines on real photos -----------------------------------------------------------
def test_hsv_histogram_puts_red_products_in_red_bins(catalogue):
    model = HSVHistogramEmbedder(ignore_background=True, sqrt=False)  # raw fractions, no backdrop

    def hue_mass(colour: str) -> np.ndarray:
        rows = catalogue[catalogue["base_colour"] == colour].head(12)
        images = [Image.open(io.BytesIO(b)).convert("RGB") for b in rows["image_jpeg"]]
        hist = model.embed(images)  # unit rows; only the shares per bin matter below
        hist = (hist / hist.sum(axis=1, keepdims=True)).reshape(len(images), 16, 4, 4)
        hue = hist[:, :, 1:, :].sum(axis=(2, 3))  # coloured pixels (above the palest saturation)
        return hue / hue.sum(axis=1, keepdims=True)

    red, blue = hue_mass("Red"), hue_mass("Blue")
    red_bins = [15, 0, 1]  # hue within ~30 degrees of 0
    blue_bins = [8, 9, 10, 11]  # 180-270 degrees
    assert (red[:, red_bins].sum(axis=1) > 0.8).sum() >= 10
    assert (blue[:, red_bins].sum(axis=1) < 0.5).sum() >= 9
    assert (np.isin(blue.argmax(axis=1), blue_bins)).sum() >= 8


def test_hsv_histogram_of_one_colour_and_of_plain_white():
    model = HSVHistogramEmbedder(bins=(8, 3, 3))
    red = Image.new("RGB", (60, 80), (220, 10, 10))
    white = Image.new("RGB", (60, 80), (255, 255, 255))
    vectors = model.embed([red, white])
    hot = np.flatnonzero(vectors[0])
    expected_bin = model.bin_of(np.asarray(red.convert("HSV")))[0][0, 0]
    assert len(hot) == 1 and hot[0] == expected_bin and expected_bin == 2 * 3 + 2  # h0 s2 v2
    assert np.flatnonzero(vectors[1]).tolist() == [2]  # hue 0, palest, brightest
    masked = HSVHistogramEmbedder(bins=(8, 3, 3), ignore_background=True).embed([white])
    np.testing.assert_allclose(np.linalg.norm(masked, axis=1), 1.0)  # all backdrop: kept, not 0


def test_pixels_are_the_resized_photo(product_photos):
    photo = product_photos[0]
    vector = PixelsEmbedder(size=(24, 32), colour="grey").embed_one(photo)
    manual = np.asarray(photo.resize((24, 32), Image.Resampling.BILINEAR).convert("L"), np.float32)
    np.testing.assert_allclose(vector, manual.ravel() / np.linalg.norm(manual), atol=1e-6)
    centred = PixelsEmbedder(size=(24, 32), colour="grey", centre=True).embed_one(photo)
    assert abs(centred.sum()) < 1e-3


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    if raw[2:4] == b"\x08\x03":
        n, h, w = np.frombuffer(raw[4:16], ">i4")
        return np.frombuffer(raw[16:], np.uint8).reshape(n, h, w)
    return np.frombuffer(raw[8:], np.uint8)


def test_raw_pixels_reproduce_the_fashion_mnist_baseline(fashion_mnist_dir):
    queries, query_labels = (_idx(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz")[:1000],
                             _idx(fashion_mnist_dir / "t10k-labels-idx1-ubyte.gz")[:1000])
    gallery, gallery_labels = (_idx(fashion_mnist_dir / "train-images-idx3-ubyte.gz")[:6000],
                               _idx(fashion_mnist_dir / "train-labels-idx1-ubyte.gz")[:6000])
    model = PixelsEmbedder(size=28, colour="grey")  # native size: the pixels as they are
    q = model.embed([Image.fromarray(a) for a in queries])
    g = model.embed([Image.fromarray(a) for a in gallery])
    top = np.argpartition(-(q @ g.T), 10, axis=1)[:, :10]
    precision = (gallery_labels[top] == query_labels[:, None]).mean()
    assert 0.72 < precision < 0.85, precision  # full protocol: 0.81 (docs/embedders.md)
