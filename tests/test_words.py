"""Words that know the catalogue: "in red", "for women", "but sandals" become filters.

The bundled demo catalogue (2,000 real products) is ingested, indexed with the fast
``hsv-histogram`` embedder and given a words index (the packaged MiniLM model, offline); the
vocabulary is built from its own colour, gender and category values.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookalike import Filters, Project
from lookalike.recommend.query import answer
from lookalike.recommend.text_search import build_text_index, search_with_text
from lookalike.recommend.understood import TYPE_VOTES
from lookalike.recommend.words import Vocabulary, understand

K = 10


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = Project(tmp_path_factory.mktemp("words") / "project")
    project.ingest("demo", progress=False)
    project.index("hsv-histogram", progress=False)
    build_text_index(project)
    return project


def _colour(result) -> str | None:  # noqa: ANN001 - a Recommendation
    return result.attributes.get("colour")


@pytest.mark.parametrize("text, understood, free_text", [
    ("in red", {"colour": ["Red"]}, ""),
    ("like this but in red", {"colour": ["Red"]}, ""),
    ("navy", {"colour": ["Navy Blue"]}, ""),
    ("in navy blue", {"colour": ["Navy Blue"]}, ""),
    ("gray", {"colour": ["Grey"]}, ""),
    ("for women", {"gender": ["Women"]}, ""),
    ("women's", {"gender": ["Women"]}, ""),
    ("mens", {"gender": ["Men"]}, ""),
    ("for boys", {"gender": ["Boys"]}, ""),
    ("but sandals", {"category": ["Sandals"]}, ""),
    ("tshirts", {"category": ["Tshirts"]}, ""),
    ("t-shirt", {"category": ["Tshirts"]}, ""),
    ("T shirt", {"category": ["Tshirts"]}, ""),
    ("casual shoes for women", {"category": ["Casual Shoes"], "gender": ["Women"]}, ""),
    ("shoes", {"category": ["Casual Shoes", "Formal Shoes", "Sports Shoes"]}, ""),
    ("red cotton shirt", {"colour": ["Red"], "category": ["Shirts"]}, "cotton"),
    ("black and white", {"colour": ["Black", "White"]}, ""),
    ("orange juice print", {}, "orange juice print"),
    ("jacket with red stripes", {"category": ["Jackets"]}, "with red stripes"),
    ("not red", {}, "not red"),
    ("funky summer vibes", {}, "funky summer vibes"),
    ("in red with long sleeves", {"colour": ["Red"]}, "with long sleeves"),
])
def test_words_name_catalogue_values(demo: Project, text: str, understood: dict,
                                     free_text: str) -> None:
    meaning = understand(text, demo.vocabulary())
    assert {c: sorted(v) for c, v in meaning.understood.items()} == \
        {c: sorted(v) for c, v in understood.items()}, text
    assert meaning.free_text == free_text


def test_the_vocabulary_is_the_catalogues_own_and_cached(demo: Project) -> None:
    vocabulary = demo.vocabulary()
    assert demo.vocabulary() is vocabulary  # built once per catalogue state
    frame = demo.store.frame()
    for column in ("colour", "gender", "category"):
        held = set(frame[column].dropna())
        named = {v for c, vs in vocabulary.phrases.values() if c == column for v in vs}
        assert named == held, column  # every value has a name, and nothing else is named
        assert vocabulary.counts[column] == dict(Counter(frame[column].dropna()))
    # Switched off, or a catalogue without colours: the words stay words (today's fusion).
    assert understand("in red", vocabulary, literal=["colour"]).understood == {}
    no_colours = Vocabulary.build({"category": {"Sandals": 3}})
    meaning = understand("sandals in red", no_colours)
    assert meaning.understood == {"category": ["Sandals"]} and meaning.free_text == "in red"


def test_a_new_value_is_understood_after_the_catalogue_changes(tmp_path: Path,
                                                              demo: Project) -> None:
    project = Project(tmp_path / "p")
    project.ingest("demo", progress=False)
    before = project.vocabulary()
    assert understand("in chartreuse", before).understood == {}
    photo = demo.store.image_path(demo.store.ids()[0]).read_bytes()
    project.add_item("new-1", photo, {"title": "Chartreuse scarf", "category": "Scarves",
                                      "colour": "Chartreuse"})
    after = project.vocabulary()
    assert after is not before
    assert understand("scarves in chartreuse", after).understood == \
        {"category": ["Scarves"], "colour": ["Chartreuse"]}


def test_photo_in_a_colour_gives_that_colour_and_keeps_the_type(demo: Project) -> None:
    frame = demo.store.frame()
    pairs = frame.groupby(["category", "colour"]).size()
    for category, colour in [("Tshirts", "Red"), ("Casual Shoes", "White"), ("Handbags", "Black"),
                             ("Watches", "Silver")]:
        assert pairs[(category, colour)] > K  # enough for a full page of that type and colour
        item_id = frame[(frame["category"] == category) & (frame["colour"] != colour)].index[0]
        photo = Path(frame.loc[item_id, "image_path"]).read_bytes()
        found = answer(demo, image=photo, text=f"in {colour.lower()}", k=K, exclude=[item_id])
        assert found.understood == {"colour": [colour]} and found.free_text == ""
        assert len(found.results) == K and item_id not in [r.id for r in found.results]
        assert all(_colour(r) == colour for r in found.results)
        kept = found.kept["category"][0]
        n = min(K, int(pairs.get((kept, colour), 0)))  # the kept type first, then filled up
        assert [r.category for r in found.results[:n]] == [kept] * n
        plain_top = [r.category for r in demo.search(photo, k=TYPE_VOTES, exclude=[item_id])]
        votes = Counter(plain_top)  # the photo's type: most common among its nearest products
        assert kept == next(c for c in plain_top if votes[c] == max(votes.values()))
        # today's fusion, for comparison, is what understand=False gives
        plain = answer(demo, image=photo, text=f"in {colour.lower()}", k=K, exclude=[item_id],
                       understand=False)
        assert plain.understood is None and [r.id for r in plain.results] == \
            [r.id for r in search_with_text(demo, photo, f"in {colour.lower()}", k=K,
                                            exclude=[item_id])]


def test_rare_values_boost_and_fill_up(demo: Project) -> None:
    """A value the catalogue holds fewer than k of ranks those items first, then fills up."""
    frame = demo.store.frame()
    rare = frame["colour"].value_counts()
    colour = rare[rare == 1].index[0]
    item_id = frame[frame["colour"] != colour].index[0]
    found = answer(demo, item_id=item_id, text=f"in {colour.lower()}", k=K, keep_type=False)
    assert found.understood == {"colour": [colour]} and found.kept == {}
    assert len(found.results) == K and _colour(found.results[0]) == colour
    assert sum(_colour(r) == colour for r in found.results) == 1


def test_words_alone_filter_and_rank_by_the_text_model(demo: Project) -> None:
    found = answer(demo, text="black watches for men", k=K)
    assert found.understood == {"colour": ["Black"], "category": ["Watches"], "gender": ["Men"]}
    assert all(r.category == "Watches" and _colour(r) == "Black"
               and r.attributes.get("gender") == "Men" for r in found.results)
    # an explicit filter on a column wins over words naming it: the words stay words
    explicit = answer(demo, text="black watches", k=K, filters=Filters.of(colour="Silver"))
    assert explicit.understood == {"category": ["Watches"]} and explicit.free_text == "black"
    assert all(_colour(r) == "Silver" for r in explicit.results)


def test_cli_json_says_what_was_understood(demo: Project, tmp_path: Path) -> None:
    from lookalike.cli import app

    runner = CliRunner()
    item_id = demo.store.frame().query("category == 'Tshirts' and colour != 'Red'").index[0]
    photo = tmp_path / "q.jpg"
    photo.write_bytes(demo.store.image_path(item_id).read_bytes())

    def run(*args: str) -> dict:
        result = runner.invoke(app, [*args, "--project", str(demo.path), "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    body = run("search", str(photo), "--text", "in red", "-k", "5")
    assert body["understood"] == {"colour": ["Red"]} and body["free_text"] == ""
    assert set(body["kept"]) == {"category"}  # the photo's type, by its nearest products' vote
    assert all(r["attributes"]["colour"] == "Red" for r in body["results"])
    body = run("similar", item_id, "--text", "in red", "--literal", "colour", "-k", "5")
    assert body["understood"] == {} and body["free_text"] == "in red"
    off = run("search", str(photo), "--text", "in red", "--no-understand", "-k", "5")
    assert "understood" not in off  # today's output shape, unchanged
    assert [r["id"] for r in off["results"]] == \
        [r.id for r in search_with_text(demo, photo, "in red", k=5)]
    table = runner.invoke(app, ["search", "--text", "red tshirts", "--project", str(demo.path)])
    assert table.exit_code == 0 and "understood colour: Red" in table.output


def test_rest_says_what_was_understood(demo: Project) -> None:
    from fastapi.testclient import TestClient

    from lookalike.serve.app import create_app
    from lookalike.serve.settings import ServeSettings

    item_id = demo.store.frame().query("category == 'Tshirts' and colour != 'Red'").index[0]
    photo = demo.store.image_path(item_id).read_bytes()
    app = create_app(ServeSettings(project=demo.path, read_only=True))
    with TestClient(app) as client:
        def search(**fields):  # noqa: ANN003, ANN202
            return client.post("/v1/search", data=fields,
                               files={"image": ("q.jpg", photo, "image/jpeg")})

        body = search(text="in red", k="5").json()
        assert body["understood"] == {"colour": ["Red"]} and body["free_text"] == ""
        assert set(body["kept"]) == {"category"}
        assert all(r["attributes"]["colour"] == "Red" for r in body["results"])
        assert body["query"]["text"] == "in red" and body["k"] == 5  # the old fields stay
        # removing the chip: the colour words go back to the text model
        literal = search(text="in red", k="5", literal="colour").json()
        assert literal["understood"] == {} and literal["free_text"] == "in red"
        assert [r["id"] for r in literal["results"]] == \
            [r.id for r in search_with_text(demo, photo, "in red", k=5)]
        unkept = search(text="in red", k="5", keep_type="false").json()
        assert unkept["kept"] == {} and all(r["attributes"]["colour"] == "Red"
                                            for r in unkept["results"])
        assert search(k="5").json()["understood"] is None  # a plain photo search
        similar = client.get(f"/v1/items/{item_id}/similar",
                             params={"text": "for women", "k": 5}).json()
        assert similar["understood"] == {"gender": ["Women"]}
        assert all(r["attributes"]["gender"] == "Women" for r in similar["results"])
        off = client.get(f"/v1/items/{item_id}/similar",
                         params={"text": "for women", "k": 5, "understand": "false"}).json()
        assert off["understood"] is None
        schema = client.get("/v1/openapi.json").json()["components"]["schemas"]["Results"]
        assert {"understood", "free_text", "kept"} <= set(schema["properties"])
