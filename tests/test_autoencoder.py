"""Paper 001's autoencoders (``autoencoder``, ``conv-autoencoder``), trained for real on small
slices of Fashion-MNIST and of the bundled demo catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.evaluate.retrieval import evaluate_retrieval
from lookalike.models import base
from lookalike.models.autoencoder import AutoencoderEmbedder, ConvAutoencoderEmbedder
from lookalike.models.cnn import NotTrainedError
from lookalike.models.datasets import ImageTensors, array_images, fashion_mnist_tensors
from lookalike.models.training import TrainingError

FAST = {"progress": False, "threads": 2}
FMNIST = {"image_size": (28, 28), "channels": 1}


def chance_precision(query_labels: list[str], gallery_labels: list[str]) -> float:
    """Expected P@k of a random ranking: the mean share of the gallery in the query's class."""
    values, counts = np.unique(np.asarray(gallery_labels), return_counts=True)
    share = dict(zip(values.tolist(), (counts / len(gallery_labels)).tolist()))
    return float(np.mean([share.get(label, 0.0) for label in query_labels]))


def labels_of(data: ImageTensors) -> list[str]:
    assert data.labels is not None
    return [str(v) for v in data.labels.tolist()]


@pytest.fixture(scope="module")
def fmnist_train() -> ImageTensors:
    return fashion_mnist_tensors("train", limit=3000, seed=1)


@pytest.fixture(scope="module")
def fmnist_test() -> ImageTensors:
    return fashion_mnist_tensors("test", limit=1000, seed=2)


@pytest.fixture(scope="module")
def dense(fmnist_train: ImageTensors) -> AutoencoderEmbedder:
    model = base.create("autoencoder", **FMNIST, seed=3)
    assert isinstance(model, AutoencoderEmbedder)
    return model.fit_tensors(fmnist_train, epochs=4, patience=0, **FAST)


@pytest.fixture(scope="module")
def conv(fmnist_train: ImageTensors) -> ConvAutoencoderEmbedder:
    model = base.create("conv-autoencoder", **FMNIST, seed=3)
    assert isinstance(model, ConvAutoencoderEmbedder)
    return model.fit_tensors(fmnist_train, epochs=2, patience=0, **FAST)


@pytest.mark.parametrize("which", ["dense", "conv"])
def test_reconstruction_loss_falls(which: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(which)
    history = model.training_result.history
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    # inputs are standardised per channel: predicting the mean image would cost about 1.0
    assert history[-1]["val_loss"] < 0.5
    assert model.training_result.monitor == "val_loss"


@pytest.mark.parametrize("which", ["dense", "conv"])
def test_embeddings_are_unit_float32_rows_that_retrieve_by_class(
        which: str, request: pytest.FixtureRequest, fmnist_train: ImageTensors,
        fmnist_test: ImageTensors) -> None:
    model = request.getfixturevalue(which)
    queries = model.embed_tensors(fmnist_test.images)
    gallery = model.embed_tensors(fmnist_train.images)
    assert queries.shape == (1000, model.dim) and queries.dtype == np.float32
    assert model.dim == (64 if which == "dense" else 128)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    report = evaluate_retrieval(queries, labels_of(fmnist_test), gallery, labels_of(fmnist_train))
    chance = chance_precision(labels_of(fmnist_test), labels_of(fmnist_train))
    assert chance == pytest.approx(0.1, abs=0.02)
    assert report.metrics["P@10"] > 0.6  # 10 balanced classes: chance is 0.1


def test_pil_path_matches_tensor_path(conv: ConvAutoencoderEmbedder,
                                      fmnist_test: ImageTensors) -> None:
    images = array_images(fmnist_test.images[:20, 0].numpy())
    np.testing.assert_allclose(conv.embed(images), conv.embed_tensors(fmnist_test.images[:20]),
                               atol=1e-5)


@pytest.mark.parametrize("which", ["dense", "conv"])
def test_save_load_gives_identical_embeddings(which: str, request: pytest.FixtureRequest,
                                              fmnist_test: ImageTensors, tmp_path: Path) -> None:
    model = request.getfixturevalue(which)
    folder = model.save(tmp_path / which)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "training.json",
                                                         "weights.safetensors"]
    saved = json.loads((folder / "config.json").read_text())
    assert saved["kind"] == model.kind and saved["dim"] == model.dim
    loaded = base.load(folder)
    assert type(loaded) is type(model)
    assert loaded.embedder_id == model.embedder_id
    np.testing.assert_array_equal(loaded.embed_tensors(fmnist_test.images[:64]),
                                  model.embed_tensors(fmnist_test.images[:64]))


def test_embedder_id_changes_with_weights(fmnist_train: ImageTensors) -> None:
    data = fmnist_train.subset(np.arange(500))
    a = base.create("autoencoder", **FMNIST)
    untrained = a.embedder_id
    with pytest.raises(NotTrainedError):
        a.embed_tensors(data.images[:2])
    a.fit_tensors(data, epochs=1, **FAST)
    b = base.create("autoencoder", **FMNIST).fit_tensors(data, epochs=2, **FAST)
    assert len({untrained, a.embedder_id, b.embedder_id}) == 3


def test_resume_continues_to_the_same_result(fmnist_train: ImageTensors,
                                             tmp_path: Path) -> None:
    data = fmnist_train.subset(np.arange(1500))
    options = {"epochs": 3, "patience": 0, **FAST}
    whole = base.create("autoencoder", **FMNIST).fit_tensors(data, **options)
    # a run that stopped after its first epoch (as if killed), then resumed to the end
    base.create("autoencoder", **FMNIST).fit_tensors(
        data, checkpoint_dir=tmp_path, **{**options, "epochs": 1})
    resumed = base.create("autoencoder", **FMNIST).fit_tensors(
        data, checkpoint_dir=tmp_path, resume=True, **options)
    assert [row["epoch"] for row in resumed.training_result.history] == [1, 2, 3]
    for a, b in zip(whole.training_result.history, resumed.training_result.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    np.testing.assert_allclose(resumed.embed_tensors(data.images[:100]),
                               whole.embed_tensors(data.images[:100]), atol=1e-5)
    assert (tmp_path / "epoch-0003.json").is_file() and (tmp_path / "history.json").is_file()


def test_demo_catalogue_pil_fit_beats_chance() -> None:
    import pandas as pd

    from lookalike.catalogue.sources import demo_parquet
    from lookalike.models.datasets import jpeg_images

    frame = pd.read_parquet(demo_parquet(), columns=["split", "master_category", "image_jpeg"])
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    # the products' 60x80 RGB by default; thinner layers keep the test fast
    model = base.create("conv-autoencoder", conv_channels=(16, 32, 64), seed=0)
    model.fit(jpeg_images(train["image_jpeg"]), epochs=2, patience=0, **FAST)
    assert model.training_result.history[-1]["val_loss"] < model.training_result.history[0][
        "val_loss"]
    gallery = model.embed(jpeg_images(train["image_jpeg"]))
    queries = model.embed(jpeg_images(test["image_jpeg"]))
    assert gallery.shape == (len(train), 128) and gallery.dtype == np.float32
    query_labels = test["master_category"].astype(str).tolist()
    gallery_labels = train["master_category"].astype(str).tolist()
    report = evaluate_retrieval(queries, query_labels, gallery, gallery_labels)
    chance = chance_precision(query_labels, gallery_labels)
    assert report.metrics["P@10"] > chance + 0.2, (report.metrics["P@10"], chance)


def test_bad_inputs_are_clear_errors(dense: AutoencoderEmbedder,
                                     fmnist_train: ImageTensors) -> None:
    rgb = base.create("autoencoder")  # expects 3x80x60
    with pytest.raises(ModelMismatchError, match=r"uint8 \[n, 3, 80, 60\]"):
        rgb.fit_tensors(fmnist_train.subset(np.arange(10)), epochs=1, **FAST)
    with pytest.raises(ModelMismatchError, match=r"uint8 \[n, 1, 28, 28\]"):
        dense.embed_tensors(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    with pytest.raises(ModelMismatchError, match="uint8"):
        dense.embed_tensors(torch.zeros(2, 1, 28, 28))  # float, not uint8
    with pytest.raises(ModelMismatchError, match="too small"):
        base.create("conv-autoencoder", image_size=(4, 4))
    with pytest.raises(ModelMismatchError, match="channels"):
        base.create("autoencoder", channels=2)
    with pytest.raises(ModelMismatchError, match="code_dim"):
        base.create("autoencoder", code_dim=0)
    with pytest.raises(TrainingError, match="unknown training option"):
        base.create("autoencoder", **FMNIST).fit_tensors(fmnist_train, epoch=1)
    with pytest.raises(LookalikeError):
        base.create("conv-autoencoder", **FMNIST).fit_tensors(
            fmnist_train.subset(np.arange(1)), epochs=1, **FAST)
