"""The trainer and the ``cnn`` embedder, trained for real on small slices of real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.models import base
from lookalike.models.cnn import CNNEmbedder, ConvNet, NotTrainedError
from lookalike.models.datasets import (
    ImageTensors,
    array_images,
    fashion_mnist_tensors,
    products_tensors,
    stratified_split,
    top_classes_frame,
)
from lookalike.models.training import (
    ClassificationTask,
    TrainConfig,
    TrainingError,
    train,
)

FAST = {"progress": False, "threads": 2}


@pytest.fixture(scope="module")
def fmnist_train() -> ImageTensors:
    return fashion_mnist_tensors("train", limit=3000, seed=1)


@pytest.fixture(scope="module")
def fmnist_test() -> ImageTensors:
    return fashion_mnist_tensors("test", limit=1000, seed=2)


@pytest.fixture(scope="module")
def trained(fmnist_train: ImageTensors) -> CNNEmbedder:
    embedder = CNNEmbedder(image_size=(28, 28), channels=1, seed=3)
    return embedder.fit_tensors(fmnist_train, epochs=2, patience=0, **FAST)


def test_short_fashion_mnist_run_learns(trained: CNNEmbedder, fmnist_test: ImageTensors) -> None:
    history = trained.training_result.history
    assert len(history) == 2
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.6  # 10 classes: chance is 0.1
    accuracy = (trained.predict_tensors(fmnist_test.images) == fmnist_test.labels.numpy()).mean()
    assert accuracy > 0.6
    assert abs(trained.training_result.validation_size - 300) <= 5  # 10% of each class


def test_embeddings_are_unit_rows_and_cluster_by_class(trained: CNNEmbedder,
                                                       fmnist_test: ImageTensors) -> None:
    vectors = trained.embed_tensors(fmnist_test.images)
    assert vectors.shape == (1000, trained.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    labels = fmnist_test.labels.numpy()
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    assert (labels[nearest] == labels).mean() > 0.6


def test_pil_path_matches_tensor_path(trained: CNNEmbedder, fmnist_test: ImageTensors) -> None:
    images = array_images(fmnist_test.images[:20, 0].numpy())
    np.testing.assert_allclose(trained.embed(images), trained.embed_tensors(fmnist_test.images[:20]),
                               atol=1e-5)


def test_save_load_gives_identical_embeddings(trained: CNNEmbedder, fmnist_test: ImageTensors,
                                              tmp_path: Path) -> None:
    folder = trained.save(tmp_path / "cnn")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "training.json",
                                                         "weights.safetensors"]
    loaded = base.load(folder)
    assert isinstance(loaded, CNNEmbedder)
    assert loaded.embedder_id == trained.embedder_id
    assert loaded.classes == trained.classes
    np.testing.assert_array_equal(loaded.embed_tensors(fmnist_test.images[:50]),
                                  trained.embed_tensors(fmnist_test.images[:50]))


def test_embedder_id_changes_with_training(fmnist_train: ImageTensors) -> None:
    a = base.create("cnn", image_size=(28, 28), channels=1)
    untrained_id = a.embedder_id
    with pytest.raises(NotTrainedError):
        a.embed_tensors(fmnist_train.images[:2])
    a.fit_tensors(fmnist_train.subset(np.arange(400)), epochs=1, **FAST)
    assert a.embedder_id != untrained_id
    b = base.create("cnn", image_size=(28, 28), channels=1, seed=5)
    b.fit_tensors(fmnist_train.subset(np.arange(400)), epochs=1, **FAST)
    assert a.embedder_id != b.embedder_id  # same config but other weights


def _small_task(data: ImageTensors, seed: int = 0) -> ClassificationTask:
    torch.manual_seed(seed)
    module = ConvNet(1, (28, 28), 10, conv_channels=(8, 16), hidden=32, embedding_dim=16)
    return ClassificationTask(module, [0.3], [0.35])


def test_resume_continues_to_the_same_result(fmnist_train: ImageTensors, tmp_path: Path) -> None:
    data = fmnist_train.subset(np.arange(1200))
    config = TrainConfig(epochs=3, batch_size=64, patience=0, augment="flip", **FAST)
    whole_task = _small_task(data)
    whole = train(whole_task, data, config)

    def crash_after_epoch_2(row: dict[str, float]) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # the run dies after epoch 2's checkpoint was written

    with pytest.raises(KeyboardInterrupt):
        train(_small_task(data), data, config, checkpoint_dir=tmp_path / "parts",
              on_epoch=crash_after_epoch_2)
    # a fresh module, as after a crash: everything must come from the checkpoint
    resumed_task = _small_task(data, seed=99)
    resumed = train(resumed_task, data, config, checkpoint_dir=tmp_path / "parts", resume=True)

    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    for a, b in zip(whole.history, resumed.history):
        for key in ("train_loss", "val_loss", "val_accuracy", "learning_rate"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    for name, value in whole_task.module.state_dict().items():
        torch.testing.assert_close(value, resumed_task.module.state_dict()[name], rtol=1e-4,
                                   atol=1e-5)
    saved = json.loads((tmp_path / "parts" / "history.json").read_text())
    assert [row["epoch"] for row in saved["history"]] == [1, 2, 3]
    files = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert "best.safetensors" in files and "epoch-0003.safetensors" in files
    assert "epoch-0001.json" not in files  # only the last two epochs are kept
    assert not [f for f in files if f.endswith((".pt", ".pkl", ".pth"))]


def test_resume_refuses_other_settings(fmnist_train: ImageTensors, tmp_path: Path) -> None:
    data = fmnist_train.subset(np.arange(600))
    train(_small_task(data), data, TrainConfig(epochs=1, **FAST), checkpoint_dir=tmp_path)
    with pytest.raises(TrainingError, match="other settings"):
        train(_small_task(data), data, TrainConfig(epochs=2, learning_rate=0.1, **FAST),
              checkpoint_dir=tmp_path, resume=True)


def test_early_stopping_keeps_the_best_epoch(fmnist_train: ImageTensors) -> None:
    data = fmnist_train.subset(np.arange(600))
    # a learning rate this small changes nothing measurable: no epoch beats the first
    config = TrainConfig(epochs=10, learning_rate=1e-12, weight_decay=0.0, patience=2,
                         min_delta=0.01, **FAST)
    result = train(_small_task(data), data, config)
    assert result.stopped == "early-stopping"
    assert len(result.history) == 3 and result.best_epoch == 1


def test_time_budget_ends_an_epoch_early_and_stops(fmnist_train: ImageTensors) -> None:
    data = fmnist_train.subset(np.arange(1200))
    # 0.6 ms: the first batch already crosses it, so the run stops inside epoch 1 of 5
    config = TrainConfig(epochs=5, batch_size=64, max_minutes=1e-5, patience=0, **FAST)
    result = train(_small_task(data), data, config)
    assert result.stopped == "time-budget"
    assert len(result.history) == 1
    row = result.history[0]
    assert 0 < row["trained_fraction"] < 0.2  # a few batches of ~17, not the whole epoch
    assert "val_accuracy" in row and result.best_epoch == 1
    with pytest.raises(TrainingError, match="max_minutes"):
        TrainConfig(max_minutes=0)


def test_trainer_leaves_global_state_alone(fmnist_train: ImageTensors) -> None:
    data = fmnist_train.subset(np.arange(300))
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    train(_small_task(data), data, TrainConfig(epochs=1, threads=1, progress=False))
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng)


def test_validation_split_is_seeded_stratified_and_disjoint() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 20, 3, 1])
    train_rows, val_rows = stratified_split(labels, len(labels), 0.1, seed=7)
    again = stratified_split(labels, len(labels), 0.1, seed=7)
    np.testing.assert_array_equal(val_rows, again[1])
    assert not set(train_rows) & set(val_rows)
    assert len(train_rows) + len(val_rows) == len(labels)
    assert np.bincount(labels[val_rows], minlength=5).tolist() == [10, 5, 2, 0, 0]
    other = stratified_split(labels, len(labels), 0.1, seed=8)[1]
    assert not np.array_equal(val_rows, other)


def test_bad_settings_are_clear_errors(fmnist_train: ImageTensors) -> None:
    with pytest.raises(TrainingError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(TrainingError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})
    embedder = CNNEmbedder(image_size=(60, 80), channels=3)
    with pytest.raises(Exception, match="expects 3x60x80"):
        embedder.fit_tensors(fmnist_train.subset(np.arange(10)), epochs=1)


def test_short_products_run_beats_chance(products_parquet: Path) -> None:
    import pandas as pd

    from lookalike.catalogue.sources import load_products_frame
    from lookalike.models.datasets import frame_tensors

    frame = top_classes_frame(load_products_frame(products_parquet, split="train"),
                              "article_type", 5)
    frame = frame.sample(n=1500, random_state=0)
    assert isinstance(frame, pd.DataFrame)
    data = frame_tensors(frame, "article_type")
    assert tuple(data.images.shape[1:]) == (3, 80, 60) and data.images.dtype == torch.uint8
    embedder = CNNEmbedder(conv_channels=(16, 32, 64), seed=0)
    embedder.fit_tensors(data, epochs=2, batch_size=64, patience=0, **FAST)
    assert embedder.training_result.history[-1]["val_accuracy"] > 0.7  # majority class ~0.4
    # the test split, never seen in training, is classified well above chance too
    test = products_tensors("test", path=products_parquet, classes=embedder.classes, limit=400)
    accuracy = (embedder.predict_tensors(test.images) == test.labels.numpy()).mean()
    majority = np.bincount(test.labels.numpy()).max() / len(test)
    assert accuracy > majority + 0.15


def test_shift_augmentation_moves_each_image_within_the_padding(fmnist_train: ImageTensors) -> None:
    from lookalike.models.training import augment_batch

    images = fmnist_train.images[:64].to(torch.float32)
    config = TrainConfig(augment="shift", shift_pixels=2)
    shifted = augment_batch(images.clone(), config, torch.Generator().manual_seed(0))
    again = augment_batch(images.clone(), config, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    torch.testing.assert_close(shifted, again)  # seeded
    assert not torch.equal(shifted, images)
    for original, moved in zip(images, shifted):  # every image is its original, moved <= 2 px
        padded = torch.nn.functional.pad(original[None], (2, 2, 2, 2), mode="replicate")[0]
        assert any(torch.equal(moved, padded[:, dy:dy + 28, dx:dx + 28])
                   for dy in range(5) for dx in range(5))
    with pytest.raises(TrainingError, match="augment must be one of"):
        TrainConfig(augment="rotate")


def test_cosine_margin_head_trains_saves_and_loads(fmnist_train: ImageTensors,
                                                   fmnist_test: ImageTensors,
                                                   tmp_path: Path) -> None:
    from lookalike.models.heads import CosineClassifier, margin_loss

    logits = torch.tensor([[2.0, 1.0], [0.5, 1.5]])
    labels = torch.tensor([0, 1])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.isclose(margin_loss(logits, labels), plain)
    assert margin_loss(logits, labels, margin_logit=1.0) > plain  # the true class must win by more
    with pytest.raises(Exception, match="margin needs head='cosine'"):
        CNNEmbedder(image_size=(28, 28), channels=1, margin=0.2)

    embedder = CNNEmbedder(image_size=(28, 28), channels=1, head="cosine", margin=0.2,
                           convs_per_block=2, conv_channels=(8, 16), hidden=64, seed=1)
    # the cosine head starts slower than softmax on tiny data: 3,000 images, 3 epochs
    embedder.fit_tensors(fmnist_train, epochs=3, patience=0, augment="flip+shift", **FAST)
    assert isinstance(embedder.module.classifier, CosineClassifier)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in embedder.module.modules()) == 4
    accuracy = (embedder.predict_tensors(fmnist_test.images) == fmnist_test.labels.numpy()).mean()
    assert accuracy > 0.5  # 10 classes: chance is 0.1
    loaded = base.load(embedder.save(tmp_path / "cosine"))
    assert loaded.config()["head"] == "cosine" and loaded.config()["convs_per_block"] == 2
    np.testing.assert_array_equal(loaded.embed_tensors(fmnist_test.images[:50]),
                                  embedder.embed_tensors(fmnist_test.images[:50]))


def test_test_time_flip_averages_an_image_and_its_mirror(trained: CNNEmbedder,
                                                         fmnist_test: ImageTensors,
                                                         tmp_path: Path) -> None:
    images = fmnist_test.images[:64]
    plain_id = trained.embedder_id
    assert "test_time_flip" not in trained.config()  # ids of older saved models are unchanged
    flipped = CNNEmbedder.from_config({**trained.config(), "test_time_flip": True})
    flipped.load_state_tensors(trained.state_tensors())
    assert flipped.embedder_id != plain_id
    both = flipped.embed_tensors(images)
    one = trained.embed_tensors(images)
    mirror = trained.embed_tensors(images.flip(-1))
    expected = (one + mirror) / np.linalg.norm(one + mirror, axis=1, keepdims=True)
    np.testing.assert_allclose(both, expected, atol=1e-5)
    assert np.abs(both - one).max() > 1e-3  # it is not the plain embedding
    # mirror-invariant by construction
    np.testing.assert_allclose(flipped.embed_tensors(images.flip(-1)), both, atol=1e-5)
    loaded = base.load(flipped.save(tmp_path / "tta"))
    assert loaded.config()["test_time_flip"] is True
    np.testing.assert_allclose(loaded.embed_tensors(images), both, atol=1e-6)


def test_channel_stats_in_chunks_equal_the_direct_formula(fmnist_train: ImageTensors) -> None:
    from lookalike.models.datasets import channel_stats

    images = fmnist_train.images
    mean, std = channel_stats(images, sample=2500, seed=4)
    rows = np.sort(np.random.default_rng(4).permutation(len(images))[:2500])
    x = images[torch.as_tensor(rows)].to(torch.float64) / 255.0
    np.testing.assert_allclose(mean, x.mean(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(dim=(0, 2, 3)).numpy(), rtol=1e-10)
    assert channel_stats(images[:1])[1][0] >= 1e-3  # one image: std clamped, never zero
