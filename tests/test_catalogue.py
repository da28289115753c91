"""lookalike.catalogue.sources and .store: manifests, named catalogues, the SQLite store."""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_bad_files import demo_photos
from lookalike.catalogue.folders import folder_ids
from lookalike.catalogue.sources import (FASHION_MNIST_CLASSES, FolderSource, ManifestSource,
                                         find_products_parquet, load_fashion_mnist,
                                         load_products_frame, open_source)
from lookalike.catalogue.store import CatalogueStore, Item, Reject
from lookalike.errors import CatalogueError, StoreError, UnknownItemError, UnknownNameError


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, bytes]]:
    return demo_photos(12)


@pytest.fixture
def image_folder(tmp_path, photos) -> Path:
    folder = tmp_path / "pictures"
    folder.mkdir()
    for item_id, data in photos:
        (folder / f"{item_id}.jpg").write_bytes(data)
    return folder


# ---- manifests ----------------------------------------------------------------------
def test_csv_manifest_with_relative_paths(tmp_path, image_folder, photos):
    lines = ["id,image,title,category,price,brand,colour"]
    for n, (item_id, _) in enumerate(photos[:4]):
        lines.append(f"00{n},pictures/{item_id}.jpg,Item {n},Shoes,{10 + n}.5,Acme,")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    records = list(open_source(tmp_path / "manifest.csv"))
    assert [r.id for r in records] == ["000", "001", "002", "003"]  # ids stay text
    first = records[0]
    assert first.image == tmp_path / "pictures" / f"{photos[0][0]}.jpg"
    assert first.read_image() == photos[0][1]
    assert (first.title, first.category, first.price, first.colour) == ("Item 0", "Shoes", 10.5,
                                                                        None)
    assert first.attributes == {"brand": "Acme"}
    assert first.row == "manifest.csv:2"


def test_jsonl_manifest_with_absolute_paths_and_nested_attributes(tmp_path, image_folder, photos):
    rows = [{"id": item_id, "image": str(image_folder / f"{item_id}.jpg"), "split": "test",
             "sizes": ["S", "M"], "gender": "Women"} for item_id, _ in photos[:3]]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    records = list(open_source(str(tmp_path / "items.jsonl")))
    assert len(records) == 3
    assert records[2].image == image_folder / f"{photos[2][0]}.jpg"
    assert records[2].read_image() == photos[2][1]
    assert records[1].attributes == {"sizes": ["S", "M"]}
    assert (records[1].split, records[1].gender, records[1].row) == ("test", "Women",
                                                                     "items.jsonl:2")


def test_jsonl_bad_line_names_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "image": "a.jpg"}\n{"id": "b", image}\n')
    with pytest.raises(CatalogueError, match=r"bad.jsonl:2: not valid JSON"):
        open_source(tmp_path / "bad.jsonl")


def test_parquet_manifest_with_inline_bytes_and_paths(tmp_path, image_folder, photos):
    table = pa.table({"id": [1, 2, 3],
                      "image": [photos[0][1], photos[1][1], None],
                      "category": ["Bags", "Bags", "Bags"], "stock": [3, 0, 7]})
    pq.write_table(table, tmp_path / "inline.parquet")
    records = list(open_source(tmp_path / "inline.parquet"))
    assert [r.id for r in records] == ["1", "2", "3"]
    assert records[0].image == photos[0][1] and records[1].image == photos[1][1]
    assert records[2].image is None  # ingest rejects it as "missing"
    assert records[0].attributes == {"stock": 3}
    paths = pa.table({"id": ["x"], "image": [f"pictures/{photos[5][0]}.jpg"]})
    pq.write_table(paths, tmp_path / "paths.parquet")
    assert next(iter(open_source(tmp_path / "paths.parquet"))).read_image() == photos[5][1]


def test_products_columns_are_mapped(products_parquet):
    demo = open_source("demo")
    assert isinstance(demo, ManifestSource)
    # the demo slice has exactly the products catalogue's columns
    assert pq.read_schema(demo.path).names == pq.read_schema(products_parquet).names
    record = next(iter(demo))
    raw = pd.read_parquet(demo.path).iloc[0]
    assert record.id == str(raw["id"]) and record.image == raw["image_jpeg"]
    assert record.category == raw["article_type"] and record.colour == raw["base_colour"]
    assert record.split == raw["split"] and record.title == raw["title"]
    assert set(record.attributes) <= {"master_category", "sub_category", "article_type", "usage"}
    assert record.attributes["article_type"] == raw["article_type"]
    assert record.row == "demo.parquet:1"


def test_missing_columns_are_named(tmp_path):
    (tmp_path / "m.csv").write_text("sku,picture,title\n1,a.jpg,A\n")
    with pytest.raises(CatalogueError) as caught:
        open_source(tmp_path / "m.csv")
    message = str(caught.value)
    assert "m.csv" in message and "'id'" in message and "'image'" in message
    assert "sku, picture, title" in message and "\n" not in message


def test_duplicate_ids_keep_the_first_row_and_name_the_others(tmp_path):
    (tmp_path / "m.csv").write_text("id,image\na,1.jpg\nb,2.jpg\na,3.jpg\nc,4.jpg\nb,5.jpg\n")
    source = open_source(tmp_path / "m.csv")
    assert [(r.id, r.row) for r in source] == [("a", "m.csv:2"), ("b", "m.csv:3"),
                                               ("c", "m.csv:5")]
    assert [(d.record.id, d.where, d.kept_row) for d in source.duplicates] == [
        ("a", "m.csv:4", "m.csv:2"), ("b", "m.csv:6", "m.csv:3")]
    message = str(source.duplicate_error())  # what strict mode raises
    assert "2 duplicate ids" in message and "\n" not in message
    assert "'a' (m.csv:2, m.csv:4)" in message and "'b' (m.csv:3, m.csv:6)" in message
    (tmp_path / "ok.csv").write_text("id,image\na,1.jpg\n")
    assert open_source(tmp_path / "ok.csv").duplicate_error() is None


def test_colliding_file_names_keep_their_extension(tmp_path, photos):
    (tmp_path / "shoes").mkdir()
    (tmp_path / "shoes" / "boot.jpg").write_bytes(photos[0][1])
    (tmp_path / "shoes" / "boot.png").write_bytes(photos[1][1])
    (tmp_path / "shoes" / "sandal.jpg").write_bytes(photos[2][1])
    (tmp_path / "shoes" / "sandal.jpg.png").write_bytes(photos[3][1])  # stem = another's path
    source = open_source(tmp_path)
    assert {r.row: r.id for r in source} == {
        "shoes/boot.jpg": "shoes/boot.jpg", "shoes/boot.png": "shoes/boot.png",
        "shoes/sandal.jpg": "shoes/sandal", "shoes/sandal.jpg.png": "shoes/sandal.jpg.png"}
    assert source.collisions == {"shoes/boot": ["shoes/boot.jpg", "shoes/boot.png"],
                                 "shoes/sandal.jpg": ["shoes/sandal.jpg.png"]}
    assert not source.duplicates and source.duplicate_error() is None


def test_folder_ids_never_rename_stored_items():
    hashes = {"a/photo.jpg": "h-jpg", "a/photo.png": "h-png", "a/photo.gif": "h-gif"}
    files = sorted(hashes)
    # photo.jpg was ingested alone as "a/photo"; a png and a gif appear beside it
    ids, collisions = folder_ids(files, lambda ids: {"a/photo": "h-jpg"} if "a/photo" in ids
                                 else {}, hashes.__getitem__)
    assert ids == {"a/photo.gif": "a/photo.gif", "a/photo.jpg": "a/photo",
                   "a/photo.png": "a/photo.png"}
    assert collisions == {"a/photo": ["a/photo", "a/photo.gif", "a/photo.png"]}
    # the stored file changed at the same time: nobody takes the stored id, all keep extensions
    ids, _ = folder_ids(files, lambda ids: {"a/photo": "h-old"}, hashes.__getitem__)
    assert set(ids.values()) == set(files)
    # a file that got its extension id keeps it when its twin is gone
    ids, collisions = folder_ids(["a/photo.gif"], lambda ids: {"a/photo.gif": "h-gif"})
    assert ids == {"a/photo.gif": "a/photo.gif"} and collisions == {}
    # new to the catalogue: plain ids where the stem is free
    assert folder_ids(["a/photo.gif", "b/x.txt"])[0] == {"a/photo.gif": "a/photo",
                                                          "b/x.txt": "b/x.txt"}


def test_empty_ids_and_bad_prices_are_errors(tmp_path):
    (tmp_path / "m.csv").write_text("id,image,price\na,1.jpg,3\n,2.jpg,4\n")
    with pytest.raises(CatalogueError, match="empty id on row 3"):
        open_source(tmp_path / "m.csv")
    (tmp_path / "p.csv").write_text("id,image,price\na,1.jpg,cheap\n")
    with pytest.raises(CatalogueError, match=r"p.csv:2: price 'cheap' is not a number"):
        open_source(tmp_path / "p.csv")


def test_unknown_sources(tmp_path):
    with pytest.raises(CatalogueError, match="no such folder or manifest"):
        open_source(tmp_path / "nothing-here")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CatalogueError, match="not a catalogue source"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(CatalogueError, match="unknown split"):
        open_source("demo:validation")


# ---- folders ----------------------------------------------------------------------
def test_folder_source(tmp_path, photos):
    for n, (item_id, data) in enumerate(photos[:4]):
        target = tmp_path / ("shoes" if n % 2 else "bags") / ("sale" if n == 3 else "")
        target.mkdir(parents=True, exist_ok=True)
        (target / f"{item_id}.JPG").write_bytes(data)
    (tmp_path / "loose.png").write_bytes(photos[5][1])
    (tmp_path / "bags" / "list.csv").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.jpg").write_bytes(photos[6][1])
    (tmp_path / "bags" / ".thumb.jpg").write_bytes(photos[6][1])
    CatalogueStore(tmp_path / "lookalike-data").put_image(photos[7][1], "jpg")  # a project
    source = FolderSource(tmp_path)
    by_id = {r.id: r for r in source}
    assert len(source) == 6
    assert by_id[f"shoes/sale/{photos[3][0]}"].category == "shoes"  # first sub-folder
    assert by_id[f"bags/{photos[0][0]}"].category == "bags"
    assert by_id["loose"].category is None
    assert by_id["bags/list.csv"].row == "bags/list.csv"  # offered to ingest, to be rejected
    assert by_id[f"bags/{photos[0][0]}"].read_image() == photos[0][1]


# ---- named catalogues ----------------------------------------------------------------------
def test_demo_catalogue_is_bundled():
    demo = open_source("demo")
    records = list(demo)
    assert 1900 <= len(demo) == len(records) <= 2100
    categories = {r.category for r in records}
    assert len(categories) >= 50
    test = list(open_source("demo:test"))
    assert 150 <= len(test) <= 300 and {r.split for r in test} == {"test"}


def test_products_catalogue(products_parquet, monkeypatch):
    frame = load_products_frame(split="test")
    assert len(frame) == 4469 and set(frame["split"]) == {"test"}
    assert frame["id"].map(type).eq(str).all()
    assert isinstance(frame["image_jpeg"].iloc[0], bytes)
    monkeypatch.setenv("LOOKALIKE_PRODUCTS_PARQUET", str(products_parquet))
    assert find_products_parquet() == products_parquet
    assert len(open_source("products:test")) == 4469


def test_products_catalogue_missing_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_PRODUCTS_PARQUET", str(tmp_path / "nope.parquet"))
    with pytest.raises(CatalogueError, match="LOOKALIKE_PRODUCTS_PARQUET=.*no such file"):
        open_source("products")
    monkeypatch.delenv("LOOKALIKE_PRODUCTS_PARQUET")
    # only the temporary folder is searched, whatever lies above it
    monkeypatch.setenv("LOOKALIKE_PRODUCTS_SEARCH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert find_products_parquet() is None
    with pytest.raises(CatalogueError, match="set LOOKALIKE_PRODUCTS_PARQUET"):
        load_products_frame()
    assert find_products_parquet(roots=[tmp_path / "a", tmp_path / "b"]) is None


def test_products_catalogue_is_found_in_the_search_roots(tmp_path, monkeypatch):
    monkeypatch.delenv("LOOKALIKE_PRODUCTS_PARQUET", raising=False)
    target = tmp_path / "b" / "shared" / "data" / "fashion-products-small.parquet"
    target.parent.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1], "image_jpeg": [b"x"]}), target)
    assert find_products_parquet(roots=[tmp_path / "a", tmp_path / "b"]) == target
    monkeypatch.setenv("LOOKALIKE_PRODUCTS_SEARCH", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert find_products_parquet() == target
    monkeypatch.delenv("LOOKALIKE_PRODUCTS_SEARCH")
    monkeypatch.chdir(target.parent)  # default: the working folder and its parents
    assert find_products_parquet() == target


def test_fashion_mnist_arrays(fashion_mnist_dir):
    images, labels, classes = load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and np.bincount(labels).tolist() == [1000] * 10
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot"
    # the pixels are the official ones: MD5 of the decompressed IDX file per the data README
    with gzip.open(fashion_mnist_dir / "t10k-images-idx3-ubyte.gz") as handle:
        raw = handle.read()
    assert hashlib.md5(raw).hexdigest() == "8181f5470baa50b63fa0f6fddb340f0a"
    assert raw[16:16 + 784] == images[0].tobytes()


def test_fashion_mnist_source(fashion_mnist_dir):
    source = open_source("fashion-mnist:test")
    assert len(source) == 10_000
    iterator = iter(source)
    first = next(iterator)
    images, labels, _ = load_fashion_mnist("test")
    assert first.id == "fmnist-test-00001" and first.split == "test"
    assert first.category == FASHION_MNIST_CLASSES[labels[0]]
    from lookalike.catalogue.images import decode_image

    decoded = np.asarray(decode_image(first.image))
    assert decoded.shape == (28, 28, 3) and np.array_equal(decoded[..., 0], images[0])
    assert len(open_source("fashion-mnist")) == 70_000


def test_fashion_mnist_missing_says_apt_get(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(CatalogueError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train")
    with pytest.raises(CatalogueError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist("valid")


# ---- the store ----------------------------------------------------------------------
def make_item(store: CatalogueStore, item_id: str, data: bytes, **fields) -> Item:
    content_hash, path = store.put_image(data, "jpg")
    return Item(id=item_id, content_hash=content_hash, image_path=path, width=60, height=80,
                **fields)


def test_store_round_trip(tmp_path, photos):
    store = CatalogueStore(tmp_path / "project")
    items = [make_item(store, f"p{n}", data, title=f"Product {n}", category="Shirts",
                       gender="Men", colour="Blue" if n % 2 else "Red", price=9.5 + n,
                       split="train" if n < 3 else "test", attributes={"usage": "Casual",
                                                                        "rank": n})
             for n, (_, data) in enumerate(photos[:5])]
    store.upsert(items)
    store.close()

    store = CatalogueStore(tmp_path / "project", create=False)
    assert len(store) == 5 and "p3" in store and "nope" not in store
    assert store.ids() == ["p0", "p1", "p2", "p3", "p4"]
    assert store.ids(split="test") == ["p3", "p4"]
    got = store.get("p2")
    assert got == items[2]  # every field survives, image_path absolute
    assert got.image_path.is_absolute() and got.image_path.read_bytes() == photos[2][1]
    assert got.image_path == tmp_path / "project" / "images" / got.content_hash[:2] / \
        f"{got.content_hash}.jpg"
    assert [i.id for i in store.items(["p4", "p0"])] == ["p4", "p0"]
    assert store.content_hashes(["p1"]) == {"p1": hashlib.sha256(photos[1][1]).hexdigest()}
    assert np.asarray(store.open_image("p0")).shape == (80, 60, 3)
    assert store.values("colour") == ["Blue", "Red"] and store.values("rank") == list("01234")
    assert got.filter_attributes() == {"category": "Shirts", "gender": "Men", "colour": "Blue"
                                       if 2 % 2 else "Red", "price": 11.5, "split": "train",
                                       "usage": "Casual", "rank": 2}
    as_json = got.to_json()
    assert as_json["image"] == f"images/{got.content_hash[:2]}/{got.content_hash}.jpg"
    json.dumps(as_json)
    frame = store.frame()
    assert list(frame.index) == store.ids() and frame.loc["p3", "price"] == 12.5
    assert frame.loc["p4", "rank"] == 4 and frame.loc["p4", "usage"] == "Casual"
    with pytest.raises(UnknownItemError, match="unknown item 'nope'"):
        store.get("nope")
    with pytest.raises(UnknownItemError):
        list(store.items(["p1", "nope"]))


def test_update_keeps_position_and_remove(tmp_path, photos):
    store = CatalogueStore(tmp_path)
    store.upsert([make_item(store, f"p{n}", data) for n, (_, data) in enumerate(photos[:4])])
    store.upsert([make_item(store, "p1", photos[8][1], title="New photo")])
    assert store.ids() == ["p0", "p1", "p2", "p3"]
    assert store.get("p1").title == "New photo"
    assert store.get("p1").content_hash == hashlib.sha256(photos[8][1]).hexdigest()
    assert store.remove(["p0", "p2", "missing"]) == 2
    assert store.ids() == ["p1", "p3"] and len(store) == 2


def test_put_image_is_content_addressed_and_idempotent(tmp_path, photos):
    store = CatalogueStore(tmp_path)
    first = store.put_image(photos[0][1], ".JPG")
    again = store.put_image(photos[0][1], "jpg", durable=False)
    assert first == again and first[1].read_bytes() == photos[0][1]
    assert first[1].parent.name == first[0][:2]
    files = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    assert files == [first[1]]  # no temporary files left behind


def test_rejects_are_kept_per_item(tmp_path, photos):
    store = CatalogueStore(tmp_path)
    store.add_rejects([Reject("a.jpg", "empty", "a.jpg: the file is empty", item_id="a"),
                       Reject("b.jpg", "truncated", "b.jpg: truncated", item_id="b")])
    store.add_rejects([Reject("a.jpg", "not-an-image", "a.jpg: not an image", item_id="a")])
    assert sorted((r.item_id, r.reason) for r in store.rejects()) == [("a", "not-an-image"),
                                                                      ("b", "truncated")]
    store.upsert([make_item(store, "b", photos[0][1])])  # fixed now: its reject goes
    assert [r.item_id for r in store.rejects()] == ["a"]


def test_store_refuses_newer_format_and_garbage(tmp_path):
    CatalogueStore(tmp_path / "p").close()
    with sqlite3.connect(tmp_path / "p" / "catalogue.sqlite") as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    with pytest.raises(StoreError, match="format version 99 is newer"):
        CatalogueStore(tmp_path / "p")
    with pytest.raises(StoreError, match="no catalogue here"):
        CatalogueStore(tmp_path / "empty", create=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "catalogue.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a lookalike catalogue"):
        CatalogueStore(tmp_path / "junk")


def test_store_is_in_wal_mode(tmp_path):
    CatalogueStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "catalogue.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


_WRITER = """
import sys, time
from lookalike.catalogue.store import CatalogueStore, Item
store = CatalogueStore(sys.argv[1])
data = open(sys.argv[2], "rb").read()
content_hash, path = store.put_image(data, "jpg")
for batch in range(20):
    store.upsert([Item(id=f"w{batch}-{n}", content_hash=content_hash, image_path=path,
                       width=60, height=80) for n in range(50)])
    time.sleep(0.03)  # give the readers time to look between batches
print("done")
"""

_READER = """
import json, sys, time
from lookalike.catalogue.store import CatalogueStore
store = None
while store is None:  # the writer creates the catalogue
    try:
        store = CatalogueStore(sys.argv[1], create=False)
    except Exception:
        time.sleep(0.01)
seen = []
deadline = time.time() + 30
while time.time() < deadline:
    n = len(store)
    ids = store.ids()
    assert len(ids) >= n and len(ids) % 50 == 0, len(ids)  # never half a batch
    seen.append(len(ids))
    if len(ids) == 1000:
        break
print(json.dumps(seen))
"""


def test_several_reader_processes_while_one_writes(tmp_path, photos):
    image = tmp_path / "photo.jpg"
    image.write_bytes(photos[0][1])
    project = tmp_path / "project"
    readers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_READER), str(project)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    writer = subprocess.run([sys.executable, "-c", _WRITER, str(project), str(image)],
                            capture_output=True, text=True, timeout=120)
    assert writer.returncode == 0, writer.stderr
    for reader in readers:
        out, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
        seen = json.loads(out)
        assert seen[-1] == 1000 and seen == sorted(seen)
        assert len(set(seen)) >= 3  # the readers really read while the writer wrote
    assert len(CatalogueStore(project, create=False)) == 1000


def test_named_catalogue_unknown():
    from lookalike.catalogue.sources import open_named

    with pytest.raises(UnknownNameError, match="unknown catalogue 'catalog'"):
        open_named("catalog")
