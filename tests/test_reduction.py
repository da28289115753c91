"""``pca`` and ``projection``: smaller embeddings over a base embedder, on the demo catalogue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file
from sklearn.decomposition import PCA

from lookalike.catalogue.sources import demo_parquet
from lookalike.errors import LookalikeError
from lookalike.evaluate.retrieval import evaluate_retrieval
from lookalike.models import base
from lookalike.models.base import l2_normalise
from lookalike.models.cnn import CNNEmbedder
from lookalike.models.datasets import frame_tensors, jpeg_images
from lookalike.models.reduction import PCAEmbedder, ProjectionEmbedder


@pytest.fixture(scope="module")
def demo() -> dict:
    frame = pd.read_parquet(demo_parquet())
    train, test = frame[frame["split"] == "train"], frame[frame["split"] == "test"]
    pixels = base.create("pixels", size=16)  # 768-d: keeps LDA quick
    test_images = jpeg_images(test["image_jpeg"])
    return {"train_frame": train, "pixels": pixels,
            "gallery": pixels.embed(jpeg_images(train["image_jpeg"])),
            "queries": pixels.embed(test_images), "test_images": test_images,
            "gallery_labels": train["article_type"].astype(str).to_numpy(),
            "query_labels": test["article_type"].astype(str).to_numpy()}


def quality(demo: dict, queries: np.ndarray, gallery: np.ndarray) -> dict[str, float]:
    return evaluate_retrieval(queries, demo["query_labels"], gallery,
                              demo["gallery_labels"]).metrics


def test_pca_is_sklearns_pca_and_keeps_most_of_the_quality(demo: dict) -> None:
    full = quality(demo, demo["queries"], demo["gallery"])
    pca = PCAEmbedder(base=demo["pixels"], dim=64).fit_vectors(demo["gallery"])
    reference = PCA(n_components=64, random_state=0).fit(demo["gallery"])
    np.testing.assert_allclose(pca.project(demo["queries"]),
                               l2_normalise(reference.transform(demo["queries"])), atol=1e-4)
    assert pca.fit_info["explained_variance_ratio"] > 0.8
    reduced = quality(demo, pca.project(demo["queries"]), pca.project(demo["gallery"]))
    assert reduced["P@10"] >= full["P@10"] - 0.03, (reduced, full)  # 3,072 -> 64 numbers
    embedded = pca.embed(demo["test_images"][:10])  # the image path: base, then projection
    np.testing.assert_allclose(embedded, pca.project(demo["queries"][:10]), atol=1e-5)
    assert embedded.shape == (10, 64)


def test_supervised_projections_beat_pca_at_low_dimension(demo: dict) -> None:
    labels = demo["gallery_labels"].tolist()
    scores = {}
    for name, model in (("pca", PCAEmbedder(base=demo["pixels"], dim=32)),
                        ("linear", ProjectionEmbedder(base=demo["pixels"], dim=32)),
                        ("lda", ProjectionEmbedder(base=demo["pixels"], dim=32, method="lda"))):
        model.fit_vectors(demo["gallery"], labels)
        scores[name] = quality(demo, model.project(demo["queries"]),
                               model.project(demo["gallery"]))["P@10"]
    assert scores["linear"] > scores["pca"] + 0.01, scores
    assert scores["lda"] > scores["pca"] + 0.05, scores


def test_save_load_roundtrip_keeps_vectors_and_id(demo: dict, tmp_path: Path) -> None:
    model = ProjectionEmbedder(base=demo["pixels"], dim=24).fit_vectors(
        demo["gallery"], demo["gallery_labels"].tolist(), epochs=3)
    folder = model.save(tmp_path / "projection")
    loaded = base.load(folder)
    assert isinstance(loaded, ProjectionEmbedder) and loaded.embedder_id == model.embedder_id
    np.testing.assert_array_equal(loaded.embed(demo["test_images"][:20]),
                                  model.embed(demo["test_images"][:20]))
    other = ProjectionEmbedder(base=demo["pixels"], dim=24).fit_vectors(
        demo["gallery"][:900], demo["gallery_labels"][:900].tolist(), epochs=3)
    assert other.embedder_id != model.embedder_id  # the id follows the learned matrix


def test_base_weights_travel_with_the_projection(demo: dict, tmp_path: Path) -> None:
    data = frame_tensors(demo["train_frame"].iloc[::3], "article_type")  # a small, quick CNN
    cnn = CNNEmbedder(seed=0, conv_channels=(8, 16, 32), hidden=64, embedding_dim=32)
    cnn.fit_tensors(data, epochs=1, patience=0, progress=False, threads=1)
    vectors = cnn.embed_tensors(data.images)
    pca = PCAEmbedder(base=cnn, dim=16).fit_vectors(vectors)
    folder = pca.save(tmp_path / "pca-over-cnn")
    tensors = load_file(str(folder / "weights.safetensors"))
    assert {"projection.matrix", "projection.mean"} <= set(tensors)
    assert any(name.startswith("base.") for name in tensors)
    loaded = base.load(folder)
    np.testing.assert_allclose(loaded.embed(demo["test_images"][:8]),
                               pca.embed(demo["test_images"][:8]), atol=1e-6)
    assert loaded.embedder_id == pca.embedder_id


def test_bad_settings_are_one_line_errors(demo: dict) -> None:
    with pytest.raises(LookalikeError, match="larger than the base"):
        PCAEmbedder(base=demo["pixels"], dim=4000)
    with pytest.raises(LookalikeError, match="method"):
        ProjectionEmbedder(base=demo["pixels"], method="svm")
    with pytest.raises(LookalikeError, match="needs labels"):
        ProjectionEmbedder(base=demo["pixels"], dim=8).fit_vectors(demo["gallery"])
    with pytest.raises(LookalikeError, match="at most classes - 1"):
        ProjectionEmbedder(base=demo["pixels"], dim=64, method="lda").fit_vectors(
            demo["gallery"], demo["gallery_labels"].tolist())
    with pytest.raises(LookalikeError, match="not fitted"):
        PCAEmbedder(base=demo["pixels"], dim=8).project(demo["queries"])
