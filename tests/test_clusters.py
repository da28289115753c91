"""Catalogue clusters (paper 003) on real products: seeded K-means, scores, saving, diversity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import normalized_mutual_info_score
from typer.testing import CliRunner

from lookalike import Project
from lookalike.errors import LookalikeError
from lookalike.recommend.clusters import (
    clusters,
    diverse_similar,
    diversify,
    kmeans,
    load_clusters,
    nmi,
    purity,
)
from lookalike.recommend.results import Recommendation

TYPES = ["Tshirts", "Casual Shoes", "Watches", "Handbags", "Sunglasses", "Kurtas", "Jeans",
         "Heels"]


@pytest.fixture(scope="module")
def shop(products_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    folder = tmp_path_factory.mktemp("cluster-shop")
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(TYPES)].sort_values("id")
    frame = frame.groupby("article_type", group_keys=False).head(50)
    manifest = folder / "slice.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"],
                  "sub_category": frame["sub_category"], "split": frame["split"]}
                 ).to_parquet(manifest)
    project = Project(folder / "project")
    project.ingest(manifest, progress=False)
    project.index("hsv-histogram", progress=False)
    return project


def test_purity_and_nmi_by_hand() -> None:
    assert purity([0, 0, 1, 1], ["a", "a", "b", "c"]) == pytest.approx(0.75)
    assert purity([0, 1, 2, 3], ["a", "a", "b", "c"]) == pytest.approx(1.0)
    assert purity([0, 0, 0, 0], ["a", "a", "b", "c"]) == pytest.approx(0.5)
    labels, classes = [0, 0, 1, 1, 2, 2], ["x", "x", "y", "y", "y", "z"]
    assert nmi(labels, classes) == pytest.approx(normalized_mutual_info_score(classes, labels))
    assert nmi([0, 0, 1, 1], ["a", "a", "b", "b"]) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["faiss", "minibatch"])
def test_kmeans_is_deterministic_under_a_seed(shop: Project, method: str) -> None:
    first = clusters(shop, k=8, seed=3, method=method, save=False)
    second = clusters(shop, k=8, seed=3, method=method, save=False)
    np.testing.assert_array_equal(first.labels, second.labels)
    np.testing.assert_allclose(first.centroids, second.centroids, atol=1e-6)
    other = clusters(shop, k=8, seed=4, method=method, save=False)
    assert not np.allclose(first.centroids, other.centroids)
    assert sum(first.sizes) == len(shop.store) and len(first.sizes) == 8
    assert np.linalg.norm(first.centroids, axis=1) == pytest.approx(1.0, abs=1e-4)


def test_clusters_beat_a_random_assignment(shop: Project) -> None:
    report = clusters(shop, k=8, seed=0, save=False)
    frame = shop.store.frame().loc[report.ids]
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(report.labels)
    assert report.purity["category"] > purity(shuffled, frame["category"]) + 0.1
    assert report.nmi["category"] > nmi(shuffled, frame["category"]) + 0.1
    assert set(report.purity) == {"category", "sub_category"}


def test_clusters_are_saved_with_a_picture_grid(shop: Project) -> None:
    report = clusters(shop, k=6, seed=1, grid_per_cluster=5)
    saved = load_clusters(shop)
    assert saved.folder == report.folder
    assert saved.cluster_of == report.cluster_of()
    np.testing.assert_array_equal(saved.centroids, report.centroids)
    assert saved.report["k"] == 6 and saved.report["sizes"] == report.sizes
    html = (report.folder / "clusters.html").read_text()
    assert html.count("<img") >= 6 * 2
    # the central items of a cluster are its own members, most central first
    vectors = shop.searcher(None).vectors_of(report.central[0], shop.store)
    closeness = vectors @ report.centroids[0]
    assert list(closeness) == sorted(closeness, reverse=True)
    assert {report.cluster_of()[i] for i in report.central[0]} == {0}


def test_diversify_keeps_order_and_caps_each_cluster() -> None:
    results = [Recommendation(id=str(n), score=1.0 - n / 10) for n in range(8)]
    cluster_of = {"0": 0, "1": 0, "2": 0, "3": 1, "4": 0, "5": 1, "6": 1, "7": 2}
    picked = diversify(results, cluster_of, per_cluster=2)
    assert [r.id for r in picked] == ["0", "1", "3", "5", "7"]
    assert [r.id for r in diversify(results, cluster_of, per_cluster=1, k=2)] == ["0", "3"]
    with pytest.raises(LookalikeError):
        diversify(results, cluster_of, per_cluster=0)


def test_diverse_similar_spreads_results_over_clusters(shop: Project) -> None:
    report = clusters(shop, k=8, seed=0)
    item_id = shop.store.ids()[0]
    results = diverse_similar(shop, item_id, k=8, per_cluster=1)
    assert len(results) == 8 and item_id not in [r.id for r in results]
    assert len({report.cluster_of()[r.id] for r in results}) == 8
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)


def test_bad_k_is_a_clear_error(shop: Project) -> None:
    with pytest.raises(LookalikeError, match="k=100000"):
        clusters(shop, k=100_000, save=False)
    with pytest.raises(LookalikeError, match="unknown k-means method"):
        kmeans(np.eye(4, dtype=np.float32), 2, method="nope")


def test_cli_clusters(shop: Project) -> None:
    import lookalike.commands.beyond  # noqa: F401
    from lookalike.cli import app

    result = CliRunner().invoke(app, ["clusters", "-k", "5", "--seed", "2", "--project",
                                      str(shop.path), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["k"] == 5 and sum(body["sizes"]) == len(shop.store)
    assert 0.0 < body["purity"]["category"] <= 1.0


def test_rest_routes_serve_the_saved_clusters(shop: Project) -> None:
    from fastapi.testclient import TestClient

    from lookalike.serve.app import create_app
    from lookalike.serve.settings import ServeSettings

    report = clusters(shop, k=6, seed=5)
    app = create_app(ServeSettings(project=shop.path, read_only=True))
    with TestClient(app) as client:
        body = client.get("/v1/clusters", params={"per_cluster": 4}).json()
        assert body["k"] == 6 and len(body["clusters"]) == 6
        assert [c["size"] for c in body["clusters"]] == sorted(report.sizes, reverse=True)
        first = body["clusters"][0]
        assert [i["id"] for i in first["items"]] == report.central[first["cluster"]][:4]
        assert client.get(first["items"][0]["image_url"]).status_code == 200
        one = client.get(f"/v1/clusters/{first['cluster']}").json()
        assert one["size"] == first["size"]
        assert client.get("/v1/clusters/99").status_code == 404


def test_main_commands_diversify_on_request(shop: Project) -> None:
    """`search` / `similar --per-cluster N` and the API's `per_cluster`: at most N per cluster."""
    from fastapi.testclient import TestClient

    from lookalike.cli import app as cli
    from lookalike.serve.app import create_app
    from lookalike.serve.settings import ServeSettings

    report = clusters(shop, k=8, seed=3)
    cluster_of = report.cluster_of()
    item_id = shop.store.ids()[7]
    photo = shop.store.image_path(item_id)
    expected = [r.id for r in diverse_similar(shop, item_id, k=6, per_cluster=2)]
    runner = CliRunner()

    def ids(*args: str) -> list[str]:
        result = runner.invoke(cli, [*args, "--project", str(shop.path), "--json"])
        assert result.exit_code == 0, result.output
        return [r["id"] for r in json.loads(result.stdout)["results"]]

    assert ids("similar", item_id, "-k", "6", "--per-cluster", "2") == expected
    plain = ids("similar", item_id, "-k", "6")
    assert plain == [r.id for r in shop.similar(item_id, k=6)]
    from_photo = ids("search", str(photo), "-k", "6", "--per-cluster", "1")
    assert len(from_photo) == 6 and len({cluster_of[i] for i in from_photo}) == 6
    with TestClient(create_app(ServeSettings(project=shop.path, read_only=True))) as client:
        body = client.get(f"/v1/items/{item_id}/similar",
                          params={"k": 6, "per_cluster": 2}).json()
        assert [r["id"] for r in body["results"]] == expected
        assert body["query"]["per_cluster"] == 2
        found = client.post("/v1/search", data={"k": "6", "per_cluster": "1"},
                            files={"image": ("q.jpg", photo.read_bytes(), "image/jpeg")}).json()
        assert [r["id"] for r in found["results"]] == from_photo
        assert client.get(f"/v1/items/{item_id}/similar",
                          params={"per_cluster": 0}).status_code == 422
