"""The ``milvus`` index against a real Milvus 2.3 standalone server (PyPI ``milvus``).

One server per session (free port, data in tmp, stopped at the end). Vectors are the 2,016 real
demo products embedded with the cheap ``hsv-histogram`` embedder; the FAISS ``exact`` index is
the reference. Near-ties are compared by score, never by position.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike import Project
from lookalike.cli import app as cli_app
from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.index.base import Filters, Hits, create_index, load_index
from lookalike.index.milvus_server import LocalMilvus, free_port
from lookalike.models.base import create as create_embedder
from serve_process import wait_ready

DEMO = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "data" / "demo.parquet"
TOL = 1e-4


@pytest.fixture(scope="session")
def demo() -> pd.DataFrame:
    return pd.read_parquet(DEMO).sort_values("id").reset_index(drop=True)


def _attributes(row: pd.Series) -> dict:
    values = {"category": row["article_type"], "gender": row["gender"] or None,
              "colour": row["base_colour"] or None, "title": row["title"],
              "price": float(row["id"] % 97 + 3), "split": row["split"]}
    return {k: v for k, v in values.items() if v is not None}


@pytest.fixture(scope="session")
def products(demo: pd.DataFrame) -> tuple[list[str], np.ndarray, list[dict]]:
    """(ids, unit vectors, attributes) of the 2,016 real demo products."""
    embedder = create_embedder("hsv-histogram")
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in demo["image_jpeg"]]
    vectors = embedder.embed(images)
    return ([str(i) for i in demo["id"]], vectors,
            [_attributes(row) for _, row in demo.iterrows()])


def _pair(milvus: LocalMilvus, collection: str, ids, vectors, attributes, dim=None):
    dim = dim or vectors.shape[1]
    exact = create_index("exact", dim, "e")
    remote = create_index("milvus", dim, "e", uri=milvus.uri, collection=collection)
    exact.add(ids, vectors, attributes)
    remote.add(ids, vectors, attributes)
    return exact, remote


def _recall(got: list[Hits], want: list[Hits]) -> float:
    """Share of the reference's top-k matched, counting any hit scoring at least the reference's
    k-th score (minus a tolerance) as right, so ties in either order count."""
    right = total = 0
    for g, w in zip(got, want):
        total += len(w)
        if not len(w):
            continue
        floor = w.scores[-1] - TOL
        right += min(len(w), sum(1 for s in g.scores if s >= floor))
    return right / max(total, 1)


def _assert_same(remote, exact, queries, k=10, filters=None, exclude=None, min_recall=0.99):
    got = remote.search(queries, k=k, filters=filters, exclude=exclude)
    want = exact.search(queries, k=k, filters=filters, exclude=exclude)
    assert [len(g) for g in got] == [len(w) for w in want]
    assert _recall(got, want) >= min_recall
    for g, w in zip(got, want):  # the scores are the same cosines
        if len(w):
            assert abs(g.scores[0] - w.scores[0]) < TOL
    return got


def test_add_search_filter_remove_upsert_match_the_exact_index(milvus, products) -> None:
    ids, vectors, attributes = products
    exact, remote = _pair(milvus, "products", ids, vectors, attributes)
    assert len(remote) == len(ids) and sorted(remote.ids()) == sorted(ids)
    queries = vectors[::40]
    _assert_same(remote, exact, queries)
    shoes = Filters.of(category=["Casual Shoes", "Sports Shoes"], price_max=50.0)
    got = _assert_same(remote, exact, queries, filters=shoes)
    by_id = dict(zip(ids, attributes))
    assert all(shoes.matches(by_id[i]) for hits in got for i in hits.ids)
    _assert_same(remote, exact, queries, filters=Filters.of(gender="Women", colour="Black"))

    gone = ids[::7]
    assert remote.remove(gone + ["not-there"]) == exact.remove(gone) == len(gone)
    assert len(remote) == len(exact)
    got = _assert_same(remote, exact, queries)
    assert not set(gone) & {i for hits in got for i in hits.ids}

    moved = ids[1:60:3]  # upsert: new vectors and a new category for existing ids
    new_vectors = vectors[::-1][: len(moved)]
    new_attributes = [{**by_id[i], "category": "Moved"} for i in moved]
    exact.add(moved, new_vectors, new_attributes)
    remote.add(moved, new_vectors, new_attributes)
    assert len(remote) == len(exact)
    _assert_same(remote, exact, new_vectors)
    moved_hits = remote.search(new_vectors, k=50, filters=Filters.of(category="Moved"))
    assert {i for hits in moved_hits for i in hits.ids} == set(moved)
    assert remote.attributes(moved[0])["category"] == "Moved"
    np.testing.assert_allclose(remote.get_vectors(moved[:2]), exact.get_vectors(moved[:2]),
                               atol=1e-5)


def test_excludes_short_and_long(milvus, products) -> None:
    ids, vectors, attributes = products
    exact, remote = _pair(milvus, "excludes", ids[:600], vectors[:600], attributes[:600])
    queries = vectors[:600:60]
    short = [[ids[n * 60]] for n in range(len(queries))]  # the item itself
    got = _assert_same(remote, exact, queries, exclude=short)
    assert all(s[0] not in hits.ids for s, hits in zip(short, got))
    near = [exact.search(q[None], k=80)[0].ids for q in queries]  # > 64: own expression
    got = _assert_same(remote, exact, queries, exclude=near)
    assert all(not set(n) & set(hits.ids) for n, hits in zip(near, got))


WEIRD = ['x" or id != "', 'back\\slash', "quote'single", "née ✓ 😀", "new\nline", "",
         "plain"]


def test_filter_values_are_escaped(milvus) -> None:
    """A value that looks like expression syntax is one string to compare with."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(WEIRD) + 3, 8)).astype(np.float32)
    ids = [f"w{n}" for n in range(len(vectors))]
    attributes = ([{"category": w, "odd key \"]": w} for w in WEIRD]
                  + [{"category": "other"}, {}, {"category": "plain"}])
    remote = create_index("milvus", 8, "e", uri=milvus.uri, collection="escaping")
    remote.add(ids, vectors, list(attributes))
    injection = Filters.of(category='x" or id != "')
    assert remote.search(vectors, k=20, filters=Filters.of(category='y" or id != "')) == \
        [Hits([], [])] * len(vectors)
    assert [set(h.ids) for h in remote.search(vectors[:1], k=20, filters=injection)] == [{"w0"}]
    for n, value in enumerate(WEIRD):
        for filters in (Filters.of(category=value), Filters(equals={"odd key \"]": (value,)})):
            found = set(remote.search(vectors[:1], k=20, filters=filters)[0].ids)
            expected = {f"w{n}"} | ({"w9"} if value == "plain" and "category" in
                                     filters.equals else set())
            assert found == expected, (value, filters)


def test_filters_follow_filters_matches(milvus) -> None:
    """Every filter returns exactly the items ``Filters.matches`` keeps: missing attributes never
    match, ranges are inclusive, numbers in strings and other columns behave the same."""
    rng = np.random.default_rng(1)
    attributes = [{}, {"category": "A", "price": 10.0}, {"category": "A", "price": 20},
                  {"category": "B", "price": "15"}, {"category": "B"}, {"price": 5.0},
                  {"category": "A", "price": "cheap"}, {"size": 42, "category": "C"},
                  {"size": "42", "flag": True}, {"size": 40.5, "gender": "Men"},
                  {"gender": "Women", "colour": "Red", "price": 20.0}]
    vectors = rng.standard_normal((len(attributes), 16)).astype(np.float32)
    ids = [f"f{n}" for n in range(len(attributes))]
    remote = create_index("milvus", 16, "e", uri=milvus.uri, collection="semantics")
    remote.add(ids, vectors, attributes)
    cases = [Filters.of(category="A"), Filters.of(category=["A", "B"], price_min=10, price_max=15),
             Filters.of(price_min=10), Filters.of(price_max=15), Filters.of(price_min=20,
                                                                            price_max=20),
             Filters(ranges={"price": (None, None)}), Filters(equals={"size": ("42",)}),
             Filters(ranges={"size": (41.0, None)}), Filters(equals={"flag": ("True",)}),
             Filters(equals={"price": ("15",)}), Filters(equals={"missing": ("x",)}),
             Filters(ranges={"category": (0.0, 1.0)}),
             Filters.of(gender="Women", colour="Red", price_max=20.0), Filters()]
    for filters in cases:
        found = set(remote.search(vectors[:1], k=len(ids), filters=filters)[0].ids)
        assert found == {i for i, a in zip(ids, attributes) if filters.matches(a)}, filters


def test_clear_errors(milvus, tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((30, 8)).astype(np.float32)
    ids = [f"e{n}" for n in range(30)]

    with pytest.raises(LookalikeError, match="unreachable"):
        create_index("milvus", 8, "e", uri=f"http://127.0.0.1:{free_port()}", timeout=3)

    def saved(embedder: str, dim: int, name: str) -> Path:
        index = create_index("milvus", dim, embedder, uri=milvus.uri, collection="errors")
        index.add(ids, rng.standard_normal((30, dim)).astype(np.float32))
        return index.save(tmp_path / name)

    first = saved("e", 8, "first")
    saved("other-embedder", 8, "second")  # the same collection, rebuilt for another embedder
    with pytest.raises(ModelMismatchError, match="embedder 'other-embedder', not 'e'"):
        load_index(first)
    third = saved("e", 16, "third")
    with pytest.raises(ModelMismatchError, match="dimension 16, the index 8"):
        load_index(tmp_path / "first")
    saved("e", 16, "fourth")
    with pytest.raises(ModelMismatchError, match="dropped and created again"):
        load_index(third)

    from pymilvus import MilvusClient

    raw = MilvusClient(uri=milvus.uri)
    raw.delete("errors", ids=["e0"])
    with pytest.raises(ModelMismatchError, match="holds 29 items, the saved index 30"):
        load_index(tmp_path / "fourth")
    raw.drop_collection("errors")
    with pytest.raises(ModelMismatchError, match="does not exist"):
        load_index(tmp_path / "fourth")
    raw.close()
    with pytest.raises(LookalikeError, match="dimension 4 given to an index of dimension 8"):
        create_index("milvus", 8, "e", uri=milvus.uri, collection="errors2").add(
            ids[:1], vectors[:1, :4])
    with pytest.raises(LookalikeError, match="collection name"):
        create_index("milvus", 8, "e", uri=milvus.uri, collection="bad name")
    with pytest.raises(LookalikeError, match="consistency must be one of"):
        create_index("milvus", 8, "e", uri=milvus.uri, consistency="Sometimes")
    monkeypatch.delenv("LOOKALIKE_MILVUS_URI", raising=False)
    with pytest.raises(LookalikeError, match="no server URI"):
        create_index("milvus", 8, "e")
    monkeypatch.setenv("LOOKALIKE_MILVUS_URI", milvus.uri)  # the default URI
    assert create_index("milvus", 8, "e", collection="from_env").uri == milvus.uri



def test_a_handle_reads_its_own_writes_at_once(milvus) -> None:
    """Session consistency (the default): the next search by the handle that wrote sees the
    write, every time, without Strong's wait on reads."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((200, 32)).astype(np.float32)
    remote = create_index("milvus", 32, "e", uri=milvus.uri, collection="session")
    assert remote.params["consistency"] == "Session"
    remote.add([f"b{n}" for n in range(200)], base)
    for n in range(8):
        fresh = rng.standard_normal((1, 32)).astype(np.float32)
        remote.add([f"new{n}"], fresh)
        assert remote.search(fresh, k=1)[0].ids == [f"new{n}"]
        assert f"new{n}" in remote
        assert remote.remove([f"new{n}"]) == 1
        assert f"new{n}" not in remote.search(fresh, k=5)[0].ids
    moved = rng.standard_normal((1, 32)).astype(np.float32)  # an upsert moves an old item
    remote.add(["b0"], moved)
    assert remote.search(moved, k=1)[0].ids == ["b0"]
    remote.close()


# ---- hash codes in Milvus ----------------------------------------------------------------------

def test_binary_codes_match_the_faiss_binary_index(milvus, products, tmp_path) -> None:
    """``milvus-binary``: Hamming candidates inside Milvus (filters too), the float re-rank here;
    the same coder gives the same answers as the in-process ``binary`` kind."""
    from lookalike.models.hashing import HyperplaneCoder

    ids, vectors, attributes = products
    coder = HyperplaneCoder.random(vectors.shape[1], 64, seed=3)
    local = create_index("binary", vectors.shape[1], "e", coder=coder, candidates=200)
    remote = create_index("milvus-binary", vectors.shape[1], "e", coder=coder, candidates=200,
                          uri=milvus.uri, collection="codes")
    local.add(ids, vectors, attributes)
    remote.add(ids, vectors, attributes)
    queries = vectors[::50]
    _assert_same(remote, local, queries, min_recall=0.97)
    shoes = Filters.of(category=["Casual Shoes", "Sports Shoes"], price_max=50.0)
    got = _assert_same(remote, local, queries, filters=shoes, min_recall=0.97)
    by_id = dict(zip(ids, attributes))
    assert all(shoes.matches(by_id[i]) for hits in got for i in hits.ids)
    _assert_same(remote, local, queries, exclude=[[ids[n * 50]] for n in range(len(queries))],
                 min_recall=0.97)
    exact = create_index("exact", vectors.shape[1], "e")
    exact.add(ids, vectors, attributes)
    assert _recall(remote.search(queries, k=10), exact.search(queries, k=10)) >= 0.5
    np.testing.assert_allclose(remote.get_vectors(ids[:3]), exact.get_vectors(ids[:3]), atol=1e-5)

    folder = remote.save(tmp_path / "codes")
    assert sorted(p.name for p in folder.iterdir()) == ["coder.safetensors", "index.json"]
    remote.close()
    loaded = load_index(folder, expected_embedder_id="e")
    np.testing.assert_array_equal(loaded.coder.planes, coder.planes)
    _assert_same(loaded, local, queries, min_recall=0.97)
    hamming = create_index("milvus-binary", vectors.shape[1], "e", coder=coder, rerank=False,
                           store_vectors=False, index_type="BIN_IVF_FLAT", nlist=16, nprobe=16, uri=milvus.uri,
                           collection="codes_ivf")
    hamming.add(ids[:500], vectors[:500])
    hits = hamming.search(vectors[:5], k=3)
    assert [h.ids[0] for h in hits] == ids[:5]  # distance 0 to its own code
    assert all(h.scores[0] == 1.0 and h.scores == sorted(h.scores, reverse=True) for h in hits)
    with pytest.raises(LookalikeError, match="keeps no vectors"):
        hamming.get_vectors(ids[:1])
    with pytest.raises(LookalikeError, match="index_type must be one of"):
        create_index("milvus-binary", 8, "e", uri=milvus.uri, index_type="HNSW")


def test_milvus_lite_file_target(products, tmp_path) -> None:
    """milvus-lite (an embedded Milvus in a local file, no server) behind the same interface."""
    ids, vectors, attributes = products
    exact = create_index("exact", vectors.shape[1], "e")
    lite = create_index("milvus", vectors.shape[1], "e", uri=str(tmp_path / "lite.db"),
                        collection="lite")
    exact.add(ids[:400], vectors[:400], attributes[:400])
    lite.add(ids[:400], vectors[:400], attributes[:400])
    queries = vectors[:400:40]
    _assert_same(lite, exact, queries, filters=Filters.of(price_max=50.0))
    assert lite.remove(ids[:10]) == exact.remove(ids[:10]) == 10
    _assert_same(lite, exact, queries, exclude=[[i] for i in ids[:400:40]])
    assert lite.search(queries, k=5, filters=Filters.of(category='x" or id != "')) == \
        [Hits([], [])] * len(queries)
    folder = lite.save(tmp_path / "index")
    lite.close()
    assert len(load_index(folder, expected_embedder_id="e")) == 390

# ---- the project, the CLI and the service over one Milvus ---------------------------------------

def _catalogue(demo: pd.DataFrame, path: Path, rows: slice) -> Path:
    frame = demo.iloc[rows]
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"],
                  "gender": frame["gender"], "colour": frame["base_colour"],
                  "split": frame["split"], "price": (frame["id"] % 97 + 3).astype(float),
                  }).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def shop(milvus, demo, tmp_path_factory) -> Path:
    """A project of 240 real demo products indexed into Milvus (collection ``shop``)."""
    folder = tmp_path_factory.mktemp("shop")
    project = Project(folder / "project")
    report = project.ingest(_catalogue(demo, folder / "m.parquet", slice(0, 240)), progress=False)
    assert report.added == 240
    summary = project.index("hsv-histogram", kind="milvus", progress=False,
                            index_options={"uri": milvus.uri, "collection": "shop"})
    assert (summary.kind, summary.size) == ("milvus", 240)
    project.close()
    return folder / "project"


def test_project_and_cli_over_milvus(milvus, demo, shop) -> None:
    project = Project(shop)
    first = str(demo.iloc[0]["id"])
    shoes = Filters.of(category=str(demo.iloc[0]["article_type"]))
    similar = project.similar(first, k=5, filters=shoes)
    assert similar and first not in [r.id for r in similar]
    assert all(r.category == demo.iloc[0]["article_type"] for r in similar)
    found = project.search(demo.iloc[0]["image_jpeg"], k=3)
    assert found[0].id == first

    new_id = str(demo.iloc[300]["id"])  # a small update goes to the journal, not a new version
    project.add_item(new_id, demo.iloc[300]["image_jpeg"], {"title": "new", "category": "New"})
    project.close()
    fresh = Project(shop, read_only=True)  # loads and checks the live collection
    assert [r.id for r in fresh.search(demo.iloc[300]["image_jpeg"], k=1,
                                       filters=Filters.of(category="New"))] == [new_id]
    fresh.close()

    result = CliRunner().invoke(cli_app, ["index", "--embedder", "hsv-histogram", "--kind",
                                          "milvus", "--uri", milvus.uri, "--collection", "shop_cli",
                                          "--name", "cli", "--project", str(shop), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["size"] == 241


def test_a_late_journal_replay_never_writes_to_the_collection(milvus, products) -> None:
    """The collection already holds every journal entry (the writer applied it first): a reader
    replaying an old upsert after a newer delete must not bring the item back. An in-process
    index, by contrast, gets the entry applied."""
    from lookalike.index import journal

    ids, vectors, attributes = products
    remote = create_index("milvus", vectors.shape[1], "e", uri=milvus.uri, collection="replay")
    local = create_index("exact", vectors.shape[1], "e")
    for index in (remote, local):
        index.add(ids[:20], vectors[:20], attributes[:20])
    assert remote.remove([ids[0]]) == 1 and local.remove([ids[0]]) == 1
    late = [journal.JournalEntry(upsert=[ids[0]], vectors=vectors[:1],
                                 attributes=attributes[:1], hashes={ids[0]: "h0"})]
    for index in (remote, local):
        hashes: dict[str, str] = {}
        journal.replay(late, index, hashes)
        assert hashes == {ids[0]: "h0"}
    assert ids[0] not in remote and len(remote) == 19
    assert ids[0] in local and len(local) == 20
    remote.close()


def test_load_gives_a_writer_time_to_record_its_count(milvus, products, tmp_path) -> None:
    """A writer in another process updates ``index.json``'s count just after its write; a load
    in between waits for it instead of calling the collection changed."""
    import threading

    from lookalike.index.milvus_backend import MilvusIndex

    ids, vectors, attributes = products
    first = create_index("milvus", vectors.shape[1], "e", uri=milvus.uri, collection="racing")
    first.add(ids[:20], vectors[:20], attributes[:20])
    folder = first.save(tmp_path / "index")
    first.close()
    elsewhere = MilvusIndex(vectors.shape[1], "e", uri=milvus.uri, collection="racing",
                            token=first.token, create=False)  # follows no index.json
    elsewhere.add(ids[20:21], vectors[20:21], attributes[20:21])
    with pytest.raises(ModelMismatchError, match="holds 21 items, the saved index 20"):
        load_index(folder)
    recorded = {**json.loads((folder / "index.json").read_text()), "count": 21}
    late = threading.Timer(0.3, (folder / "index.json").write_text, [json.dumps(recorded)])
    late.start()
    loaded = load_index(folder)
    assert len(loaded) == 21
    late.join()
    loaded.close()
    elsewhere.close()


def test_a_rebuild_stays_on_the_saved_server(milvus, demo, tmp_path, monkeypatch) -> None:
    """A collection changed outside the index is rebuilt by the next update, into the same
    server and collection, without the URI in the environment (the CI failure of a PUT)."""
    from pymilvus import MilvusClient

    monkeypatch.delenv("LOOKALIKE_MILVUS_URI", raising=False)
    project = Project(tmp_path / "project")
    project.ingest(_catalogue(demo, tmp_path / "m.parquet", slice(600, 640)), progress=False)
    project.index("hsv-histogram", kind="milvus", progress=False,
                  index_options={"uri": milvus.uri, "collection": "rebuilt"})
    project.close()
    raw = MilvusClient(uri=milvus.uri)
    raw.delete("rebuilt", ids=[str(demo.iloc[600]["id"])])
    with pytest.raises(ModelMismatchError, match="holds 39 items, the saved index 40"):
        Project(tmp_path / "project", read_only=True).search(demo.iloc[601]["image_jpeg"], k=1)
    project = Project(tmp_path / "project")
    summary = project.refresh_index()
    assert (summary.kind, summary.size) == ("milvus", 40)
    assert [r.id for r in project.search(demo.iloc[600]["image_jpeg"], k=1)] == \
        [str(demo.iloc[600]["id"])]
    project.close()
    rows = raw.query("rebuilt", filter="", output_fields=["count(*)"], consistency_level="Strong")
    assert rows[0]["count(*)"] == 40
    raw.close()


API_KEY = "milvus-test-key-0123456789"


def _until(check, timeout: float = 60.0) -> bool:
    """True once ``check()`` holds for 4 calls in a row (requests land on either worker)."""
    deadline, streak = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and streak < 4:
        streak = streak + 1 if check() else 0
        if streak < 4:
            time.sleep(0.05)
    return streak >= 4


def test_serve_with_two_workers_over_one_milvus(demo, shop, tmp_path) -> None:
    """`lookalike serve --workers 2` over the one Milvus: concurrent searches by photo, similar
    items with filters and item details all answer right; an item PUT through one worker is found
    through both, and gone from both after its DELETE."""
    port = free_port()
    log = (tmp_path / "serve.log").open("w+b")
    env = {**os.environ, "LOOKALIKE_API_KEY": API_KEY, "PYTHONPATH": os.pathsep.join(
        [str(DEMO.parents[2]), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "lookalike", "serve", "--project", str(shop), "--workers", "2",
         "--port", str(port), "--log-level", "warning"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    errors: list[str] = []
    category = str(demo.iloc[0]["article_type"])

    def top(photo: bytes) -> list[str]:
        response = httpx.post(f"{url}/v1/search", files={"image": ("q.jpg", photo, "image/jpeg")},
                              data={"k": 3}, timeout=60)
        return [r["id"] for r in response.json()["results"]] if response.is_success else []

    def ask(row: int) -> None:
        item = str(demo.iloc[row]["id"])
        if row % 3 == 0:
            response = httpx.get(f"{url}/v1/items/{item}/similar",
                                 params={"k": 3, "category": category}, timeout=60)
            results = response.json().get("results", []) if response.is_success else []
            ok = response.is_success and item not in [r["id"] for r in results] and all(
                r["category"] == category for r in results)
        elif row % 3 == 1:
            ok = top(bytes(demo.iloc[row]["image_jpeg"]))[:1] == [item]
        else:
            response = httpx.get(f"{url}/v1/items/{item}", timeout=60)
            ok = response.is_success and response.json()["title"] == demo.iloc[row]["title"]
        if not ok:
            errors.append(f"row {row}")

    try:
        wait_ready(url, server, log)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ask, range(0, 60)))
        assert not errors, f"wrong answers for {errors}"
        photo = bytes(demo.iloc[500]["image_jpeg"])  # not in the shop's catalogue
        assert "served-new" not in top(photo)
        put = httpx.put(f"{url}/v1/items/served-new", files={"image": ("n.jpg", photo,
                                                                       "image/jpeg")},
                        data={"attributes": json.dumps({"title": "new", "category": "New"})},
                        headers={"X-API-Key": API_KEY}, timeout=60)
        assert put.status_code == 201, put.text
        assert _until(lambda: top(photo)[:1] == ["served-new"]), f"after PUT: {top(photo)}"
        gone = httpx.delete(f"{url}/v1/items/served-new", headers={"X-API-Key": API_KEY},
                            timeout=60)
        assert gone.status_code == 200, gone.text
        assert _until(lambda: "served-new" not in top(photo)), f"after DELETE: {top(photo)}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: uvicorn and its two workers
        server.wait(timeout=60)
        log.close()


# ---- last: restarts the server (its first Strong reads afterwards wait ~20 s) --------------------

def test_save_load_and_restart_keep_the_data(milvus, products, tmp_path) -> None:
    ids, vectors, attributes = products
    remote = create_index("milvus", vectors.shape[1], "e", uri=milvus.uri, collection="durable")
    remote.add(ids[:500], vectors[:500], attributes[:500])
    folder = remote.save(tmp_path / "index")
    manifest = json.loads((folder / "index.json").read_text())
    assert {k: manifest[k] for k in ("uri", "collection", "embedder_id", "dim", "count")} == \
        {"uri": milvus.uri, "collection": "durable", "embedder_id": "e",
         "dim": vectors.shape[1], "count": 500}
    assert [p.name for p in folder.iterdir()] == ["index.json"]  # never the vectors
    remote.add(ids[500:520], vectors[500:520], attributes[500:520])  # after the save
    before = remote.search(vectors[:20], k=10)
    remote.close()

    milvus.stop()
    milvus.start()
    loaded = load_index(folder, expected_embedder_id="e", expected_dim=vectors.shape[1])
    assert len(loaded) == 520 and json.loads((folder / "index.json").read_text())["count"] == 520
    after = loaded.search(vectors[:20], k=10)
    assert [set(h.ids) for h in after] == [set(h.ids) for h in before]


def test_local_server_config_sets_the_time_tick(tmp_path) -> None:
    """``time_tick_ms`` reaches the server's config (the packaged template has the line)."""
    from lookalike.index.milvus_server import _config

    _config(tmp_path / "fast", free_port(), free_port(), 50)
    assert "  timeTickInterval: 50\n" in (tmp_path / "fast" / "milvus.yaml.template").read_text()
    _config(tmp_path / "default", free_port(), free_port(), None)
    assert "timeTickInterval: 200 " in (tmp_path / "default" / "milvus.yaml.template").read_text()
