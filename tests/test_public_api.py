"""The one public API (issue 15): every verb is a ``Project`` method, on real product photos.

One small project (real products, the fast ``pixels`` embedder, one photo planted twice under
two ids) is built per module; the CLI and the service call exactly these methods.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lookalike.api import LookalikeError, Project, Recommendation, UnknownNameError
from lookalike.layout import ProjectLayout

N_ITEMS = 48
CATEGORIES = ["Tshirts", "Watches", "Casual Shoes", "Handbags"]


@pytest.fixture(scope="module")
def shop(products_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(CATEGORIES)].sort_values("id")
    frame = frame.groupby("article_type").head(N_ITEMS // len(CATEGORIES)).reset_index(drop=True)
    rows = pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                         "title": frame["title"], "category": frame["article_type"],
                         "gender": frame["gender"], "split": frame["split"]})
    planted = rows.iloc[[0]].assign(id="copy-of-" + rows.iloc[0]["id"])  # the same photo again
    folder = tmp_path_factory.mktemp("public-api")
    manifest = folder / "m.parquet"
    pd.concat([rows, planted]).to_parquet(manifest)
    project = Project(folder / "project")
    report = project.ingest(manifest, progress=False)
    assert report.added == N_ITEMS + 1 and not report.rejected
    project.index("pixels", progress=False)
    return project


def test_queries_go_through_the_searcher(shop: Project) -> None:
    first = shop.store.ids()[0]
    found = shop.similar(first, k=5)
    assert len(found) == 5 and all(isinstance(r, Recommendation) for r in found)
    assert first not in [r.id for r in found]
    assert found[0].id == f"copy-of-{first}"  # the same photo is the nearest
    searcher = shop.searcher()
    assert searcher is shop.searcher(None)  # loaded once, kept
    vector = searcher.vector_of(first, shop.store)
    hits = searcher.search_vector(vector, 5, exclude=[first])
    assert [r.id for r in shop.recommendations(hits.ids, hits.scores)][:5] == [r.id for r in found]
    by_photo = shop.search(shop.store.image_path(first), k=3)
    assert {first, f"copy-of-{first}"} == {r.id for r in by_photo[:2]}
    with pytest.raises(LookalikeError):
        shop.search()  # neither a photo nor words


def test_index_version_and_layout(shop: Project) -> None:
    version = shop.index_version()
    assert version is not None and version.startswith("v")
    assert shop.index_version("no-such-index") is None
    layout = ProjectLayout(shop.path)
    assert shop.layout == layout and layout.settings_file.is_file()
    assert (layout.index("default") / "CURRENT").is_file()
    assert layout.embeddings(shop.searcher().embedder.embedder_id).is_dir()
    assert shop.rejects() == []


def test_clusters_are_a_project_verb(shop: Project) -> None:
    report = shop.clusters(k=4, seed=0, grid_clusters=2)
    saved = shop.load_clusters()
    assert set(saved.cluster_of) == set(shop.store.ids())
    assert report.k == 4 and saved.folder.is_relative_to(shop.layout.clusters("default"))
    with pytest.raises(UnknownNameError):
        shop.load_clusters("no-such-index")


def test_duplicates_are_project_verbs(shop: Project) -> None:
    first = shop.store.ids()[0]
    report = shop.duplicates(method="phash")
    assert any({first, f"copy-of-{first}"} <= set(group.ids) for group in report.groups)
    saved = shop.duplicate_report("phash")
    assert saved["method"] == "phash" and len(saved["groups"]) == len(report.groups)
    with pytest.raises(UnknownNameError, match="no duplicate report for embedding"):
        shop.duplicate_report("embedding")
    photo = shop.store.image_path(first).read_bytes()
    for _ in range(2):
        matches = dict(shop.find_duplicates(photo, method="phash"))
        assert matches[first] == 0 and matches[f"copy-of-{first}"] == 0
    assert len(shop.caches.duplicate_finders) == 1  # one finder, kept on the project
