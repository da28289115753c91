"""End to end through the public API and the CLI, on real product photos.

A 400-item slice of the real products catalogue is written as a Parquet manifest with inline JPEG
bytes, ingested, indexed with the fast ``pixels`` embedder, queried, updated and evaluated.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lookalike import Filters, ModelMismatchError, Project, UnknownItemError
from lookalike.cli import app
from lookalike.index.base import load_index
from lookalike.storage import current_version


def _manifest(products_parquet: Path, folder: Path, rows: slice, name: str) -> Path:
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(["Tshirts", "Watches", "Casual Shoes", "Handbags",
                                              "Kurtas", "Sunglasses"])]
    frame = frame.sort_values("id").iloc[rows]
    manifest = pd.DataFrame({
        "id": frame["id"].astype(str), "image": frame["image_jpeg"], "title": frame["title"],
        "category": frame["article_type"], "gender": frame["gender"],
        "colour": frame["base_colour"], "split": frame["split"],
        "price": (frame["id"] % 97 + 3).astype(float),  # a stand-in price so ranges can be tested
    })
    path = folder / name
    manifest.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def shop(products_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    folder = tmp_path_factory.mktemp("shop")
    first = _manifest(products_parquet, folder, slice(0, 400), "first.parquet")
    project = Project(folder / "project")
    report = project.ingest(first, progress=False)
    assert report.added == 400 and not report.rejected
    summary = project.index("pixels", progress=False)
    assert summary.size == 400 and summary.added == 400
    return project


def test_similar_excludes_itself_and_ranks_by_score(shop: Project) -> None:
    item_id = shop.store.ids()[0]
    results = shop.similar(item_id, k=5)
    assert len(results) == 5
    assert item_id not in [r.id for r in results]
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(r.title and r.category and r.image for r in results)


def test_similar_matches_brute_force_over_the_cached_vectors(shop: Project) -> None:
    loaded = shop.searcher(None)
    ids = shop.store.ids()
    vectors = loaded.vectors_of(ids, shop.store)
    query = 17
    scores = vectors @ vectors[query]
    scores[query] = -np.inf
    expected = [ids[i] for i in np.argsort(-scores)[:5]]
    assert [r.id for r in shop.similar(ids[query], k=5)] == expected


def test_search_by_photo_finds_the_product_itself(shop: Project, products_parquet: Path) -> None:
    item = shop.store.get(shop.store.ids()[42])
    results = shop.search(Path(item.image_path).read_bytes(), k=3)
    assert results[0].id == item.id
    assert results[0].score == pytest.approx(1.0, abs=1e-4)


def test_filters_apply_inside_the_search(shop: Project) -> None:
    frame = shop.store.frame()
    item_id = frame.index[0]
    women = set(frame.index[frame["gender"] == "Women"])
    results = shop.similar(item_id, k=50, filters=Filters.of(gender="Women"))
    assert len(results) == min(50, len(women - {item_id}))
    assert {r.id for r in results} <= women
    cheap = shop.similar(item_id, k=400, filters=Filters.of(price_max=10))
    expected = set(frame.index[frame["price"] <= 10]) - {item_id}
    assert {r.id for r in cheap} == expected


def test_unknown_item_is_a_clear_error(shop: Project) -> None:
    with pytest.raises(UnknownItemError, match="no-such-item"):
        shop.similar("no-such-item")


def test_incremental_add_and_remove(products_parquet: Path, tmp_path: Path) -> None:
    project = Project(tmp_path / "p")
    project.ingest(_manifest(products_parquet, tmp_path, slice(0, 120), "a.parquet"), progress=False)
    project.index("pixels", progress=False)
    project.ingest(_manifest(products_parquet, tmp_path, slice(0, 150), "b.parquet"), progress=False)
    summary = project.index("pixels", progress=False)
    assert (summary.added, summary.unchanged, summary.size) == (30, 120, 150)

    gone = project.store.ids()[:10]
    project.remove_items(gone)
    assert len(project.store) == 140
    remaining = project.store.ids()
    returned = {r.id for r in project.similar(remaining[0], k=139)}
    assert returned == set(remaining) - {remaining[0]}

    reopened = Project(tmp_path / "p", create=False)
    assert [r.id for r in reopened.similar(remaining[3], k=5)] == \
        [r.id for r in project.similar(remaining[3], k=5)]


def test_small_updates_go_to_the_journal_and_replay_everywhere(
        products_parquet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One-item updates append to the current version instead of rewriting it; a reader in
    another Project sees them on its next query; a restart replays them; past the journal's
    limit the writer compacts into a new full version with the same results."""
    from lookalike.index import journal

    project = Project(tmp_path / "p")
    project.ingest(_manifest(products_parquet, tmp_path, slice(0, 80), "a.parquet"), progress=False)
    project.index("pixels", progress=False)
    root = tmp_path / "p" / "indexes" / "default"
    first = current_version(root)
    reader = Project(tmp_path / "p", create=False, read_only=True)
    some = project.store.ids()[3]
    assert some in {r.id for r in reader.similar(project.store.ids()[4], k=79)}

    extra = pd.read_parquet(products_parquet).sort_values("id").iloc[500]
    project.add_item("new-1", extra["image_jpeg"], {"title": "new one", "category": "X"})
    project.remove_items([some])
    assert current_version(root) == first  # no new version written ...
    assert journal.entry_count(first) == 2  # ... two journal entries instead
    assert not (first / "index").stat().st_mtime > (first / journal.JOURNAL_DIR).stat().st_mtime

    query = project.store.ids()[0]
    expected = [(r.id, round(r.score, 5)) for r in project.similar(query, k=10)]
    seen_by_reader = [(r.id, round(r.score, 5)) for r in reader.similar(query, k=10)]
    assert seen_by_reader == expected
    found = {r.id for r in reader.similar(query, k=200)}
    assert "new-1" in found and some not in found
    restarted = Project(tmp_path / "p", create=False, read_only=True)
    assert [(r.id, round(r.score, 5)) for r in restarted.similar(query, k=10)] == expected

    monkeypatch.setattr(journal, "MAX_ENTRIES", 2)  # the next update must compact
    project.remove_items([project.store.ids()[7]])
    second = current_version(root)
    assert second != first and journal.entry_count(second) == 0
    after = Project(tmp_path / "p", create=False, read_only=True)
    assert [r.id for r in after.similar(query, k=10)] == \
        [r.id for r in project.similar(query, k=10)] == [r.id for r in reader.similar(query, k=10)]


def test_index_of_another_embedder_is_refused(shop: Project) -> None:
    folder = current_version(shop.path / "indexes" / "default")
    with pytest.raises(ModelMismatchError, match="embedder"):
        load_index(folder / "index", expected_embedder_id="efficientnet-lite0-000000000000")


def test_evaluate_writes_report_and_grid(shop: Project, tmp_path: Path) -> None:
    report = shop.evaluate(class_column="category", out_dir=tmp_path / "eval")
    assert 0.0 < report.metrics["P@10"] <= 1.0
    assert report.n_queries == int((shop.store.frame()["split"] == "test").sum())
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert saved["metrics"]["P@10"] == pytest.approx(report.metrics["P@10"])
    html = (tmp_path / "eval" / "results.html").read_text()
    assert "<img" in html


def test_cli_mirrors_the_api(shop: Project) -> None:
    runner = CliRunner()
    item_id = shop.store.ids()[5]
    result = runner.invoke(app, ["similar", item_id, "-k", "4", "--project", str(shop.path),
                                 "--json"])
    assert result.exit_code == 0, result.output
    ids = [r["id"] for r in json.loads(result.stdout)["results"]]
    assert ids == [r.id for r in shop.similar(item_id, k=4)]

    bad = runner.invoke(app, ["similar", "nope", "--project", str(shop.path)])
    assert bad.exit_code == 1
    assert "unknown item 'nope'" in bad.output
    assert "Traceback" not in bad.output


def test_cli_chooses_the_embedders_precision_and_info_shows_it(shop: Project) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["index", "-e", "efficientnet-lite0", "--image-size", "112",
                               "--option", "precision=fp32", "--name", "lite-fp32",
                               "--project", str(shop.path), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert summary["size"] == 400 and summary["embedder_id"].startswith("efficientnet-lite0-")
    assert Project(shop.path).indexes()["lite-fp32"]["precision"] == "fp32"
    info = runner.invoke(app, ["info", "--project", str(shop.path)])
    assert "index lite-fp32: " in info.output and "efficientnet-lite0, fp32" in info.output
    same = runner.invoke(app, ["index", "-e", "efficientnet-lite0", "--image-size", "112",
                               "--precision", "fp32", "--name", "lite-fp32",
                               "--project", str(shop.path), "--json"])
    assert same.exit_code == 0 and json.loads(same.stdout)["added"] == 0  # the same embedder
    for args, message in [(["--precision", "fp16"], "unknown precision 'fp16'"),
                          (["--option", "precision"], "expected KEY=VALUE")]:
        bad = runner.invoke(app, ["index", "-e", "efficientnet-lite0", *args, "--name", "x",
                                  "--project", str(shop.path)])
        assert bad.exit_code == 1 and message in bad.output and "Traceback" not in bad.output
