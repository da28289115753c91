"""Personalised picks, event logs and shop-the-look through the Python API, the CLI and REST.

One project of 300 real products (six article types), indexed with the fast handcrafted fusion
``phog+hsv-histogram``, is shared by the module; event logs are built from its real item ids.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import lookalike.commands.personal  # noqa: F401  (registers the commands on the CLI app)
from lookalike import Filters, LookalikeError, Project, UnknownItemError
from lookalike.cli import app as cli_app
from lookalike.errors import UnknownNameError
from lookalike.recommend.events import (
    EventLogError,
    evaluate_recs,
    ingest_events,
    load_events,
    time_split,
)
from lookalike.recommend.personal import fit_shopper_model, mmr, parse_history, recommend
from lookalike.recommend.look import look
from lookalike.recommend.regions import SceneError, box_iou
from lookalike.recommend.scenes import compose_scene, decode_jpeg

CATEGORIES = ["Tshirts", "Watches", "Casual Shoes", "Handbags", "Kurtas", "Sunglasses"]
EMBEDDER = "phog+hsv-histogram"


@pytest.fixture(scope="module")
def products(products_parquet: Path) -> pd.DataFrame:
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(CATEGORIES)].sort_values("id")
    return frame.groupby("article_type").head(60).reset_index(drop=True)


@pytest.fixture(scope="module")
def shop(products: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Project:
    folder = tmp_path_factory.mktemp("personal")
    frame = products.iloc[:300]
    manifest = folder / "m.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"],
                  "gender": frame["gender"], "colour": frame["base_colour"],
                  "split": frame["split"]}).to_parquet(manifest)
    project = Project(folder / "project")
    assert project.ingest(manifest, progress=False).added == 300
    assert project.index(EMBEDDER, progress=False).size == 300
    return project


def _of(shop: Project, category: str, n: int) -> list[str]:
    frame = shop.store.frame()
    return list(frame.index[frame["category"] == category][:n])


# ---- history parsing ---------------------------------------------------------------------------
def test_history_parsing() -> None:
    assert parse_history("12, 7 12 ,9") == ["12", "7", "9"]
    assert parse_history([12, " 7 ", 12]) == ["12", "7"]
    for empty in ("", " , ", [], None):
        with pytest.raises(LookalikeError, match="history is empty"):
            parse_history(empty)


@pytest.mark.parametrize("method", ["centroid", "knn-vote", "latent-svm"])
def test_unknown_history_ids_are_named(shop: Project, method: str) -> None:
    known = shop.store.ids()[0]
    with pytest.raises(UnknownItemError, match=r"'nope-1'.*'nope-2'.*\(2 of 3\)"):
        recommend(shop, [known, "nope-1", "nope-2"], method=method)


def test_unknown_method_is_a_clear_error(shop: Project) -> None:
    with pytest.raises(UnknownNameError, match="available: centroid, knn-vote, latent-svm"):
        recommend(shop, shop.store.ids()[:1], method="magic")


# ---- the recommenders ----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["centroid", "knn-vote", "latent-svm"])
def test_picks_exclude_seen_items_and_follow_the_taste(shop: Project, method: str) -> None:
    history = _of(shop, "Watches", 5)
    picks = recommend(shop, history, k=10, method=method)
    assert len(picks) == 10 and not {p.id for p in picks} & set(history)
    assert [p.score for p in picks] == sorted((p.score for p in picks), reverse=True)
    # Six categories of 50 items: a watch history should mostly bring watches.
    assert sum(p.category == "Watches" for p in picks) >= 6


@pytest.mark.parametrize("method", ["centroid", "knn-vote", "latent-svm"])
def test_filters_apply(shop: Project, method: str) -> None:
    history = _of(shop, "Tshirts", 4)
    frame = shop.store.frame()
    picks = recommend(shop, history, k=8, method=method, filters=Filters.of(category="Handbags"))
    assert len(picks) == 8 and all(p.category == "Handbags" for p in picks)
    women = set(frame.index[frame["gender"] == "Women"]) - set(history)
    picks = recommend(shop, history, k=200, method=method, filters=Filters.of(gender="Women"))
    assert {p.id for p in picks} <= women and len(picks) == min(200, len(women))


def test_centroid_is_the_mean_vector_search(shop: Project) -> None:
    history = _of(shop, "Kurtas", 3)
    loaded = shop.searcher(None)
    ids = shop.store.ids()
    vectors = loaded.vectors_of(ids, shop.store)
    centre = loaded.vectors_of(history, shop.store).mean(axis=0)
    scores = vectors @ (centre / np.linalg.norm(centre))
    scores[[ids.index(h) for h in history]] = -np.inf
    expected = [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
    assert [p.id for p in recommend(shop, history, k=5)] == expected


def test_knn_vote_sums_neighbour_similarities(shop: Project) -> None:
    history = _of(shop, "Sunglasses", 2) + _of(shop, "Handbags", 1)
    picks = recommend(shop, history, k=5, method="knn-vote")
    loaded = shop.searcher(None)
    ids = [i for i in shop.store.ids() if i not in history]
    sims = loaded.vectors_of(ids, shop.store) @ loaded.vectors_of(history, shop.store).T
    # each history item votes for its 20 nearest items with their cosine similarity
    depth = 20
    votes = np.zeros(len(ids))
    for column in sims.T:
        top = np.argsort(-column, kind="stable")[:depth]
        votes[top] += column[top]
    assert picks[0].id == ids[int(np.argmax(votes))]
    assert picks[0].score == pytest.approx(votes.max(), rel=1e-4)


def test_latent_svm_model_ranks_like_its_index_search(shop: Project) -> None:
    history = _of(shop, "Casual Shoes", 6)
    model = fit_shopper_model(shop, history, "latent-svm", negatives=60)
    assert model.info["positives"] == 6 and model.info["iterations"] >= 1
    assert len(model.info["windows_chosen"]) == 6
    loaded = shop.searcher(None)
    ids = [i for i in shop.store.ids() if i not in history]
    scores = model.score(loaded.vectors_of(ids, shop.store))
    expected = [ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
    picks = recommend(shop, history, k=5, method="latent-svm", negatives=60)
    assert [p.id for p in picks] == expected
    np.testing.assert_allclose([p.score for p in picks], np.sort(scores)[::-1][:5], rtol=1e-4)


def test_diversity_spreads_the_picks(shop: Project) -> None:
    history = _of(shop, "Tshirts", 3)
    loaded = shop.searcher(None)

    def spread(picks: list) -> float:
        vectors = loaded.vectors_of([p.id for p in picks], shop.store)
        sims = vectors @ vectors.T
        return float(sims[np.triu_indices(len(picks), 1)].mean())

    plain = recommend(shop, history, k=10)
    varied = recommend(shop, history, k=10, diversity=0.7)
    assert len(varied) == 10 and len({p.id for p in varied}) == 10
    assert not {p.id for p in varied} & set(history)
    assert spread(varied) < spread(plain)
    with pytest.raises(LookalikeError, match="diversity"):
        recommend(shop, history, diversity=1.5)


def test_mmr_hand_case() -> None:
    vectors = np.array([[1, 0], [0.99, 0.14], [0, 1]], dtype=np.float32)
    relevance = np.array([1.0, 0.95, 0.5])
    assert mmr(vectors, relevance, 3, 0.0) == [0, 1, 2]
    assert mmr(vectors, relevance, 2, 0.5) == [0, 2]


# ---- event logs ------------------------------------------------------------------------------------
def _log(shop: Project, folder: Path) -> Path:
    """Four shoppers browsing real items of one category each, one hour apart, plus noise."""
    rows = []
    for n, category in enumerate(["Watches", "Handbags", "Tshirts", "Kurtas"]):
        for step, item in enumerate(_of(shop, category, 8)):
            rows.append({"shopper": f"s{n}", "item": item, "event": "view",
                         "timestamp": f"2024-03-0{1 + step // 4}T{10 + step % 4}:00:00Z"})
    rows.append({"shopper": "s0", "item": "not-in-catalogue", "event": "view",
                 "timestamp": "2024-03-05T10:00:00Z"})
    path = folder / "events.csv"
    pd.DataFrame(rows).sample(frac=1.0, random_state=0).to_csv(path, index=False)
    return path


def test_event_log_ingest_and_time_split(shop: Project, tmp_path: Path) -> None:
    path = _log(shop, tmp_path)
    report = ingest_events(shop, path)
    assert (report.rows, report.added, report.unknown_items) == (33, 32, 1)
    assert report.unknown_examples == ["not-in-catalogue"] and report.shoppers == 4
    again = ingest_events(shop, path)
    assert (again.added, again.duplicates, again.total_events) == (0, 32, 32)
    events = load_events(shop)
    assert len(events) == 32 and set(events["event"]) == {"view"}
    splits, skipped = time_split(events, holdout=2)
    assert len(splits) == 4 and not any(skipped.values())
    s0 = next(s for s in splits if s.shopper == "s0")
    watches = _of(shop, "Watches", 8)
    assert s0.history == watches[:6] and s0.held_out == watches[6:]  # order by time, not file


def test_bad_event_logs_are_clear_errors(shop: Project, tmp_path: Path) -> None:
    item = shop.store.ids()[0]
    missing = tmp_path / "missing.csv"
    pd.DataFrame({"shopper": ["a"], "item": [item]}).to_csv(missing, index=False)
    with pytest.raises(EventLogError, match="missing column.*timestamp"):
        ingest_events(shop, missing)
    bad_time = tmp_path / "bad.csv"
    pd.DataFrame({"shopper": ["a", "b"], "item": [item, item],
                  "timestamp": ["2024-01-01", "yesterday-ish"]}).to_csv(bad_time, index=False)
    with pytest.raises(EventLogError, match="row 2.*unreadable timestamp"):
        ingest_events(shop, bad_time)
    weird = tmp_path / "x.json"
    weird.write_text("{}")
    with pytest.raises(EventLogError, match="unknown event log format"):
        ingest_events(shop, weird)
    before = len(load_events(shop))
    with pytest.raises(EventLogError):
        ingest_events(shop, bad_time)
    assert len(load_events(shop)) == before  # a bad file changes nothing


def test_evaluate_recs_replays_the_log(shop: Project, tmp_path: Path) -> None:
    ingest_events(shop, _log(shop, tmp_path))
    report = evaluate_recs(shop, "centroid", k=10, holdout=2)
    assert report.n_shoppers == 4
    assert set(report.metrics) == {"HR@10", "NDCG@10", "coverage"}
    assert 0.0 <= report.metrics["NDCG@10"] <= report.metrics["HR@10"] <= 1.0
    splits = time_split(load_events(shop), 2)[0]
    lists = {s.shopper: [p.id for p in recommend(shop, s.history, k=10)] for s in splits}
    hits = [bool(set(lists[s.shopper]) & set(s.held_out)) for s in splits]
    assert report.metrics["HR@10"] == pytest.approx(np.mean(hits))
    # A random top 10 of the 294 unseen items would hit 2 held-out items 6.7% of the time.
    assert report.metrics["HR@10"] >= 0.5
    assert report.metrics["coverage"] == pytest.approx(
        len({i for ids in lists.values() for i in ids}) / 300)


# ---- shop the look through the project ------------------------------------------------------------
def test_look_finds_the_liked_product_in_a_scene(shop: Project, products: pd.DataFrame) -> None:
    rng = np.random.default_rng(1)
    by_id = products.set_index(products["id"].astype(str))
    target = _of(shop, "Handbags", 1)[0]
    others = [_of(shop, "Tshirts", 1)[0], _of(shop, "Watches", 1)[0]]
    scene = compose_scene("brick", [(i, decode_jpeg(by_id.loc[i, "image_jpeg"]),
                                     "target" if i == target else "distractor")
                                    for i in [target, *others]], rng, size=(400, 300),
                          side_range=(60, 80))
    buffer = io.BytesIO()
    scene.image.resize((800, 600)).save(buffer, "PNG")  # the API maps boxes back to the original
    found = look(shop, buffer.getvalue(), like=target, top_regions=3, k=4, aspect=4 / 3,
                 max_side=400)
    assert found["mode"] == "like" and found["scene"] == {"width": 800, "height": 600,
                                                          "working_scale": 0.5}
    best = np.array(found["regions"][0]["box"]) / 2
    assert box_iou(scene.target.box, best)[0] >= 0.5
    assert all(target not in [i["id"] for i in r["items"]] for r in found["regions"])
    assert len(found["regions"]) == 3 and all(len(r["items"]) == 4 for r in found["regions"])


def test_look_with_the_segmenter_finds_products(shop: Project, products: pd.DataFrame) -> None:
    """The default localiser (the packaged segmenter): the liked product's box, and with no
    query most products of the scene among the top regions, ranked by objectness."""
    rng = np.random.default_rng(4)
    by_id = products.set_index(products["id"].astype(str))
    target = _of(shop, "Handbags", 2)[1]
    others = [_of(shop, "Tshirts", 2)[1], _of(shop, "Watches", 2)[1], _of(shop, "Kurtas", 1)[0]]
    scene = compose_scene("grass", [(i, decode_jpeg(by_id.loc[i, "image_jpeg"]),
                                     "target" if i == target else "distractor")
                                    for i in [target, *others]], rng, size=(640, 480),
                          side_range=(90, 140))
    found = look(shop, scene.image, like=target, top_regions=3, k=2)
    assert found["localiser"] == "segmenter" and len(found["regions"]) == 3
    assert box_iou(scene.target.box, np.array(found["regions"][0]["box"]))[0] >= 0.5
    anything = look(shop, scene.image, top_regions=5, k=1)
    boxes = np.array([r["box"] for r in anything["regions"]])
    assert sum(box_iou(p.box, boxes).max() >= 0.5 for p in scene.products) >= 2  # of 4
    scores = [r["score"] for r in anything["regions"]]
    assert scores == sorted(scores, reverse=True) and 0 <= min(scores) <= max(scores) <= 1
    windows = look(shop, scene.image, like=target, top_regions=3, k=2, localiser="windows")
    assert windows["localiser"] == "windows"
    with pytest.raises(LookalikeError, match="unknown localiser 'boxes'"):
        look(shop, scene.image, like=target, localiser="boxes")
    white = look(shop, scene.image, like=target, top_regions=3, k=2, backdrop="white")
    assert box_iou(scene.target.box, np.array(white["regions"][0]["box"]))[0] >= 0.5
    with pytest.raises(LookalikeError, match="backdrop is one of scene, white"):
        look(shop, scene.image, like=target, backdrop="grey")
    # The packaged look head was trained for efficientnet-lite0, not this index's embedder:
    # asking for it or not ranks the same. The segmenter at its training side finds it too.
    plain = look(shop, scene.image, like=target, top_regions=3, k=2, look_head=False)
    assert [r["score"] for r in plain["regions"]] == [r["score"] for r in found["regions"]]
    trained_side = look(shop, scene.image, like=target, top_regions=3, k=2, segmenter_side=None)
    assert box_iou(scene.target.box, np.array(trained_side["regions"][0]["box"]))[0] >= 0.5
    with pytest.raises(LookalikeError, match="segmenter_side is between 32 and 2048 px, not 8"):
        look(shop, scene.image, like=target, segmenter_side=8)


def test_the_category_vote_is_the_share_of_neighbours_of_the_like_category(shop: Project) -> None:
    from lookalike.recommend.look_space import category_vote

    loaded = shop.searcher()
    bags, watches = _of(shop, "Handbags", 6), _of(shop, "Watches", 5)
    vote = category_vote(shop, loaded, bags[0])
    assert vote is not None
    shares = vote(loaded.vectors_of(bags[1:] + watches, shop.store))
    assert shares.shape == (10,) and 0 <= shares.min() and shares.max() <= 1
    assert shares[:5].mean() > shares[5:].mean() + 0.3, shares
    assert vote(np.zeros((0, len(loaded.vectors_of(bags[:1], shop.store)[0])))).shape == (0,)


def test_project_methods_equal_the_functions(shop: Project, products: pd.DataFrame) -> None:
    """The Python API mirrors the CLI: Project.recommend / Project.look call the same code."""
    history = _of(shop, "Watches", 3)
    assert [r.id for r in shop.recommend(history, k=5)] == \
        [r.id for r in recommend(shop, history, k=5)]
    scene_bytes = products["image_jpeg"].iloc[1]
    scene = Image.open(io.BytesIO(scene_bytes)).convert("RGB")
    assert shop.look(scene_bytes, like=history[0], top_regions=1)["regions"][0]["box"] == \
        look(shop, scene, like=history[0], top_regions=1)["regions"][0]["box"]


def test_look_with_a_history_and_without_any(shop: Project, products: pd.DataFrame) -> None:
    scene = Image.open(io.BytesIO(products["image_jpeg"].iloc[0])).convert("RGB")
    scene = scene.resize((240, 320))
    watches = _of(shop, "Watches", 3)
    for options in ({"history": watches, "method": "centroid"},
                    {"history": watches, "method": "knn-vote"},
                    {"history": watches, "method": "latent-svm", "negatives": 30},
                    {"history": watches, "method": "latent-svm", "negatives": 30,
                     "features": "hsv-histogram"},  # fast pass in another space than the index
                    {"like": watches[0], "features": "hsv-histogram"},
                    {}, {"features": "hsv-histogram"}):
        found = look(shop, scene, top_regions=2, **options)
        assert len(found["regions"]) == 2, options
        scores = [r["score"] for r in found["regions"]]
        assert scores == sorted(scores, reverse=True)
        other = options.get("features") == "hsv-histogram"
        assert found["checked_by"] == ("phog+hsv-histogram" if other else None)
        assert all(len(r["items"]) == 5 for r in found["regions"])
        assert not {i["id"] for r in found["regions"] for i in r["items"]} & set(
            options.get("history", []) + [options.get("like")])
    with pytest.raises(SceneError, match="smaller than the smallest window"):
        look(shop, scene.resize((15, 15)))
    with pytest.raises(UnknownNameError, match="nope"):
        look(shop, scene, features="nope")
    with pytest.raises(UnknownItemError, match="missing-item"):
        look(shop, scene, like="missing-item")
    with pytest.raises(UnknownItemError, match="missing-item"):
        look(shop, scene, history=["missing-item"])


# ---- CLI and REST ------------------------------------------------------------------------------------
def test_cli_commands(shop: Project, tmp_path: Path) -> None:
    runner = CliRunner()
    history = _of(shop, "Watches", 3)
    result = runner.invoke(cli_app, ["recommend", *history, "-k", "4", "--json",
                                     "--project", str(shop.path)])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["results"]) == 4
    result = runner.invoke(cli_app, ["recommend", "nope", "--project", str(shop.path)])
    assert result.exit_code == 1 and "nope" in result.output
    log = _log(shop, tmp_path)
    result = runner.invoke(cli_app, ["ingest-events", str(log), "--project", str(shop.path)])
    assert result.exit_code == 0 and "skipped" in result.output
    result = runner.invoke(cli_app, ["eval-recs", "--holdout", "2", "--json",
                                     "--project", str(shop.path)])
    assert result.exit_code == 0 and json.loads(result.output)["n_shoppers"] == 4
    result = runner.invoke(cli_app, ["recommend", "--shopper", "s1", "-k", "3", "--json",
                                     "--project", str(shop.path)])
    assert result.exit_code == 0, result.output
    scene = tmp_path / "scene.png"
    Image.open(shop.store.get(history[0]).image_path).resize((160, 200)).save(scene)
    result = runner.invoke(cli_app, ["look", str(scene), "--like", history[1], "--json",
                                     "--top-regions", "2", "--project", str(shop.path)])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["regions"]) == 2


def test_rest_endpoints(shop: Project) -> None:
    from lookalike.serve.app import create_app
    from lookalike.serve.routes_personal import router
    from lookalike.serve.settings import ServeSettings

    app = create_app(ServeSettings(project=shop.path, read_only=True))
    if not any(getattr(route, "path", "") == "/v1/recommend" for route in app.routes):
        app.include_router(router)
    history = _of(shop, "Handbags", 3)
    with TestClient(app) as client:
        reply = client.post("/v1/recommend", json={"history": history, "k": 5,
                                                   "category": ["Handbags"]})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert len(body["results"]) == 5 and not {r["id"] for r in body["results"]} & set(history)
        assert all(r["category"] == "Handbags" and r["image_url"] for r in body["results"])
        reply = client.post("/v1/recommend", json={"history": ["nope"]})
        assert reply.status_code == 404 and "nope" in reply.json()["error"]["message"]
        assert client.post("/v1/recommend", json={"history": []}).status_code == 422
        assert client.post("/v1/recommend", json={"history": history,
                                                  "method": "magic"}).status_code == 422
        photo = Path(shop.store.get(history[0]).image_path).read_bytes()
        reply = client.post("/v1/look", files={"image": ("scene.jpg", photo, "image/jpeg")},
                            data={"like": history[1], "top_regions": "2", "k": "3"})
        assert reply.status_code == 200, reply.text
        regions = reply.json()["regions"]
        assert len(regions) == 2 and all(len(r["items"]) == 3 for r in regions)
        reply = client.post("/v1/look", files={"image": ("scene.jpg", photo, "image/jpeg")},
                            data={"windows": "big"})
        assert reply.status_code == 422 and "windows" in reply.json()["error"]["message"]
        reply = client.post("/v1/look", files={"image": ("x.jpg", b"not an image", "image/jpeg")})
        assert reply.status_code == 422


def test_cli_history_and_window_lists(shop: Project, tmp_path: Path) -> None:
    """`--history a,b` (the issue's form) equals positional ids; `--windows 40,60` is honoured."""
    runner = CliRunner()
    history = _of(shop, "Sunglasses", 3)
    by_option = runner.invoke(cli_app, ["recommend", "--history", ",".join(history), "-k", "5",
                                        "--json", "--project", str(shop.path)])
    by_args = runner.invoke(cli_app, ["recommend", *history, "-k", "5", "--json",
                                      "--project", str(shop.path)])
    assert by_option.exit_code == 0, by_option.output
    ids = [r["id"] for r in json.loads(by_option.output)["results"]]
    assert ids == [r["id"] for r in json.loads(by_args.output)["results"]]
    assert len(ids) == 5 and not set(ids) & set(history)
    scene = tmp_path / "scene.png"
    Image.open(shop.store.get(history[0]).image_path).resize((240, 320)).save(scene)
    result = runner.invoke(cli_app, ["look", str(scene), "--history", ",".join(history[:2]),
                                     "--windows", "40,60", "--stride", "10", "--json",
                                     "--project", str(shop.path)])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["mode"] == "history" and found["windows"]["stride"] == 10
    assert [w for w, _ in found["windows"]["sizes"]] == [40, 60]
    result = runner.invoke(cli_app, ["look", str(scene), "--windows", "40,big",
                                     "--project", str(shop.path)])
    assert result.exit_code == 1 and "whole numbers" in result.output


def test_scene_edge_cases_through_look_and_rest(shop: Project) -> None:
    """Grey, tiny and huge scene photos: a correct result or a one-line error, never a crash."""
    from lookalike.serve.app import create_app
    from lookalike.serve.settings import ServeSettings

    like = _of(shop, "Handbags", 1)[0]
    photo = Image.open(shop.store.get(like).image_path).convert("RGB")

    def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        return buffer.getvalue()

    grey = photo.convert("L").resize((180, 240))  # a one-channel photo
    found = look(shop, encoded(grey), like=like, top_regions=2)
    assert len(found["regions"]) == 2
    assert all(0 <= x0 < x1 <= 180 and 0 <= y0 < y1 <= 240
               for x0, y0, x1, y1 in (r["box"] for r in found["regions"]))
    # Exactly the smallest 3:4 window (20 x 25 px on the 5 px grid): one window, one region.
    found = look(shop, photo.resize((20, 25)), like=like, top_regions=3, refine=False)
    assert [r["box"] for r in found["regions"]] == [[0, 0, 20, 25]]
    # The box regressor may tighten that one window onto the product; it stays in the photo.
    found = look(shop, photo.resize((20, 25)), like=like, top_regions=3)
    assert found["windows"]["boxes_refined"] and len(found["regions"]) == 1
    x0, y0, x1, y1 = found["regions"][0]["box"]
    assert 0 <= x0 < x1 <= 20 and 0 <= y0 < y1 <= 25 and (x1 - x0) * (y1 - y0) >= 0.5 * 500
    huge = photo.resize((4000, 3000))  # scaled to 1,024 px for the windows, boxes mapped back
    found = look(shop, encoded(huge, "JPEG"), like=like, top_regions=2, refine=False)
    assert found["scene"]["width"] == 4000 and found["scene"]["working_scale"] == 0.256
    assert all(0 <= x0 < x1 <= 4000 and 0 <= y0 < y1 <= 3000 and x1 - x0 >= 20 / 0.256 - 1
               for x0, y0, x1, y1 in (r["box"] for r in found["regions"]))
    with TestClient(create_app(ServeSettings(project=shop.path, read_only=True))) as client:
        def post(data: bytes, **form: str):  # noqa: ANN202
            return client.post("/v1/look", files={"image": ("scene.png", data, "image/png")},
                               data={"like": like, **form})

        reply = post(encoded(photo.resize((12, 9))))
        assert reply.status_code == 422
        assert "smaller than the smallest window" in reply.json()["error"]["message"]
        reply = post(encoded(grey))
        assert reply.status_code == 200 and len(reply.json()["regions"]) == 5
        assert reply.json()["windows"]["boxes_refined"] is True
        reply = post(encoded(grey), refine="false", top_regions="1")
        assert reply.status_code == 200 and reply.json()["windows"]["boxes_refined"] is False
        reply = post(encoded(huge, "JPEG"), top_regions="1")
        assert reply.status_code == 200, reply.text
        assert reply.json()["scene"]["width"] == 4000
        reply = post(encoded(grey), windows="200,300")  # neither fits a 180 px wide photo
        assert reply.status_code == 422 and "smaller" in reply.json()["error"]["message"]
        reply = post(encoded(grey), stride="30", windows="20")
        assert reply.status_code == 422 and "stride" in reply.json()["error"]["message"]


def test_eval_recs_on_a_log_of_simulated_shoppers(shop: Project, products: pd.DataFrame,
                                                  tmp_path: Path) -> None:
    """End to end: simulated shoppers -> an event CSV -> `ingest-events` -> `eval-recs` (time
    split: the last events, the shoppers' next items, are held out), against random picks."""
    import shutil

    from lookalike.recommend.scenes import shopper_event_log, simulate_shoppers

    project_dir = tmp_path / "project"  # a copy: the shared project's event log stays as it is
    shutil.copytree(shop.path, project_dir)
    (project_dir / "events.sqlite").unlink(missing_ok=True)  # other tests' events stay there
    catalogue = products.iloc[:300].assign(id=lambda f: f["id"].astype(str))  # the shop's items
    for column in ("gender", "usage", "article_type", "base_colour"):
        catalogue[column] = catalogue[column].fillna("").astype(str)
    shoppers = simulate_shoppers(catalogue, 24, seed=3, views=6, next_items=2, min_items=8,
                                 noise=0.2)
    log = tmp_path / "events.csv"
    shopper_event_log(shoppers).to_csv(log, index=False)
    assert len(pd.read_csv(log)) == 24 * 8
    runner = CliRunner()
    result = runner.invoke(cli_app, ["ingest-events", str(log), "--json",
                                     "--project", str(project_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["added"] == 24 * 8
    reports = {}
    for method in ("centroid", "knn-vote"):
        result = runner.invoke(cli_app, ["eval-recs", "--method", method, "--holdout", "2",
                                         "--json", "--project", str(project_dir)])
        assert result.exit_code == 0, result.output
        reports[method] = json.loads(result.output)
        assert reports[method]["n_shoppers"] == 24
        assert 0 < reports[method]["metrics"]["coverage"] <= 1
    # Ten random picks among the 294 unseen items hit one of the 2 held-out items with
    # probability 1 - C(292, 10) / C(294, 10) = 6.7%; the picks follow the simulated taste.
    chance = 1 - (284 * 283) / (294 * 293)
    assert min(r["metrics"]["HR@10"] for r in reports.values()) >= 3 * chance, reports
