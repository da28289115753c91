"""Words with pictures, on real products: words alone, a photo refined by words, bad text.

A slice of the real products catalogue (titles and photos) is ingested, indexed with the fast
``hsv-histogram`` embedder and given a fused text index built with the packaged
all-MiniLM-L6-v2 model (loaded offline).
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike import Filters, Project
from lookalike.errors import ModelMismatchError
from lookalike.models.text import MiniLMTextEmbedder, TextQueryError
from lookalike.recommend.text_search import (
    build_text_index,
    load_text_index,
    search_with_text,
)

TYPES = ["Tshirts", "Casual Shoes", "Watches", "Handbags", "Sunglasses", "Kurtas", "Heels"]


def _slice(products_parquet: Path, per_type: int = 50) -> pd.DataFrame:
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(TYPES)].sort_values("id")
    return frame.groupby("article_type", group_keys=False).head(per_type)


@pytest.fixture(scope="module")
def shop(products_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    folder = tmp_path_factory.mktemp("text-shop")
    frame = _slice(products_parquet)
    manifest = folder / "slice.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"],
                  "gender": frame["gender"], "colour": frame["base_colour"],
                  "split": frame["split"]}).to_parquet(manifest)
    project = Project(folder / "project")
    project.ingest(manifest, progress=False)
    project.index("hsv-histogram", progress=False)
    summary = build_text_index(project)
    assert summary.size == len(frame) and summary.added == len(frame)
    return project


def test_words_find_a_product_by_the_distinctive_words_of_its_title(shop: Project) -> None:
    frame = shop.store.frame()
    words = Counter(w for t in frame["title"] for w in set(re.findall(r"[a-z]{4,}", t.lower())))
    checked = 0
    for item_id, title in frame["title"].items():
        rare = [w for w in re.findall(r"[a-z]{4,}", title.lower()) if words[w] == 1]
        if len(rare) < 2:
            continue
        query = " ".join(rare[:3])
        results = search_with_text(shop, text=query, k=3)
        assert item_id in [r.id for r in results], (query, title, [r.title for r in results])
        checked += 1
        if checked == 5:
            break
    assert checked == 5


def test_words_alone_rank_by_title_similarity(shop: Project) -> None:
    text_index = load_text_index(shop)
    query = text_index.text_model.embed_query("red running shoes")
    ids = shop.store.ids()
    cosines = dict(zip(ids, text_index.text_vectors_of(shop, ids) @ query))
    results = search_with_text(shop, text="red running shoes", k=5)
    best = sorted(cosines.values(), reverse=True)[:5]
    # the exact top 5 by title cosine (ties may come in either order)
    assert [cosines[r.id] for r in results] == pytest.approx(best, abs=1e-5)
    assert [r.score for r in results] == pytest.approx(best, abs=1e-4)


def test_a_colour_word_moves_a_photo_search_towards_that_colour(shop: Project) -> None:
    frame = shop.store.frame()
    rows = []
    for category in ("Tshirts", "Casual Shoes", "Handbags"):
        items = frame[frame["category"] == category]
        target = items["colour"].value_counts().index[1]  # the type's 2nd most common colour
        for item_id in items[items["colour"] != target].index[:6]:
            photo = Path(items.loc[item_id, "image_path"]).read_bytes()
            plain = shop.search(photo, k=10, exclude=[item_id])
            refined = search_with_text(shop, photo, target.lower(), k=10, exclude=[item_id])
            rows.append([np.mean([r.attributes.get("colour") == target for r in rs])
                         for rs in (plain, refined)]
                        + [np.mean([r.category == category for r in rs])
                           for rs in (plain, refined)]
                        + [np.mean([r.category == category and r.attributes.get("colour") == target
                                    for r in rs]) for rs in (plain, refined)])
    colour_plain, colour_refined, type_plain, type_refined, hit_plain, hit_refined = \
        np.mean(rows, axis=0)
    assert colour_refined > colour_plain + 0.25, (colour_plain, colour_refined)
    assert hit_refined > hit_plain + 0.05, (hit_plain, hit_refined)  # right type AND colour
    assert type_refined >= type_plain - 0.05, (type_plain, type_refined)  # the photo still counts


def test_fused_scores_are_the_weighted_sum_of_both_cosines(shop: Project) -> None:
    item_id = shop.store.ids()[10]
    photo = shop.store.image_path(item_id).read_bytes()
    results = search_with_text(shop, photo, "black leather", k=8, text_weight=0.4)
    loaded = shop.searcher(None)
    text_index = load_text_index(shop)
    image_query = shop.embed_query(photo)
    text_query = text_index.text_model.embed_query("black leather")
    ids = [r.id for r in results]
    expected = (0.6 * loaded.vectors_of(ids, shop.store) @ image_query
                + 0.4 * text_index.text_vectors_of(shop, ids) @ text_query)
    assert [r.score for r in results] == pytest.approx(expected, abs=1e-4)
    assert [r.score for r in results] == sorted([r.score for r in results], reverse=True)


def test_rrf_fusion_and_filters(shop: Project) -> None:
    item_id = shop.store.ids()[3]
    results = search_with_text(shop, item_id=item_id, text="women", k=10, fusion="rrf",
                               filters=Filters.of(gender="Women"))
    assert results and item_id not in [r.id for r in results]
    assert all(r.attributes.get("gender") == "Women" for r in results)
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)


def test_more_like_this_with_its_own_title_differs_from_plain(shop: Project) -> None:
    item_id = shop.store.ids()[20]
    plain = [r.id for r in shop.similar(item_id, k=10)]
    fused = [r.id for r in search_with_text(shop, item_id=item_id, k=10, use_item_text=True)]
    assert item_id not in fused and len(fused) == 10
    assert fused != plain


def test_empty_text_is_plain_search_or_a_clear_error(shop: Project) -> None:
    item_id = shop.store.ids()[0]
    photo = shop.store.image_path(item_id).read_bytes()
    assert [r.id for r in search_with_text(shop, photo, "   ", k=5)] == \
        [r.id for r in shop.search(photo, k=5)]
    assert [r.id for r in search_with_text(shop, item_id=item_id, text="", k=5)] == \
        [r.id for r in shop.similar(item_id, k=5)]
    with pytest.raises(TextQueryError, match="nothing to search with"):
        search_with_text(shop, text="  ")


@pytest.mark.parametrize("text", ["красные туфли", "赤い靴", "ჩექმები"])
def test_text_in_an_unknown_script_is_a_clear_error(shop: Project, text: str) -> None:
    with pytest.raises(TextQueryError, match="English"):
        search_with_text(shop, text=text)
    photo = shop.store.image_path(shop.store.ids()[0]).read_bytes()
    with pytest.raises(TextQueryError, match="English"):
        search_with_text(shop, photo, text)


def test_text_model_loads_offline_and_refuses_images(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    def no_network(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the text model tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from lookalike.models.base import Embedder, available
    from lookalike.models.text import TextEncoder, create_text_encoder

    model = create_text_encoder("all-minilm-l6-v2")  # the text encoders' own registry
    assert isinstance(model, MiniLMTextEmbedder) and isinstance(model, TextEncoder)
    # Not an image embedder that refuses images: no image registry name, no image interface.
    assert not isinstance(model, Embedder) and "all-minilm-l6-v2" not in available()
    assert not hasattr(model, "embed")
    from lookalike.models.base import create
    from lookalike.models.text import load_text_embedder

    assert load_text_embedder(model.save(tmp_path / "text")).embedder_id == model.embedder_id
    with pytest.raises(ModelMismatchError, match="not a text model"):
        load_text_embedder(create("pixels").save(tmp_path / "pixels"))
    import sentence_transformers

    seen = {}
    real = sentence_transformers.SentenceTransformer

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
        seen["local_files_only"] = kwargs.get("local_files_only")
        return real(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", spy)
    model.embed_texts(["warm up"])
    assert seen == {"offline": "1", "local_files_only": True}  # offline while loading ...
    assert "HF_HUB_OFFLINE" not in os.environ  # ... and the process's environment is restored
    vectors = model.embed_texts(["Puma Men Black T-shirt", "Puma Men Black Tshirt", "gold watch"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(1.0, abs=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_cli_search_and_similar_take_words(shop: Project, tmp_path: Path) -> None:
    from lookalike.cli import app

    runner = CliRunner()
    project = ["--project", str(shop.path), "--json"]

    def ids(*args: str) -> list[str]:
        result = runner.invoke(app, [*args, *project])
        assert result.exit_code == 0, result.output
        return [r["id"] for r in json.loads(result.stdout)["results"]]

    # words alone
    # (--no-understand: today's fusion; understood words are tested in test_words.py)
    assert ids("search", "--text", "gold watch", "-k", "3", "--no-understand") == \
        [r.id for r in search_with_text(shop, text="gold watch", k=3)]
    # a photo refined by words
    item_id = shop.store.ids()[12]
    photo = tmp_path / "query.jpg"
    photo.write_bytes(shop.store.image_path(item_id).read_bytes())
    assert ids("search", str(photo), "--text", "in red", "-k", "5", "--no-understand") == \
        [r.id for r in search_with_text(shop, photo, "in red", k=5)]
    # more like this refined by words, and by the item's own title
    refined = ids("similar", item_id, "--text", "in red", "-k", "5", "--no-understand")
    assert refined == [r.id for r in search_with_text(shop, item_id=item_id, text="in red", k=5)]
    assert item_id not in refined
    assert ids("similar", item_id, "--with-title", "-k", "5") == \
        [r.id for r in search_with_text(shop, item_id=item_id, k=5, use_item_text=True)]
    # blank words with a photo: the plain photo search; the plain commands are unchanged
    assert ids("search", str(photo), "--text", " ") == ids("search", str(photo)) == \
        [r.id for r in shop.search(photo, k=5)]
    assert ids("similar", item_id, "--text", "") == [r.id for r in shop.similar(item_id, k=5)]

    for args, needle in ((["search", "--text", "красные туфли"], "English"),
                         (["search", str(photo), "--text", "赤い靴"], "English"),
                         (["similar", item_id, "--text", "ჩექმები"], "English"),
                         (["search", "--text", "  "], "nothing to search with"),
                         (["search"], "give a photo, --text WORDS, or both"),
                         (["similar", item_id, "--text", "red", "--text-weight", "2"], "text-weight")):
        bad = runner.invoke(app, [*args, "--project", str(shop.path)])
        assert bad.exit_code != 0 and needle in bad.output, (args, bad.output)
        assert "Traceback" not in bad.output


def test_text_index_update_is_incremental(shop: Project, products_parquet: Path) -> None:
    again = build_text_index(shop)
    assert again.added == 0 and again.unchanged == again.size
    assert again.texts_embedded == 0
    image = Image.open(io.BytesIO(pd.read_parquet(products_parquet).iloc[0]["image_jpeg"]))
    assert search_with_text(shop, image.convert("RGB"), "blue", k=2)


def test_added_and_removed_items_reach_the_words_index(products_parquet: Path,
                                                      tmp_path: Path) -> None:
    """``index(text_columns=...)`` builds the words index; add_item / remove_items keep it
    current (a new product is found by its words at once, a removed one is gone)."""
    frame = _slice(products_parquet, per_type=8)
    manifest = tmp_path / "small.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"]}
                 ).to_parquet(manifest)
    project = Project(tmp_path / "p")
    project.ingest(manifest, progress=False)
    project.index("pixels", progress=False, text_columns=["title"])
    photo = pd.read_parquet(products_parquet).sort_values("id").iloc[-1]["image_jpeg"]
    project.add_item("zebra-1", photo, {"title": "Zebra striped aviator pyjama gizmo"})
    assert search_with_text(project, text="zebra striped pyjama gizmo", k=1)[0].id == "zebra-1"
    project.remove_items(["zebra-1"])
    assert "zebra-1" not in [r.id for r in search_with_text(project, text="zebra gizmo", k=5)]


def test_rest_search_and_similar_take_words(shop: Project) -> None:
    from fastapi.testclient import TestClient

    from lookalike.serve.app import create_app
    from lookalike.serve.settings import ServeSettings

    item_id = shop.store.ids()[4]
    photo = shop.store.image_path(item_id).read_bytes()
    app = create_app(ServeSettings(project=shop.path, read_only=True))
    with TestClient(app) as client:
        def search(**fields):  # noqa: ANN003, ANN202
            files = {"image": ("q.jpg", fields.pop("image"), "image/jpeg")} \
                if "image" in fields else None
            return client.post("/v1/search", data=fields, files=files)

        # words alone (no image field at all)
        # (understand=false: today's fusion; understood words are tested in test_words.py)
        body = search(text="gold watch", k="4", understand="false").json()
        assert [r["id"] for r in body["results"]] == \
            [r.id for r in search_with_text(shop, text="gold watch", k=4)]
        assert body["query"]["text"] == "gold watch"
        # a photo refined by words
        body = search(image=photo, text="in red", k="6", understand="false").json()
        assert [r["id"] for r in body["results"]] == \
            [r.id for r in search_with_text(shop, photo, "in red", k=6)]
        # backwards compatible: a photo alone, and blank words with a photo, are the plain search
        plain = [r.id for r in shop.search(photo, k=5)]
        assert [r["id"] for r in search(image=photo).json()["results"]] == plain
        assert [r["id"] for r in search(image=photo, text="  ").json()["results"]] == plain
        # more like this refined by words (and by the item's own title)
        refined = client.get(f"/v1/items/{item_id}/similar",
                             params={"text": "black", "k": 5, "understand": "false"}).json()
        assert [r["id"] for r in refined["results"]] == \
            [r.id for r in search_with_text(shop, item_id=item_id, text="black", k=5)]
        assert refined["query"]["text"] == "black"
        titled = client.get(f"/v1/items/{item_id}/similar", params={"with_title": "true"}).json()
        assert [r["id"] for r in titled["results"]] == \
            [r.id for r in search_with_text(shop, item_id=item_id, k=5, use_item_text=True)]
        assert [r["id"] for r in client.get(f"/v1/items/{item_id}/similar",
                                            params={"text": ""}).json()["results"]] == \
            [r.id for r in shop.similar(item_id, k=5)]

        # bad words: a clear 422, never a crash
        for response, needle in ((search(text="赤い靴"), "English"),
                                 (search(image=photo, text="красные туфли"), "English"),
                                 (client.get(f"/v1/items/{item_id}/similar",
                                             params={"text": "ჩექმები"}), "English"),
                                 (search(text=" "), "nothing to search with"),
                                 (search(k="3"), "give an image, text, or both"),
                                 (search(text="x" * 1001), "text"),
                                 (search(text="red", text_weight="1.5"), "text_weight"),
                                 (search(text="red", colour="Mauve"), "Mauve")):
            assert response.status_code == 422, response.text
            assert needle in response.json()["error"]["message"], response.text
        missing = client.get("/v1/items/no-such-item/similar", params={"text": "red"})
        assert missing.status_code == 404
