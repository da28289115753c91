"""Near-duplicates on real product photos: re-encoded copies are found, look-alikes are not."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance
from typer.testing import CliRunner

import lookalike
from lookalike import Project
from lookalike.errors import LookalikeError, UnknownNameError
from lookalike.catalogue.copy_edits import Edit, edit_copy, random_edits
from lookalike.recommend.duplicates import (
    DuplicateFinder,
    PHashMatcher,
    catalogue_fingerprints,
    catalogue_phashes,
    duplicates,
    find_duplicate_of,
    group_pairs,
    hamming,
    hamming_pairs,
    phash_code,
)

TYPES = ["Tshirts", "Casual Shoes", "Watches", "Ties", "Sunglasses", "Kurtas", "Handbags"]


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def frame(products_parquet: Path) -> pd.DataFrame:
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(TYPES)].sort_values("id")
    frame = frame.groupby("article_type", group_keys=False).head(45)
    return frame.drop_duplicates("image_jpeg")  # one item per distinct photo


@pytest.fixture(scope="module")
def shop(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Project:
    folder = tmp_path_factory.mktemp("dedup-shop")
    manifest = folder / "slice.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"],
                  "colour": frame["base_colour"]}).to_parquet(manifest)
    project = Project(folder / "project")
    project.ingest(manifest, progress=False)
    project.index("hsv-histogram", progress=False)
    return project


def _photo(shop: Project, item_id: str) -> Image.Image:
    return Image.open(shop.store.image_path(item_id)).convert("RGB")


@pytest.mark.parametrize("method", ["phash", "phash+colour"])
def test_a_re_encoded_copy_is_found_as_a_duplicate(shop: Project, method: str) -> None:
    for item_id in shop.store.ids()[:40:8]:
        original = _photo(shop, item_id)
        copy = _jpeg(original, quality=40)
        found = dict(find_duplicate_of(shop, copy, method=method))
        assert item_id in found, (method, item_id)
        brighter = ImageEnhance.Brightness(original).enhance(1.1)
        assert item_id in dict(find_duplicate_of(shop, brighter, method=method))


def test_the_embedding_method_finds_a_mild_copy(shop: Project) -> None:
    # hsv-histogram (the fast test embedder) moves a lot under heavy JPEG; q90 is mild.
    for item_id in shop.store.ids()[:40:8]:
        copy = _jpeg(_photo(shop, item_id), quality=90)
        found = find_duplicate_of(shop, copy, method="embedding", threshold=0.95)
        assert item_id in dict(found)
        assert all(0.0 <= d <= 0.05 + 1e-6 for _, d in found)


def test_products_of_one_type_in_another_colour_are_not_duplicates(shop: Project) -> None:
    frame = shop.store.frame()
    plain = duplicates(shop, method="phash", save=False)
    checked = duplicates(shop, method="phash+colour", save=False)

    def look_alike_pairs(report) -> set[tuple[str, str]]:
        pairs = set()
        for group in report.groups:
            for a in group.ids:
                for b in group.ids:
                    if a < b and frame.loc[a, "category"] == frame.loc[b, "category"] \
                            and frame.loc[a, "colour"] != frame.loc[b, "colour"]:
                        pairs.add((a, b))
        return pairs

    fooled = look_alike_pairs(plain)
    assert len(fooled) >= 20, "phash alone should pair look-alikes of another colour here"
    # Colour labels are noisy at 60x80 (a 'Black' tie that looks navy), so allow a few.
    assert len(look_alike_pairs(checked) & fooled) <= 0.1 * len(fooled)
    for item_id in frame.index[:20]:  # and every photo still finds itself
        assert item_id in dict(find_duplicate_of(shop, _photo(shop, item_id)))


def test_pure_phash_is_blind_to_colour_and_the_colour_check_is_not(shop: Project) -> None:
    # The reason phash+colour is the default: a grey-scale hash cannot tell colours apart.
    frame = shop.store.frame()
    checked = 0
    for item_id in frame.index[frame["colour"].isin(["Red", "Blue", "Green"])][:5]:
        original = _photo(shop, item_id)
        swapped = Image.merge("RGB", original.split()[::-1])  # red <-> blue
        if hamming(phash_code(original), phash_code(swapped)) > 8:
            continue
        assert item_id in dict(find_duplicate_of(shop, swapped, method="phash"))
        assert item_id not in dict(find_duplicate_of(shop, swapped, method="phash+colour"))
        checked += 1
    assert checked >= 3


def test_multi_hash_range_search_is_exact(shop: Project) -> None:
    ids, codes = catalogue_phashes(shop)
    assert len(ids) == len(shop.store)
    distances = hamming(codes[:, None, :], codes[None, :, :])  # small slice: brute force is fine
    for radius in (0, 4, 8, 11, 14):
        pairs = hamming_pairs(codes, radius)
        upper = np.triu_indices(len(codes), 1)
        expected = {(int(i), int(j)) for i, j in zip(*upper) if distances[i, j] <= radius}
        assert {(int(i), int(j)) for i, j, _ in pairs} == expected
        assert all(distances[i, j] == d for i, j, d in pairs)


def test_groups_join_chains_of_pairs() -> None:
    pairs = np.array([[0, 1, 2], [1, 2, 4], [5, 6, 0]])
    groups = group_pairs(8, pairs)
    assert [g.tolist() for g in groups] == [[0, 1, 2], [5, 6]]
    assert group_pairs(3, np.zeros((0, 3))) == []


def test_catalogue_report_finds_an_ingested_copy(shop: Project, tmp_path: Path) -> None:
    source = shop.store.ids()[3]
    copy = _jpeg(_photo(shop, source).resize((90, 120)), quality=60)
    manifest = tmp_path / "copy.parquet"
    pd.DataFrame({"id": ["copy-of-" + source], "image": [copy], "title": ["a copy"],
                  "category": [shop.store.get(source).category]}).to_parquet(manifest)
    shop.ingest(manifest, progress=False)
    shop.index("hsv-histogram", progress=False)
    try:
        for method in ("phash", "phash+colour"):
            report = duplicates(shop, method=method)
            together = [g for g in report.groups if source in g.ids]
            assert together and "copy-of-" + source in together[0].ids, method
            assert (report.folder / "groups.html").read_text().count("<img") >= 2
            saved = json.loads((report.folder / "groups.json").read_text())
            assert saved["n_groups"] == len(report.groups)
    finally:
        shop.remove_items(["copy-of-" + source])


def test_ingest_warns_about_or_skips_near_duplicates(shop: Project, frame: pd.DataFrame,
                                                     products_parquet: Path,
                                                     tmp_path: Path) -> None:
    from lookalike.cli import app

    source = shop.store.ids()[5]
    copy = _jpeg(_photo(shop, source), quality=45)
    # A real T-shirt that is not in the shop and has no near-duplicate there: a look-alike of
    # the shop's T-shirts, not a copy of one.
    full = pd.read_parquet(products_parquet, columns=["id", "article_type", "image_jpeg"])
    candidates = full[(full["article_type"] == "Tshirts") & ~full["id"].isin(frame["id"])]
    fresh = next(row for row in candidates.head(40).itertuples()
                 if not find_duplicate_of(shop, row.image_jpeg))
    fresh_image = Image.open(io.BytesIO(fresh.image_jpeg)).convert("RGB")
    fresh_copy = _jpeg(ImageEnhance.Brightness(fresh_image.resize((72, 96))).enhance(1.08), 70)
    manifest = tmp_path / "incoming.parquet"
    new_ids = ["copy-of-" + source, "new-tshirt", "new-tshirt-again"]
    pd.DataFrame({"id": new_ids, "image": [copy, fresh.image_jpeg, fresh_copy],
                  "title": ["a copy", "a new T-shirt", "the new T-shirt again"],
                  "category": ["Tshirts"] * 3}).to_parquet(manifest)
    before = len(shop.store)
    try:
        # warn: everything is stored; the copy of a catalogue photo and the second copy of a
        # photo earlier in the same ingest are listed
        report = shop.ingest(manifest, progress=False, on_duplicate_image="warn")
        assert report.added == 3 and not report.rejected
        assert {(d["id"], d["duplicate_of"], d["skipped"]) for d in report.duplicates} == {
            ("copy-of-" + source, source, False), ("new-tshirt-again", "new-tshirt", False)}
        shop.remove_items(new_ids)
        # skip, from the command line: the duplicates become rejects with a clear reason
        result = CliRunner().invoke(app, ["ingest", str(manifest), "--on-duplicate", "skip",
                                          "--project", str(shop.path), "--json"])
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        assert body["added"] == 1 and body["rejected_by_reason"] == {"duplicate": 2}
        assert "new-tshirt" in shop.store and "copy-of-" + source not in shop.store
        assert any(f"near-duplicate of catalogue item {source!r}" in r["message"]
                   for r in body["rejected"])
        text = CliRunner().invoke(app, ["ingest", str(manifest), "--on-duplicate", "warn",
                                        "--project", str(shop.path)])
        assert text.exit_code == 0 and "near-duplicate of" in text.output, text.output
        bad = CliRunner().invoke(app, ["ingest", str(manifest), "--on-duplicate", "drop",
                                       "--project", str(shop.path)])
        assert bad.exit_code == 1 and "keep, warn, skip" in bad.output
    finally:
        shop.remove_items([i for i in new_ids if i in shop.store])
    assert len(shop.store) == before


def test_matcher_adds_items_and_bad_input_errors(shop: Project) -> None:
    prints = catalogue_fingerprints(shop)
    ids = prints.ids
    matcher = PHashMatcher(prints.take(range(10)), threshold=4)
    outsider = _photo(shop, ids[20])
    assert ids[20] not in dict(matcher.find(outsider))
    matcher.add(ids[20], outsider)
    assert matcher.find(outsider)[0] == (ids[20], 0.0)
    with pytest.raises(UnknownNameError):
        duplicates(shop, method="nope")
    with pytest.raises(LookalikeError, match="whole number"):
        duplicates(shop, method="phash", threshold=2.5)


def test_cli_duplicates(shop: Project, tmp_path: Path) -> None:
    import lookalike.commands.beyond  # noqa: F401
    from lookalike.cli import app

    photo = tmp_path / "copy.jpg"
    photo.write_bytes(_jpeg(_photo(shop, shop.store.ids()[1]), quality=50))
    runner = CliRunner()
    one = runner.invoke(app, ["duplicates", "--photo", str(photo), "--project", str(shop.path),
                              "--json"])
    assert one.exit_code == 0, one.output
    assert shop.store.ids()[1] in [d["id"] for d in json.loads(one.stdout)["duplicates"]]
    # (the catalogue report of the default method is what the REST test below reads)
    report = runner.invoke(app, ["duplicates", "--method", "phash+colour", "--project",
                                 str(shop.path)])
    assert report.exit_code == 0, report.output and "groups" in report.output


def test_rest_routes_serve_duplicates(shop: Project) -> None:
    from fastapi.testclient import TestClient

    from lookalike.serve.app import create_app
    from lookalike.serve.settings import ServeSettings

    duplicates(shop)  # saves the default report
    app = create_app(ServeSettings(project=shop.path, read_only=True))
    item_id = shop.store.ids()[2]
    with TestClient(app) as client:
        body = client.get("/v1/duplicates").json()
        assert body["method"] == "copies" and body["n_groups"] >= 1
        assert all(len(g["items"]) >= 2 for g in body["groups"])
        found = client.get(f"/v1/items/{item_id}/duplicates").json()
        assert found["item"] == item_id and item_id not in [d["id"] for d in found["duplicates"]]
        assert client.get("/v1/duplicates", params={"method": "embedding"}).status_code == 404
        assert client.get("/v1/items/nope/duplicates").status_code == 404
        assert client.get("/v1/duplicates", params={"method": "bogus"}).status_code == 422


def test_words_and_clusters_not_prepared_are_a_clear_409(shop: Project) -> None:
    """This shop has an image index but no text index and no clusters: asking the main query
    routes for words or per-cluster results says which command prepares them."""
    from fastapi.testclient import TestClient

    from lookalike.serve.app import create_app
    from lookalike.serve.settings import ServeSettings

    item_id = shop.store.ids()[0]
    with TestClient(create_app(ServeSettings(project=shop.path, read_only=True))) as client:
        for response, command in (
                (client.post("/v1/search", data={"text": "red shoes"}), "lookalike text-index"),
                (client.get(f"/v1/items/{item_id}/similar", params={"text": "with stripes"}),
                 "lookalike text-index"),
                (client.get(f"/v1/items/{item_id}/similar", params={"per_cluster": 1}),
                 "lookalike clusters")):
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "not_prepared"
            assert command in response.json()["error"]["message"]
        assert client.get(f"/v1/items/{item_id}/similar").status_code == 200  # plain still works


# ---- copies: combined edits (the default method) ---------------------------------------------
COMBINED = [Edit("crop", (0.04, 0.03, 0.05, 0.04)), Edit("resize", (0.7,)),
            Edit("brightness", (1.12,)), Edit("jpeg", (35.0,))]


@pytest.fixture(scope="module")
def demo_frame() -> pd.DataFrame:
    frame = pd.read_parquet(Path(lookalike.__file__).parent / "data" / "demo.parquet")
    frame = frame[frame["article_type"].isin(TYPES)].sort_values("id")
    frame = frame.drop_duplicates("image_jpeg").groupby("article_type", group_keys=False).head(30)
    return frame.reset_index(drop=True)


@pytest.fixture(scope="module")
def copy_shop(demo_frame: pd.DataFrame,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, dict[str, str]]:
    """A shop of real demo products plus copies of eight of them, each cropped, resized,
    brightened and re-saved at JPEG quality 35 (fixed edits for four, seeded random 4-edit
    copies for the other four), under new ids."""
    folder = tmp_path_factory.mktemp("copy-shop")
    rng = np.random.default_rng(7)
    originals = demo_frame.iloc[::len(demo_frame) // 8][:8]
    copies = {}
    rows = []
    for n, row in enumerate(originals.itertuples()):
        photo = Image.open(io.BytesIO(row.image_jpeg)).convert("RGB")
        edited = edit_copy(photo, COMBINED if n < 4 else random_edits(rng, 4))
        copies[f"copy-{row.id}"] = str(row.id)
        rows.append({"id": f"copy-{row.id}", "image": _jpeg(edited, 95), "title": "a copy",
                     "category": row.article_type, "colour": row.base_colour})
    catalogue = pd.DataFrame({"id": demo_frame["id"].astype(str), "image": demo_frame["image_jpeg"],
                              "title": demo_frame["title"], "category": demo_frame["article_type"],
                              "colour": demo_frame["base_colour"]})
    manifest = folder / "shop.parquet"
    pd.concat([catalogue, pd.DataFrame(rows)]).to_parquet(manifest)
    project = Project(folder / "project")
    project.ingest(manifest, progress=False)
    project.index("hsv-histogram", progress=False)
    return project, copies


def test_copies_with_combined_edits_are_grouped_with_their_originals(copy_shop) -> None:
    project, copies = copy_shop
    report = duplicates(project)  # the default method
    assert report.method == "copies"
    group_of = {item_id: n for n, g in enumerate(report.groups) for item_id in g.ids}
    found = [c for c, o in copies.items() if c in group_of and group_of.get(o) == group_of[c]]
    # 4-edit copies are found about 0.92 of the time on the whole catalogue (RESULTS.md)
    assert len(found) >= 7, sorted(set(copies) - set(found))
    # the old default misses most of them: that is why copies is the default now
    old = duplicates(project, method="phash+colour", save=False)
    old_group = {item_id: n for n, g in enumerate(old.groups) for item_id in g.ids}
    assert sum(old_group.get(c, -1) == old_group.get(o, -2) for c, o in copies.items()) < 6


def test_look_alike_products_are_not_copies(copy_shop, demo_frame: pd.DataFrame) -> None:
    project, copies = copy_shop
    report = duplicates(project, save=False)
    photo = dict(zip(demo_frame["id"].astype(str), demo_frame["image_jpeg"]))
    mixed = [g.ids for g in report.groups if len({photo[copies.get(i, i)] for i in g.ids}) > 1]
    # A planted copy is grouped with its original only. A few groups of this slice's own photos
    # do mix distinct photos: ties of one range (their stripes vanish at 30 x 40) and two very
    # dark Red Tape shoes from one studio shot -- the known limit of the thumbnail check.
    assert not [g for g in mixed if any(i in copies for i in g)], mixed
    assert len(mixed) <= 4 and sum(map(len, mixed)) <= 12, mixed
    assert report.n_duplicate_items <= 2 * len(copies) + 12
    closest = {}  # the closest match of a copy, when it has one, is its original
    for copy_id, original in copies.items():
        found = [i for i, _ in find_duplicate_of(project, _photo(project, copy_id)) if i != copy_id]
        assert not found or found[0] == original, (copy_id, found)
        closest[copy_id] = found[:1]
    assert sum(bool(f) for f in closest.values()) >= 7, closest
    # a product of the same type not in the shop, and a shop photo in another colour
    outsider = pd.read_parquet(Path(lookalike.__file__).parent / "data" / "demo.parquet")
    outsider = outsider[outsider["article_type"].isin(TYPES)
                        & ~outsider["id"].isin(demo_frame["id"])].head(10)
    finder = DuplicateFinder(project)
    for row in outsider.itertuples():
        assert finder.find(row.image_jpeg) == [], row.id
    swapped_checked = 0
    for item_id in demo_frame["id"].astype(str)[:30]:
        original = _photo(project, item_id)
        swapped = Image.merge("RGB", original.split()[::-1])  # red <-> blue: another colour
        pixels = np.asarray(original, dtype=np.float32)
        coloured = np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 8  # grey stays grey
        if coloured and hamming(phash_code(original), phash_code(swapped)) <= 8:
            assert item_id not in dict(finder.find(swapped)), item_id
            swapped_checked += 1
        assert item_id in dict(finder.find(original))  # and each photo finds itself
    assert swapped_checked >= 5


def test_ingest_skips_a_combined_edit_copy(copy_shop, demo_frame: pd.DataFrame,
                                           tmp_path: Path) -> None:
    from lookalike.cli import app

    project, _ = copy_shop
    source = str(demo_frame["id"].iat[5])
    copy = edit_copy(_photo(project, source), COMBINED)
    outsider = pd.read_parquet(Path(lookalike.__file__).parent / "data" / "demo.parquet")
    outsider = outsider[(outsider["article_type"] == demo_frame["article_type"].iat[5])
                        & ~outsider["id"].isin(demo_frame["id"])].iloc[0]
    manifest = tmp_path / "incoming.parquet"
    pd.DataFrame({"id": ["resold", "new-look-alike"],
                  "image": [_jpeg(copy, 95), outsider["image_jpeg"]],
                  "title": ["resold copy", "another product of the same type"]}
                 ).to_parquet(manifest)
    result = CliRunner().invoke(app, ["ingest", str(manifest), "--on-duplicate", "skip",
                                      "--project", str(project.path), "--json"])
    try:
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        assert body["added"] == 1 and body["rejected_by_reason"] == {"duplicate": 1}
        assert body["duplicates"][0]["duplicate_of"] == source
        assert "new-look-alike" in project.store and "resold" not in project.store
    finally:
        project.remove_items([i for i in ("resold", "new-look-alike") if i in project.store])
