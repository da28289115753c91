"""Category-first search (paper 001) on real products: probe, scopes, fallbacks, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lookalike import Filters, Project
from lookalike.errors import ModelMismatchError, UnknownNameError
from lookalike.recommend.category_first import (
    CategoryProbe,
    category_first_search,
    decide,
    load_category_probe,
    probe_accuracy,
    scoped_filters,
    train_category_probe,
)

TYPES = ["Tshirts", "Casual Shoes", "Watches", "Handbags", "Sunglasses", "Kurtas", "Wallets",
         "Belts"]


@pytest.fixture(scope="module")
def shop(products_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    folder = tmp_path_factory.mktemp("category-shop")
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(TYPES)].sort_values("id")
    frame = frame.groupby("article_type", group_keys=False).head(60)
    manifest = folder / "slice.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"],
                  "gender": frame["gender"], "colour": frame["base_colour"],
                  "split": frame["split"], "sub_category": frame["sub_category"]}
                 ).to_parquet(manifest)
    project = Project(folder / "project")
    project.ingest(manifest, progress=False)
    project.index("hsv-histogram", progress=False)
    return project


@pytest.fixture(scope="module")
def probe(shop: Project) -> CategoryProbe:
    return train_category_probe(shop, max_iter=500)


def test_probe_is_saved_and_predicts_like_scikit_learn(shop: Project, probe: CategoryProbe) -> None:
    from sklearn.linear_model import LogisticRegression

    frame = shop.store.frame()
    train = frame[frame["split"] == "train"]
    vectors = shop.searcher(None).vectors_of(list(train.index), shop.store)
    model = LogisticRegression(max_iter=500).fit(vectors, train["category"])
    assert probe.classes == sorted(TYPES)
    assert probe.predict_proba(vectors) == pytest.approx(model.predict_proba(vectors), abs=1e-4)
    loaded = load_category_probe(shop)
    assert loaded.classes == probe.classes
    np.testing.assert_array_equal(loaded.coef, probe.coef)
    assert probe.info["n_train"] == len(train)


def test_probe_beats_chance_on_held_out_items(shop: Project, probe: CategoryProbe) -> None:
    frame = shop.store.frame()
    test = frame[frame["split"] == "test"]
    vectors = shop.searcher(None).vectors_of(list(test.index), shop.store)
    accuracy = probe_accuracy(probe, vectors, test["category"])
    assert accuracy["top1_accuracy"] > 2.5 / len(TYPES)
    assert accuracy["top2_accuracy"] >= accuracy["top1_accuracy"]


def test_confident_correct_classifier_equals_a_filtered_search(shop: Project,
                                                               probe: CategoryProbe) -> None:
    frame = shop.store.frame()
    loaded = shop.searcher(None)
    checked = 0
    for item_id in frame.index:
        vector = loaded.vector_of(item_id, shop.store)
        p = probe.predict_proba(vector)[0]
        best = probe.classes[int(np.argmax(p))]
        if p.max() < 0.5 or best != frame.loc[item_id, "category"]:
            continue
        result = category_first_search(shop, item_id=item_id, k=10, probe=probe,
                                       top1_confidence=0.5)
        assert result.decision.scope == "top1" and result.decision.categories == (best,)
        filtered = shop.similar(item_id, k=10, filters=Filters.of(category=best))
        assert [r.id for r in result.results] == [r.id for r in filtered]
        checked += 1
        if checked == 8:
            break
    assert checked == 8


def test_low_confidence_falls_back_to_the_whole_catalogue(shop: Project,
                                                          probe: CategoryProbe) -> None:
    item_id = shop.store.ids()[7]
    result = category_first_search(shop, item_id=item_id, k=10, probe=probe,
                                   top1_confidence=1.01, top2_confidence=1.01)
    assert result.decision.scope == "all" and result.decision.categories == ()
    assert [r.id for r in result.results] == [r.id for r in shop.similar(item_id, k=10)]


def test_top2_scope_searches_two_categories(shop: Project, probe: CategoryProbe) -> None:
    item_id = shop.store.ids()[30]
    result = category_first_search(shop, item_id=item_id, k=10, probe=probe,
                                   top1_confidence=1.01, top2_confidence=0.0)
    assert result.decision.scope == "top2" and len(result.decision.categories) == 2
    assert {r.category for r in result.results} <= set(result.decision.categories)


def test_short_category_is_filled_from_the_whole_catalogue(shop: Project,
                                                           probe: CategoryProbe) -> None:
    item_id = shop.store.ids()[0]
    result = category_first_search(shop, item_id=item_id, k=100, probe=probe,
                                   top1_confidence=0.0)
    category = result.decision.categories[0]
    in_category = int((shop.store.frame()["category"] == category).sum()) - (
        shop.store.get(item_id).category == category)
    assert len(result.results) == 100
    assert {r.category for r in result.results[:in_category]} == {category}
    assert item_id not in [r.id for r in result.results]


def test_a_category_the_user_asked_for_wins(probe: CategoryProbe) -> None:
    watches = probe.classes.index("Watches")
    decision = decide(np.eye(len(probe.classes))[watches], probe.classes)
    assert decision.scope == "top1" and decision.categories == ("Watches",)
    user = Filters.of(category="Belts", gender="Men")
    assert scoped_filters(user, decision) == user  # no overlap: the user's filter stands
    both = scoped_filters(Filters.of(category=["Belts", "Watches"]), decision)
    assert both.equals == {"category": ("Watches",)}
    narrowed = scoped_filters(Filters.of(gender="Men"), decision)
    assert narrowed.equals == {"gender": ("Men",), "category": ("Watches",)}


def test_search_by_photo_and_errors(shop: Project, probe: CategoryProbe) -> None:
    item = shop.store.get(shop.store.ids()[5])
    result = category_first_search(shop, item.image_path.read_bytes(), k=3, probe=probe)
    assert result.results[0].id == item.id
    with pytest.raises(Exception, match="exactly one"):
        category_first_search(shop, k=3, probe=probe)
    with pytest.raises(ModelMismatchError):
        probe.predict_proba(np.zeros((1, probe.dim + 1), dtype=np.float32))
    with pytest.raises(UnknownNameError, match="category-probe"):
        load_category_probe(shop, column="gender")


def test_cli_category_probe_and_search(shop: Project) -> None:
    import lookalike.commands.beyond  # noqa: F401
    from lookalike.cli import app

    runner = CliRunner()
    trained = runner.invoke(app, ["category-probe", "--project", str(shop.path), "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["classes"] == len(TYPES)
    item_id = shop.store.ids()[12]
    found = runner.invoke(app, ["category-search", "--item", item_id, "-k", "4", "--project",
                                str(shop.path), "--json"])
    assert found.exit_code == 0, found.output
    body = json.loads(found.stdout)
    assert body["decision"]["scope"] in ("top1", "top2", "all") and len(body["results"]) == 4
