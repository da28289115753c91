"""``lookalike report`` / lookalike.evaluate.comparison on real data (the bundled demo catalogue,
Fashion-MNIST for a small trained model and the activation study)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.evaluate.activation import load_activation_results, run_activation_study
from lookalike.evaluate.comparison import (
    ReportError,
    compare,
    find_saved_models,
    fits,
    load_catalogue,
    parse_sizes,
    resolve_embedder,
)
from lookalike.evaluate.retrieval import evaluate_retrieval
from lookalike.errors import UnknownNameError
from lookalike.models.base import create


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> Path:
    """A folder of saved models: 16 px pixels (fits any catalogue) and a 28x28 grey CNN trained
    for one epoch on real Fashion-MNIST (does not fit the colour products photos)."""
    from lookalike.models.cnn import CNNEmbedder
    from lookalike.models.datasets import fashion_mnist_tensors

    folder = tmp_path_factory.mktemp("models")
    create("pixels", size=16).save(folder / "pixels16")
    cnn = CNNEmbedder(image_size=(28, 28), channels=1, hidden=32, embedding_dim=16,
                      conv_channels=(8, 16))
    cnn.fit_tensors(fashion_mnist_tensors("train", limit=400), epochs=1, threads=2,
                    progress=False, max_minutes=None)
    cnn.save(folder / "nested" / "cnn-fmnist")
    (folder / "not-a-model").mkdir()
    (folder / "not-a-model" / "config.json").write_text('{"something": "else"}')
    return folder


@pytest.fixture(scope="module")
def activation_file(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> Path:
    """A tiny real activation study (two activations, Fashion-MNIST) saved as JSON."""
    study = run_activation_study(datasets=("fashion-mnist",), activations=("relu", "tanh"),
                                 epochs=2, limit=200)
    path = tmp_path_factory.mktemp("activation") / "activation_study.json"
    path.write_text(json.dumps(study))
    return path


@pytest.fixture(scope="module")
def report_run(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
               activation_file: Path) -> tuple[Path, Path, object]:
    out = tmp_path_factory.mktemp("report")
    cache = tmp_path_factory.mktemp("cache")
    result = CliRunner().invoke(app, [
        "report", "--catalogue", "demo", "-e", "hsv-histogram",
        "-e", "lsh:base=pixels:bits=64", "--models-dir", str(models_dir),
        "--sizes", "500,1000", "--out", str(out), "--cache-dir", str(cache),
        "--from-results", str(activation_file)])
    assert result.exit_code == 0, result.output
    return out, cache, result


def test_report_writes_every_file_with_rows_in_range(report_run) -> None:
    out, _, result = report_run
    for name in ("report.md", "report.json", "index.html", "quality-vs-speed.png",
                 "catalogue-size-demo.png", "activation-fashion-mnist.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 200, name
    for png in out.glob("*.png"):
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 300
    data = json.loads((out / "report.json").read_text())
    rows = {(r["embedder"], r["search"]): r for r in data["rows"]}
    embedders = {r["embedder"] for r in data["rows"]}
    # pixels is always the baseline; the folder's two real models are found, the fake skipped
    assert {"pixels", "hsv-histogram", "lsh:base=pixels:bits=64", "pixels (pixels16)",
            "cnn (cnn-fmnist)"} == embedders
    assert ("lsh:base=pixels:bits=64", "hamming") in rows
    assert ("lsh:base=pixels:bits=64", "hamming top-100 + re-rank") in rows
    for row in data["rows"]:
        assert row["dim"] > 0 and row["bytes_per_item"] > 0 and row["size_mb"] >= 0
        if row["embedder"] == "cnn (cnn-fmnist)":
            # a 28x28 grey model says nothing about colour photos: n/a, and nothing timed
            assert row["demo P@10"] is None and "demo" in row["not_applicable"]
            assert row["size_mb"] > 0.01  # weights
            continue
        assert 0.0 < row["demo P@10"] <= 1.0 and 0.0 < row["demo mAP@100"] <= 1.0
        assert 0.0 < row["ms_per_image_batch1"] < 10_000
        assert row["images_per_s_batch64"] > 0
        assert row["load_1m"] >= 0 and row["threads"] == 2
    assert rows[("pixels", "exact")]["bytes_per_item"] == 4 * 3072
    assert rows[("lsh:base=pixels:bits=64", "hamming")]["bytes_per_item"] == 8
    # re-ranking the Hamming candidates by the floats cannot be worse than raw Hamming order
    assert (rows[("lsh:base=pixels:bits=64", "hamming top-100 + re-rank")]["demo P@10"]
            >= rows[("lsh:base=pixels:bits=64", "hamming")]["demo P@10"])
    sizes = [r for r in data["catalogue_size"] if r["embedder"] == "pixels"]
    assert [r["gallery"] for r in sizes] == [500, 1000, 1812]
    assert sizes[-1]["P@10"] == rows[("pixels", "exact")]["demo P@10"]
    assert all(0.0 < r["P@10"] <= 1.0 for r in data["catalogue_size"])
    study = data["activation_study"]
    assert study["winners"]["fashion-mnist"] in ("relu", "tanh")
    assert [(c["activation"], c["epoch"]) for c in study["curves"]] == [
        ("relu", 1), ("relu", 2), ("tanh", 1), ("tanh", 2)]
    assert all(0.0 <= c["val_accuracy"] <= 1.0 for c in study["curves"])
    assert not any("not-a-model" in n for n in data["notes"])  # not a model: ignored quietly
    markdown = (out / "report.md").read_text()
    assert "| cnn (cnn-fmnist) | exact |" in markdown and "n/a" in markdown
    assert "## Precision against catalogue size" in markdown and "## Activation study" in markdown
    page = (out / "index.html").read_text()
    assert '<img src="quality-vs-speed.png"' in page and "<table>" in page and "n/a" in page
    assert "Embedder comparison" in result.output


def test_pixels_p10_equals_direct_evaluation(report_run) -> None:
    out, _, _ = report_run
    catalogue = load_catalogue("demo")
    pixels = create("pixels")
    queries = pixels.embed(catalogue.queries.images())
    gallery = pixels.embed(catalogue.gallery.images())
    direct = evaluate_retrieval(queries, catalogue.queries.labels, gallery,
                                catalogue.gallery.labels, ks=(10,), map_at=100)
    row = next(r for r in json.loads((out / "report.json").read_text())["rows"]
               if r["embedder"] == "pixels")
    assert row["demo P@10"] == pytest.approx(direct.metrics["P@10"], abs=1e-9)
    assert row["demo mAP@100"] == pytest.approx(direct.metrics["mAP@100"], abs=1e-9)
    assert f"| pixels | exact |" in (out / "report.md").read_text()
    assert f"| {direct.metrics['P@10']:.3f} |" in (out / "report.md").read_text()


def test_rerun_reads_the_cache(report_run, tmp_path: Path) -> None:
    _, cache, _ = report_run
    pixels_id = create("pixels").embedder_id
    cached = sorted(p.name for p in cache.glob(f"demo-*-{pixels_id}.npy"))
    assert len(cached) == 2  # queries and gallery, keyed by embedder id
    stored = [*cache.glob("*.npy"), *cache.glob("report-metrics/*.json")]
    assert len(stored) > 10
    before = {p: p.stat().st_mtime_ns for p in stored}
    again = compare(["demo"], ["pixels"], sizes=[500], cache_dir=cache)
    # neither embeddings nor metrics (main table, 500-item gallery) were computed again
    assert {p: p.stat().st_mtime_ns for p in stored} == before
    assert sorted(cache.glob("report-metrics/*.json")) == sorted(
        p for p in stored if p.suffix == ".json")
    vectors = np.load(cache / cached[1], mmap_mode="r")
    assert vectors.dtype == np.float32 and np.allclose(np.linalg.norm(vectors[:5], axis=1), 1)
    first = json.loads((report_run[0] / "report.json").read_text())["rows"][0]
    assert again.rows[0]["demo P@10"] == first["demo P@10"]


def test_fits_follows_the_model_input(models_dir: Path) -> None:
    demo = load_catalogue("demo")
    cnn = resolve_embedder(str(models_dir / "nested" / "cnn-fmnist")).embedder
    assert not fits(cnn, demo)
    assert fits(create("pixels"), demo)
    found, skipped = find_saved_models(models_dir)
    assert {p.name for p in found} == {"pixels16", "cnn-fmnist"} and skipped == []


def test_clear_errors_for_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["report", "--catalogue", "demo", "-e", "no-such-embedder",
                                  "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path)])
    assert unknown.exit_code == 1
    assert "unknown embedder 'no-such-embedder'" in unknown.output
    assert "Traceback" not in unknown.output and not (tmp_path / "o").exists()
    with pytest.raises(UnknownNameError, match="neither a registered name"):
        resolve_embedder("efficientnet-lite9")
    with pytest.raises(ReportError, match="must be trained first"):
        resolve_embedder("cnn")
    with pytest.raises(ReportError, match="no config.json"):
        resolve_embedder(str(tmp_path))
    with pytest.raises(ReportError, match="not a positive whole number"):
        parse_sizes("1000,lots")
    assert parse_sizes("20k, 1000,1000") == (1000, 20000)
    bad_catalogue = runner.invoke(app, ["report", "--catalogue", "imagenet"])
    assert bad_catalogue.exit_code == 1 and "choose from" in bad_catalogue.output
    missing = runner.invoke(app, ["report", "--catalogue", "demo", "--from-results",
                                  str(tmp_path / "none.json")])
    assert missing.exit_code == 1 and "no such activation study results" in missing.output
    with pytest.raises(Exception, match="not activation study results"):
        (tmp_path / "x.json").write_text("[]")
        load_activation_results(tmp_path / "x.json")


def test_reduced_embedders_are_derived_from_the_base_cache(tmp_path: Path) -> None:
    from lookalike.evaluate.comparison import cached_embeddings

    demo = load_catalogue("demo")
    pca = create("pca", base="pixels", dim=32)
    pca.fit_vectors(create("pixels").embed(demo.gallery.images(range(400))))
    derived = cached_embeddings(pca, demo, "queries", tmp_path)
    pixels_id = create("pixels").embedder_id
    assert len(list(tmp_path.glob(f"demo-queries-*-{pixels_id}.npy"))) == 1  # base cached too
    direct = pca.embed(demo.queries.images())
    assert derived.shape == (len(demo.queries), 32)
    np.testing.assert_allclose(derived, direct, atol=1e-5)
    assert np.array_equal(cached_embeddings(pca, demo, "queries", tmp_path), derived)


def test_folder_options_override_inference_settings(models_dir: Path) -> None:
    folder = models_dir / "nested" / "cnn-fmnist"
    plain = resolve_embedder(str(folder))
    flipped = resolve_embedder(f"{folder}:test_time_flip=true")
    assert flipped.embedder.config()["test_time_flip"] is True
    assert flipped.embedder.embedder_id != plain.embedder.embedder_id
    assert flipped.label.endswith("test_time_flip=true") and flipped.folder == folder
    with pytest.raises(Exception, match="does not take"):
        resolve_embedder(f"{folder}:no_such_setting=1")
    with pytest.raises(Exception, match="key=value"):
        resolve_embedder(f"{folder}:oops")
