"""``finetune``: paper 002's two-stage fine-tuning of EfficientNet-Lite0, trained for real on the
bundled demo catalogue (1,812 train / 204 test photos, 53 article types)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lookalike.catalogue.sources import demo_parquet
from lookalike.errors import LookalikeError
from lookalike.evaluate.retrieval import evaluate_retrieval
from lookalike.models import base
from lookalike.models.datasets import ImageTensors, frame_tensors, jpeg_images
from lookalike.models.finetune import FinetuneEmbedder, default_input_size

FAST = {"progress": False, "threads": 1}


@pytest.fixture(scope="module")
def demo() -> dict:
    frame = pd.read_parquet(demo_parquet())
    train_frame = frame[frame["split"] == "train"]
    classes = tuple(sorted(train_frame["article_type"].astype(str).unique()))
    test_frame = frame[(frame["split"] == "test") & frame["article_type"].isin(classes)]
    return {"train": frame_tensors(train_frame, "article_type"),
            "test": frame_tensors(test_frame, "article_type", classes=classes),
            "test_jpeg": test_frame["image_jpeg"].tolist()[:16]}


@pytest.fixture(scope="module")
def run(demo: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One short run with checkpoints: 10 head epochs, 2 epochs of the last block + head, at
    the photos' own 60x80 (the default 120x160 costs 4x more and is what the benchmark runs)."""
    folder = tmp_path_factory.mktemp("finetune")
    threads_before = torch.get_num_threads()
    model = FinetuneEmbedder(seed=1, input_size=(60, 80), cache_dir=folder / "onnx")
    model.fit_tensors(demo["train"], checkpoint_dir=folder / "checkpoints", epochs=2,
                      patience=0, **FAST)
    return {"model": model, "folder": folder, "threads_before": threads_before}


def test_default_input_size_follows_the_catalogue() -> None:
    assert default_input_size((60, 80)) == (120, 160)   # products: 2x
    assert default_input_size((28, 28)) == (112, 112)   # Fashion-MNIST: 4x
    assert default_input_size((224, 224)) == (224, 224)


def test_both_stages_learn(run: dict, demo: dict) -> None:
    model: FinetuneEmbedder = run["model"]
    result = model.training_result
    stage1 = result["stage1"]
    assert stage1["best_value"] > 0.5  # 53 classes; the most frequent is 17% of the items
    assert stage1["history"][-1]["train_loss"] < stage1["history"][0]["train_loss"]
    stage2 = result["stage2"]["history"]
    assert len(stage2) == 2 and stage2[1]["train_loss"] < stage2[0]["train_loss"]
    assert stage2[-1]["val_top3"] >= stage2[-1]["val_accuracy"]
    logits = model.logits_tensors(demo["test"].images)
    labels = demo["test"].labels.numpy()
    top1 = (logits.argmax(1) == labels).mean()
    top3 = (np.argsort(-logits, axis=1)[:, :3] == labels[:, None]).any(1).mean()
    assert top1 > 0.5 and top3 > top1
    assert torch.get_num_threads() == run["threads_before"]  # restored after training


def test_embeddings_of_every_layer_retrieve_by_class(run: dict, demo: dict) -> None:
    model: FinetuneEmbedder = run["model"]
    rows = np.arange(0, len(demo["train"]), 2)  # half the train photos as the gallery
    gallery_labels = np.asarray(demo["train"].classes)[demo["train"].labels.numpy()[rows]]
    query_labels = np.asarray(demo["test"].classes)[demo["test"].labels.numpy()]
    for layer, dim in (("256", 256), ("64", 64), ("backbone", 1280)):
        embedder = model.with_layer(layer)
        queries = embedder.embed_tensors(demo["test"].images)
        assert queries.shape == (len(demo["test"]), dim) and queries.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
        gallery = embedder.embed_tensors(demo["train"].images[rows])
        report = evaluate_retrieval(queries, query_labels, gallery, gallery_labels)
        assert report.metrics["P@10"] > 0.5, (layer, report.metrics)


def test_pil_path_onnx_and_torch_agree(run: dict, demo: dict) -> None:
    model: FinetuneEmbedder = run["model"]
    images = jpeg_images(demo["test_jpeg"])
    from_pil = model.embed(images)
    from_tensors = model.embed_tensors(demo["test"].images[:16])
    np.testing.assert_allclose(from_pil, from_tensors, atol=1e-5)
    in_torch = base.create("finetune", **{**model.config(), "backend": "torch"})
    in_torch.load_state_tensors(model.state_tensors())
    np.testing.assert_allclose(in_torch.embed(images), from_pil, atol=2e-4)


def test_save_load_gives_identical_embeddings(run: dict, demo: dict, tmp_path: Path) -> None:
    model: FinetuneEmbedder = run["model"]
    folder = model.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "training.json",
                                                         "weights.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "finetune" and len(config["config"]["classes"]) == 53
    loaded = base.load(folder)
    assert loaded.embedder_id == model.embedder_id
    loaded.cache_dir = tmp_path / "onnx"  # build its own ONNX file from the loaded weights
    np.testing.assert_array_equal(loaded.embed_tensors(demo["test"].images[:32]),
                                  model.embed_tensors(demo["test"].images[:32]))
    untrained = FinetuneEmbedder(seed=1, input_size=(60, 80), classes=config["config"]["classes"])
    assert untrained.embedder_id != model.embedder_id  # the id follows the weights


def test_resume_continues_from_the_checkpoint(run: dict, demo: dict) -> None:
    model: FinetuneEmbedder = run["model"]
    first = model.training_result["stage2"]["history"]
    again = FinetuneEmbedder(seed=1, input_size=(60, 80), cache_dir=run["folder"] / "onnx")
    again.fit_tensors(demo["train"], checkpoint_dir=run["folder"] / "checkpoints", resume=True,
                      epochs=3, patience=0, **FAST)
    history = again.training_result["stage2"]["history"]
    assert len(history) == 3
    assert history[:2] == first  # epochs 1-2 come from the checkpoint, not a new run
    assert again.training_result["stage1"]["history"] == \
        model.training_result["stage1"]["history"]
    # the model ends with its best epoch: new weights (and a new id) only if epoch 3 won
    best = again.training_result["stage2"]["best_epoch"]
    assert (again.embedder_id != model.embedder_id) == (best == 3)


def test_bad_settings_are_one_line_errors(demo: dict) -> None:
    with pytest.raises(LookalikeError, match="embedding_layer"):
        FinetuneEmbedder(embedding_layer="128")
    with pytest.raises(LookalikeError, match="margin needs"):
        FinetuneEmbedder(head="softmax", margin=0.2)
    with pytest.raises(LookalikeError, match="trainable_blocks"):
        FinetuneEmbedder(trainable_blocks=17)
    with pytest.raises(LookalikeError, match="expects 3x60x80"):
        grey = ImageTensors(torch.zeros((4, 1, 28, 28), dtype=torch.uint8),
                            torch.tensor([0, 1, 0, 1]), ("a", "b"))
        FinetuneEmbedder().fit_tensors(grey)
    with pytest.raises(LookalikeError, match="unknown training option"):
        FinetuneEmbedder().fit_tensors(demo["train"], epoch=3)
    with pytest.raises(LookalikeError, match="not trained"):
        FinetuneEmbedder().embed_tensors(demo["test"].images[:2])
