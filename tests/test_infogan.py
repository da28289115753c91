"""Paper 004's InfoGAN (``infogan``): short real runs on Fashion-MNIST and the demo catalogue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.errors import ModelMismatchError
from lookalike.evaluate.retrieval import evaluate_retrieval
from lookalike.models import base
from lookalike.models.datasets import ImageTensors, fashion_mnist_tensors
from lookalike.models.infogan import InfoGAN, InfoGANEmbedder
from lookalike.models.training import TrainingError

FAST = {"progress": False, "threads": 2}
FMNIST = {"image_size": (28, 28), "channels": 1}
# a learning rate above the default 2e-4 so a few dozen steps show learning
RUN = {"epochs": 2, "batch_size": 32, "learning_rate": 1e-3, **FAST}


def labels_of(data: ImageTensors) -> list[str]:
    assert data.labels is not None
    return [str(v) for v in data.labels.tolist()]


@pytest.fixture(scope="module")
def fmnist_train() -> ImageTensors:
    return fashion_mnist_tensors("train", limit=600, seed=1)


@pytest.fixture(scope="module")
def fmnist_test() -> ImageTensors:
    return fashion_mnist_tensors("test", limit=400, seed=2)


@pytest.fixture(scope="module")
def trained(fmnist_train: ImageTensors, tmp_path_factory: pytest.TempPathFactory
            ) -> InfoGANEmbedder:
    model = base.create("infogan", **FMNIST, categories=10, seed=0)
    assert isinstance(model, InfoGANEmbedder)
    folder = tmp_path_factory.mktemp("infogan-whole")
    return model.fit_tensors(fmnist_train, checkpoint_dir=folder, **RUN)


def test_training_runs_without_labels_and_reports_gan_metrics(trained: InfoGANEmbedder) -> None:
    history = trained.training_result.history
    assert [row["epoch"] for row in history] == [1, 2]
    for row in history:
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["val_info_loss"])
        assert 0.0 < row["val_real_score"] < 1.0 and 0.0 < row["val_fake_score"] < 1.0
        assert 0.0 <= row["val_code_accuracy"] <= 1.0
    # D learns to score held-out real photos above generated ones
    assert max(row["val_real_score"] - row["val_fake_score"] for row in history) > 0.02
    assert trained.training_result.monitor == "val_info_loss"
    assert trained.training_result.best_epoch in (1, 2)


def test_embeddings_are_unit_float32_rows_that_retrieve_by_class(
        trained: InfoGANEmbedder, fmnist_train: ImageTensors, fmnist_test: ImageTensors) -> None:
    queries = trained.embed_tensors(fmnist_test.images)
    gallery = trained.embed_tensors(fmnist_train.images)
    assert trained.dim == 16 * 4 * 4  # Table I's last conv layer (16 maps) at 28 / 8 -> 4x4
    assert queries.shape == (400, 256) and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    report = evaluate_retrieval(queries, labels_of(fmnist_test), gallery, labels_of(fmnist_train))
    assert report.metrics["P@10"] > 0.3  # 10 balanced classes: chance is 0.1


def test_save_load_gives_identical_embeddings(trained: InfoGANEmbedder,
                                              fmnist_test: ImageTensors, tmp_path: Path) -> None:
    folder = trained.save(tmp_path / "gan")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "training.json",
                                                         "weights.safetensors"]
    loaded = base.load(folder)
    assert isinstance(loaded, InfoGANEmbedder) and loaded.embedder_id == trained.embedder_id
    np.testing.assert_array_equal(loaded.embed_tensors(fmnist_test.images[:64]),
                                  trained.embed_tensors(fmnist_test.images[:64]))
    np.testing.assert_array_equal(loaded.generate(4, seed=1), trained.generate(4, seed=1))
    assert trained.generate(4).shape == (4, 1, 28, 28)


def test_resume_continues_to_the_same_result(trained: InfoGANEmbedder,
                                             fmnist_train: ImageTensors, tmp_path: Path) -> None:
    # stopped after epoch 1 (as if killed), then resumed: the same run as the fixture's
    base.create("infogan", **FMNIST, categories=10, seed=0).fit_tensors(
        fmnist_train, checkpoint_dir=tmp_path, **{**RUN, "epochs": 1})
    resumed = base.create("infogan", **FMNIST, categories=10, seed=0).fit_tensors(
        fmnist_train, checkpoint_dir=tmp_path, resume=True, **RUN)
    assert [row["epoch"] for row in resumed.training_result.history] == [1, 2]
    for a, b in zip(trained.training_result.history, resumed.training_result.history):
        for key in ("train_loss", "val_info_loss", "val_real_score"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    np.testing.assert_allclose(resumed.embed_tensors(fmnist_train.images[:50]),
                               trained.embed_tensors(fmnist_train.images[:50]), atol=1e-4)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "epoch-0002.safetensors" in names and "best.safetensors" in names


def test_products_resolution_from_pil_images() -> None:
    import pandas as pd

    from lookalike.catalogue.sources import demo_parquet
    from lookalike.models.datasets import jpeg_images

    frame = pd.read_parquet(demo_parquet(), columns=["split", "image_jpeg"]).head(64)
    images = jpeg_images(frame["image_jpeg"])
    model = base.create("infogan", categories=8)  # 60x80 RGB products by default
    model.fit(images, labels=["ignored"] * len(images), epochs=1, batch_size=32, **FAST)
    assert model.dim == 16 * 10 * 8  # 80x60 -> 10x8 after three stride-2 layers
    vectors = model.embed(images[:10])
    assert vectors.shape == (10, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert model.generate(2).shape == (2, 3, 80, 60)  # G mirrors D back to the input size


def test_generator_output_matches_odd_sizes() -> None:
    for width, height in ((28, 28), (60, 80), (30, 45), (17, 9)):
        gan = InfoGAN(3, (width, height), categories=4, continuous=1)
        latent, category, codes = gan.sample_latent(2)
        assert gan.generator(latent).shape == (2, 3, height, width)
        assert latent.shape == (2, 100 + 4 + 1) and category.shape == (2,)
        assert codes.abs().max() <= 1


def test_bad_inputs_are_clear_errors(trained: InfoGANEmbedder,
                                     fmnist_train: ImageTensors) -> None:
    with pytest.raises(ModelMismatchError, match=r"uint8 \[n, 3, 80, 60\]"):
        base.create("infogan").fit_tensors(fmnist_train.subset(np.arange(10)), epochs=1, **FAST)
    with pytest.raises(ModelMismatchError, match=r"uint8 \[n, 1, 28, 28\]"):
        trained.embed_tensors(torch.zeros(3, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ModelMismatchError, match="categories"):
        base.create("infogan", categories=1)
    with pytest.raises(ModelMismatchError, match="too small"):
        base.create("infogan", image_size=(5, 5))
    with pytest.raises(TrainingError, match="adam"):
        base.create("infogan", **FMNIST).fit_tensors(
            fmnist_train.subset(np.arange(20)), epochs=1, optimizer="sgd", **FAST)
