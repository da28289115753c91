"""Search by photo for *this* product (issue 18): a shopper's photo (cropped, turned, padded on
grey, brighter or darker, low JPEG quality) finds the product among look-alikes of its type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lookalike import Project
from lookalike.errors import LookalikeError
from lookalike.catalogue.copy_edits import SHOPPER, shopper_photo
from lookalike.recommend.photo_frame import frame_turn, query_views, straighten
from lookalike.recommend.photo_match import (MatchSettings, match_scores, rerank,
                                             search_exact)
from lookalike.recommend.query import answer

TYPES = ("Tshirts", "Shirts", "Casual Shoes", "Handbags")


@pytest.fixture(scope="module")
def shop(products_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(TYPES)].sort_values("id")
    frame = frame.groupby("article_type", group_keys=False).head(30).drop_duplicates("image_jpeg")
    folder = tmp_path_factory.mktemp("exact-shop")
    manifest = folder / "slice.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"]}
                 ).to_parquet(manifest)
    project = Project(folder / "project")
    project.ingest(manifest, progress=False)
    project.index("hsv-histogram", progress=False)
    return project


def _photo(shop: Project, item_id: str) -> Image.Image:
    return Image.open(shop.store.image_path(item_id)).convert("RGB")


def test_a_shopper_photo_has_every_edit_within_its_range() -> None:
    image = Image.new("RGB", (60, 80), (250, 250, 250))
    photo, edits = shopper_photo(image, np.random.default_rng(3))
    assert SHOPPER["keep"][0] <= min(edits["keep"]) <= max(edits["keep"]) <= SHOPPER["keep"][1]
    assert SHOPPER["degrees"][0] <= abs(edits["degrees"]) <= SHOPPER["degrees"][1]
    assert SHOPPER["brightness"][0] <= edits["brightness"] <= SHOPPER["brightness"][1]
    assert edits["jpeg"] == 40 and photo.mode == "RGB" and photo.width > 50


def test_the_photo_check_prefers_the_product_to_its_look_alikes(shop: Project) -> None:
    ids = shop.store.ids()
    rng = np.random.default_rng(7)
    wins = 0
    for item_id in ids[::20]:
        query, _ = shopper_photo(_photo(shop, item_id), rng)
        others = [i for i in ids if i != item_id][:10]
        scores = match_scores(query, [_photo(shop, i) for i in [item_id, *others]])
        values = scores.texture - scores.colour / 40.0
        wins += int(np.argmax(values) == 0)
    assert wins >= len(ids[::20]) - 1  # at most one miss among the sampled products


def test_exact_search_puts_the_product_first(shop: Project) -> None:
    rng = np.random.default_rng(11)
    settings = MatchSettings(depth=40, min_score=0.6)
    found_first, plain_first = 0, 0
    sample = shop.store.ids()[::20]
    for item_id in sample:
        query, _ = shopper_photo(_photo(shop, item_id), rng)
        found = search_exact(shop, query, 5, settings=settings)
        found_first += found[0].id == item_id
        plain_first += shop.search(query, 5)[0].id == item_id
    assert found_first >= len(sample) - 1
    assert found_first >= plain_first


def test_exact_is_an_option_of_the_one_query_verb(shop: Project) -> None:
    item_id = shop.store.ids()[3]
    query, _ = shopper_photo(_photo(shop, item_id), np.random.default_rng(2))
    results = answer(shop, image=query, k=3, exact=True).results
    assert len(results) == 3 and results[0].id == item_id
    with pytest.raises(LookalikeError, match="exact"):
        answer(shop, image=query, text="in red", exact=True)
    with pytest.raises(LookalikeError, match="exact"):
        answer(shop, item_id=item_id, exact=True)
    with pytest.raises(LookalikeError, match="depth"):
        search_exact(shop, query, settings=MatchSettings(depth=0))


def test_rerank_moves_only_matches_and_keeps_the_rest_in_order() -> None:
    values = np.array([0.1, 0.9, 0.2, 0.75, -np.inf])
    assert rerank(values, 0.7) == [1, 3, 0, 2, 4]
    assert rerank(values, 2.0) == [0, 1, 2, 3, 4]


def test_a_shoppers_photo_is_framed_again_before_the_search(shop: Project) -> None:
    """The turn of a shopper's photo is read off its grey frame and undone; a catalogue-like
    photo (white background, no frame) is left as it is."""
    rng = np.random.default_rng(4)
    errors = []
    for item_id in shop.store.ids()[::15]:
        original = _photo(shop, item_id)
        query, edits = shopper_photo(original, rng)
        turn = frame_turn(query)
        assert turn is not None
        errors.append(abs(turn - edits["degrees"]))
        level = edits["grey"] * edits["brightness"]
        framed = [np.mean(np.abs(np.asarray(image, dtype=np.float32) - level).max(-1) < 8)
                  for image in (query, straighten(query))]
        assert framed[1] < 0.5 * framed[0]  # the grey frame is (mostly) gone
    assert np.median(errors) < 0.5 and max(errors) < 2.0
    plain = _photo(shop, shop.store.ids()[0])
    assert frame_turn(plain) is None and straighten(plain).size == plain.size
    views = query_views(plain)
    assert len(views) == 2 and views[1].width > plain.width
    assert len(query_views(plain, margin=0)) == 1
    with pytest.raises(LookalikeError, match="margin"):
        search_exact(shop, plain, settings=MatchSettings(margin=0.9))
