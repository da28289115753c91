"""lookalike.catalogue.ingest: bad files, incremental re-runs, resume after an interruption."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from data_bad_files import demo_photos, encode, make_bad_folder, sample_photo
from lookalike.catalogue import CatalogueStore, IngestReport, ingest
from lookalike.catalogue.sources import SourceRecord
from lookalike.cli import app
from lookalike.errors import CatalogueError, LookalikeError
from lookalike.project import Project

# (``lookalike.catalogue.ingest`` the attribute is the function; this is the module.)
ingest_module = importlib.import_module("lookalike.catalogue.ingest")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    return make_bad_folder(tmp_path_factory.mktemp("bad") / "catalogue")


@pytest.fixture
def small_manifest(tmp_path) -> Path:
    """A CSV manifest of 30 real product photos written as files."""
    photos = demo_photos(30, offset=100)
    (tmp_path / "img").mkdir()
    rows = []
    for n, (item_id, data) in enumerate(photos):
        (tmp_path / "img" / f"{item_id}.jpg").write_bytes(data)
        rows.append({"id": item_id, "image": f"img/{item_id}.jpg", "title": f"Product {item_id}",
                     "category": "Shirts" if n % 3 else "Shoes", "price": 10 + n,
                     "brand": "Acme"})
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_bad_folder_nothing_crashes_and_every_file_is_accounted_for(bad_folder, tmp_path):
    store = CatalogueStore(tmp_path / "project")
    report = ingest(bad_folder.root, store, progress=False)

    assert {r.item_id: r.reason for r in report.rejected} == bad_folder.expected_rejects
    assert report.total == len(bad_folder.expected_rejects) + len(bad_folder.expected_good)
    assert report.added == len(bad_folder.expected_good) and report.updated == 0
    assert sorted(store.ids()) == sorted(bad_folder.expected_good)
    for item_id, size in bad_folder.expected_good.items():
        item = store.get(item_id)
        assert (item.width, item.height) == size, item_id
        assert store.open_image(item_id).size == size
        assert item.category == item_id.split("/")[0]
    # the rejects are in the store too, each with a one-line message naming the file
    stored = {r.item_id: r for r in store.rejects()}
    assert {k: r.reason for k, r in stored.items()} == bad_folder.expected_rejects
    assert all("\n" not in r.message and r.source in r.message for r in stored.values())
    assert stored["bags/bomb"].source == "bags/bomb.png"
    json.dumps(report.to_json())
    assert report.to_json()["rejected_by_reason"]["not-an-image"] == 3


def test_how_images_are_stored(bad_folder, tmp_path):
    store = CatalogueStore(tmp_path / "project")
    ingest(bad_folder.root, store, progress=False)
    plain = next(i for i in bad_folder.expected_good if i.split("/")[1].isdigit())
    original = (bad_folder.root / f"{plain}.jpg").read_bytes()
    item = store.get(plain)
    # a plain RGB JPEG is stored byte for byte
    assert item.content_hash == item.source_hash == hashlib.sha256(original).hexdigest()
    assert item.image_path.read_bytes() == original and item.image_path.suffix == ".jpg"
    # an EXIF-rotated JPEG is stored upright, without the tag, as JPEG
    rotated = store.get("shoes/rotated")
    assert rotated.content_hash != rotated.source_hash and rotated.image_path.suffix == ".jpg"
    stored = Image.open(rotated.image_path)
    assert stored.size == (300, 451) and stored.getexif().get(0x0112) in (None, 1)
    # a 16-bit PNG is stored as an 8-bit RGB PNG that looks like the photo
    sixteen = store.get("shirts/sixteen-bit")
    stored = Image.open(sixteen.image_path)
    assert (stored.format, stored.mode) == ("PNG", "RGB")
    grey = np.asarray(sample_photo().convert("L")).astype(int)
    assert np.abs(np.asarray(stored)[..., 0].astype(int) - grey).max() <= 1
    assert (store.get("shirts/cmyk").image_path.suffix, Image.open(
        store.get("shirts/cmyk").image_path).mode) == (".jpg", "RGB")


def test_reingest_is_incremental_and_decodes_nothing(small_manifest, tmp_path, monkeypatch):
    store = CatalogueStore(tmp_path / "project")
    first = ingest(small_manifest, store, progress=False)
    assert (first.added, first.unchanged, len(first.rejected)) == (30, 0, 0)
    before = {item.id: item for item in store.items()}

    def no_decode(*args, **kwargs):
        raise AssertionError("an unchanged item was decoded")

    monkeypatch.setattr(ingest_module, "decode", no_decode)
    again = ingest(small_manifest, store, progress=False)
    assert (again.added, again.updated, again.unchanged, again.total) == (0, 0, 30, 30)
    assert {item.id: item for item in store.items()} == before

    # change one item's fields only: updated, still without a decode
    frame = pd.read_csv(small_manifest, dtype={"id": str})
    frame.loc[4, "title"] = "Renamed"
    frame.loc[5, "brand"] = "Other"
    frame.to_csv(small_manifest, index=False)
    fields = ingest(small_manifest, store, progress=False)
    assert (fields.added, fields.updated, fields.unchanged) == (0, 2, 28)
    assert store.get(frame.loc[4, "id"]).title == "Renamed"
    assert store.get(frame.loc[5, "id"]).attributes["brand"] == "Other"


def test_changed_image_is_updated(small_manifest, tmp_path):
    store = CatalogueStore(tmp_path / "project")
    ingest(small_manifest, store, progress=False)
    frame = pd.read_csv(small_manifest, dtype={"id": str})
    target_id = frame.loc[7, "id"]
    old = store.get(target_id)
    order = store.ids()
    new_photo = demo_photos(1, offset=500)[0][1]
    (small_manifest.parent / frame.loc[7, "image"]).write_bytes(new_photo)
    report = ingest(small_manifest, store, progress=False)
    assert (report.added, report.updated, report.unchanged) == (0, 1, 29)
    new = store.get(target_id)
    assert new.content_hash == hashlib.sha256(new_photo).hexdigest() != old.content_hash
    assert store.ids() == order  # an update keeps the item's position


def test_resume_after_an_interrupted_ingest_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    source = "demo:test"  # ~200 real products, so ~4 batches of 50
    reference = CatalogueStore(tmp_path / "reference")
    ingest(source, reference, progress=False, batch_size=50)

    store = CatalogueStore(tmp_path / "interrupted")
    real_write = CatalogueStore.write_batch
    calls = {"n": 0}

    def failing_write(self, items, rejects):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C inside the fourth batch
        return real_write(self, items, rejects)

    monkeypatch.setattr(CatalogueStore, "write_batch", failing_write)
    with pytest.raises(KeyboardInterrupt):
        ingest(source, store, progress=False, batch_size=50)
    assert len(store) == 150  # the three finished batches, nothing of the fourth
    monkeypatch.setattr(CatalogueStore, "write_batch", real_write)

    resumed = ingest(source, store, progress=False, batch_size=50)
    assert resumed.unchanged == 150 and resumed.added == len(reference) - 150 > 0
    assert store.ids() == reference.ids()
    assert store.content_hashes() == reference.content_hashes()
    pd.testing.assert_frame_equal(store.frame().drop(columns="image_path"),
                                  reference.frame().drop(columns="image_path"))


def test_duplicate_records_are_rejected_or_refused_in_strict_mode(tmp_path):
    (jpeg_id, jpeg), = demo_photos(1)
    records = [SourceRecord(id="a", image=jpeg, row="r1"), SourceRecord(id="b", image=jpeg,
                                                                        row="r2"),
               SourceRecord(id="a", image=jpeg, row="r3")]
    store = CatalogueStore(tmp_path / "project")
    with pytest.raises(CatalogueError, match=r"'a' \(r1, r3\)"):
        ingest(records, store, progress=False, batch_size=1, strict=True)
    assert len(store) == 0 and not list((tmp_path / "project" / "images").rglob("*.jpg"))
    assert store.rejects() == []
    report = ingest(records, store, progress=False, batch_size=1)
    assert (report.total, report.added, store.ids()) == (3, 2, ["a", "b"])
    assert [(r.source, r.reason) for r in report.rejected] == [("r3", "duplicate-id")]


# ---- colliding file names and duplicate manifest rows ---------------------------------------
def _random_photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A real image file's pixels: smooth colour gradients plus seeded noise."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = ramp * rng.uniform(0.2, 1.0, (1, 1, 3)) + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture
def colliding_folder(tmp_path) -> Path:
    """``odd/photo`` as GIF, TIFF and WebP; ``cam/IMG_1`` as JPEG and PNG; one plain file."""
    root = tmp_path / "pictures"
    (root / "odd").mkdir(parents=True)
    (root / "cam").mkdir()
    for n, fmt in enumerate(("gif", "tiff", "webp")):
        _random_photo(n, (40 + n, 30)).save(root / "odd" / f"photo.{fmt}")
    _random_photo(5, (50, 60)).save(root / "cam" / "IMG_1.jpg", quality=90)
    _random_photo(6, (51, 60)).save(root / "cam" / "IMG_1.png")
    _random_photo(7, (52, 60)).save(root / "cam" / "IMG_2.jpg", quality=90)
    return root


def test_folder_with_colliding_names_ingests_everything(colliding_folder, tmp_path):
    store = CatalogueStore(tmp_path / "project")
    report = ingest(colliding_folder, store, progress=False)
    sizes = {"odd/photo.gif": (40, 30), "odd/photo.tiff": (41, 30), "odd/photo.webp": (42, 30),
             "cam/IMG_1.jpg": (50, 60), "cam/IMG_1.png": (51, 60), "cam/IMG_2": (52, 60)}
    assert (report.added, report.rejected, report.total) == (6, [], 6)
    assert sorted(store.ids()) == sorted(sizes)
    for item_id, size in sizes.items():
        assert store.open_image(item_id).size == size, item_id
        assert store.get(item_id).category == item_id.split("/")[0]
    assert report.name_collisions == {
        "odd/photo": ["odd/photo.gif", "odd/photo.tiff", "odd/photo.webp"],
        "cam/IMG_1": ["cam/IMG_1.jpg", "cam/IMG_1.png"]}
    again = ingest(colliding_folder, store, progress=False)  # stable: nothing new
    assert (again.added, again.updated, again.unchanged) == (0, 0, 6)
    assert sorted(store.ids()) == sorted(sizes)


def test_a_colliding_file_added_later_renames_nothing(tmp_path):
    root = tmp_path / "pictures" / "shoes"
    root.mkdir(parents=True)
    _random_photo(1, (40, 40)).save(root / "boot.jpg", quality=90)
    store = CatalogueStore(tmp_path / "project")
    ingest(root.parent, store, progress=False)
    first = store.get("shoes/boot")
    _random_photo(2, (44, 40)).save(root / "boot.png")  # a newcomer with the same stem
    report = ingest(root.parent, store, progress=False)
    assert (report.added, report.unchanged) == (1, 1)
    assert sorted(store.ids()) == ["shoes/boot", "shoes/boot.png"]
    assert store.get("shoes/boot").content_hash == first.content_hash  # still the JPEG
    assert store.open_image("shoes/boot.png").size == (44, 40)
    (root / "boot.jpg").unlink()  # the newcomer alone keeps the id it was given
    report = ingest(root.parent, store, progress=False)
    assert (report.added, report.unchanged) == (0, 1)
    assert sorted(store.ids()) == ["shoes/boot", "shoes/boot.png"]


def _duplicate_manifest(folder: Path, kind: str) -> Path:
    photos = demo_photos(4, offset=60)
    for item_id, data in photos:
        (folder / f"{item_id}.jpg").write_bytes(data)
    ids = ["a", "b", "a", "c", "b", "a"]
    rows = [{"id": i, "image": f"{photos[n % 4][0]}.jpg", "title": f"row {n + 1}"}
            for n, i in enumerate(ids)]
    path = folder / f"shop.{kind}"
    if kind == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind, first_row", [("csv", 2), ("jsonl", 1), ("parquet", 1)])
def test_manifest_duplicates_are_rejected_by_row(tmp_path, kind, first_row):
    manifest = _duplicate_manifest(tmp_path, kind)
    code, output = invoke("ingest", str(manifest), "--project", str(tmp_path / "p"))
    assert code == 0, output
    assert "3 added, 0 updated, 0 unchanged, 3 rejected" in " ".join(output.split())
    store = CatalogueStore(tmp_path / "p")
    assert store.ids() == ["a", "b", "c"]
    assert store.get("a").title == "row 1" and store.get("b").title == "row 2"  # first kept
    repeated = [f"shop.{kind}:{first_row + n}" for n in (2, 4, 5)]  # rows 3, 5 and 6
    code, output = invoke("rejects", "--project", str(tmp_path / "p"), "--json")
    rejects = json.loads(output)["rejects"]
    assert [(r["source"], r["reason"]) for r in rejects] == [(w, "duplicate-id")
                                                              for w in repeated]
    assert f"already used by shop.{kind}:{first_row}" in rejects[0]["message"]
    code, output = invoke("ingest", str(manifest), "--project", str(tmp_path / "p"))
    assert code == 0 and "3 unchanged, 3 rejected" in " ".join(output.split()), output
    assert len(store.rejects()) == 3


def test_strict_ingest_refuses_duplicates_and_ingests_nothing(tmp_path):
    manifest = _duplicate_manifest(tmp_path, "csv")
    code, output = invoke("ingest", str(manifest), "--strict", "--project", str(tmp_path / "p"))
    assert code == 1
    assert output.strip().count("\n") == 0 and "error:" in output, output
    assert "2 duplicate ids" in output and "'a' (shop.csv:2, shop.csv:4, shop.csv:7)" in output
    store = CatalogueStore(tmp_path / "p")
    assert len(store) == 0 and store.rejects() == []
    with pytest.raises(CatalogueError, match="2 duplicate ids"):
        Project(tmp_path / "p").ingest(manifest, progress=False, strict=True)
    assert len(store) == 0


def test_inline_parquet_and_missing_images(tmp_path):
    photos = demo_photos(3, offset=40)
    inline = pa.table({"id": ["a", "b", "c"], "image": [photos[0][1], photos[1][1], None],
                       "colour": ["Red", "Blue", "Red"]})
    pq.write_table(inline, tmp_path / "inline.parquet")
    store = CatalogueStore(tmp_path / "project")
    report = ingest(tmp_path / "inline.parquet", store, progress=False)
    assert store.ids() == ["a", "b"] and store.values("colour") == ["Blue", "Red"]
    assert {r.item_id: r.reason for r in report.rejected} == {"c": "missing"}
    paths = pa.table({"id": ["d"], "image": ["no/such/file.jpg"]})
    pq.write_table(paths, tmp_path / "paths.parquet")
    report = ingest(tmp_path / "paths.parquet", store, progress=False)
    assert [r.reason for r in report.rejected] == ["missing"]
    assert "no/such/file.jpg" in report.rejected[0].message
    assert sorted(r.item_id for r in store.rejects()) == ["c", "d"]


def test_a_bad_new_image_keeps_the_old_item(small_manifest, tmp_path):
    store = CatalogueStore(tmp_path / "project")
    ingest(small_manifest, store, progress=False)
    frame = pd.read_csv(small_manifest, dtype={"id": str})
    path = small_manifest.parent / frame.loc[2, "image"]
    path.write_bytes(path.read_bytes()[:300])
    report = ingest(small_manifest, store, progress=False)
    assert [(r.item_id, r.reason) for r in report.rejected] == [(frame.loc[2, "id"],
                                                                 "truncated")]
    assert frame.loc[2, "id"] in store and store.open_image(frame.loc[2, "id"]).size == (60, 80)


def test_report_and_options(tmp_path):
    store = CatalogueStore(tmp_path / "project")
    with pytest.raises(LookalikeError, match="on_duplicate_image='drop' is not supported"):
        ingest("demo", store, on_duplicate_image="drop")
    report = ingest("demo:test", store, progress=True)  # not a terminal: no bar, no crash
    assert isinstance(report, IngestReport) and report.total == len(store) == report.added
    assert report.summary().startswith(f"{report.total} items: {report.total} added")
    data = report.to_json()
    assert data["source"] == "demo" and data["rejected_count"] == 0


def test_png_photo_from_scikit_image(tmp_path):
    """A large lossless photo goes through intact (PNG stays PNG, pixels identical)."""
    photo = sample_photo()
    folder = tmp_path / "src" / "animals"
    folder.mkdir(parents=True)
    (folder / "cat.png").write_bytes(encode(photo, "PNG"))
    (folder / "cat-rgba.png").write_bytes(encode(photo.convert("RGBA"), "PNG"))
    store = CatalogueStore(tmp_path / "project")
    ingest(tmp_path / "src", store, progress=False)
    for item_id in ("animals/cat", "animals/cat-rgba"):
        assert np.array_equal(np.asarray(store.open_image(item_id)), np.asarray(photo))
    assert store.get("animals/cat").image_path.suffix == ".png"
    assert Image.open(io.BytesIO(store.get("animals/cat-rgba").image_path.read_bytes())
                      ).mode == "RGB"
