"""The REST API end to end, on real product photos.

One project (300 real products, indexed with the fast ``pixels`` embedder) is built per session
and shared by the read-only tests; tests that write get their own copy of it.

The tests that touch the index (search, similar, filters, writes, restarts, concurrent workers)
run twice (``OVER_BOTH``): over the project's FAISS index served in-process, and over a
``milvus`` index in the session's real Milvus server (tests/conftest.py). There the shared
read-only ``client`` and the ``writer`` are real ``lookalike serve --workers 2`` processes,
reached over HTTP; each project copy gets its own collection.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from lookalike import Project, StoreError
from lookalike.cli import app as cli_app
from lookalike.index.milvus_server import free_port
from lookalike.serve.app import create_app
from lookalike.serve.run import BackgroundServer, settings_env
from lookalike.serve.settings import ServeConfigError, ServeSettings, load_settings
from serve_process import wait_ready

API_KEY = "test-key-0123456789abcdef"
CATEGORIES = ["Tshirts", "Watches", "Casual Shoes", "Handbags", "Kurtas", "Sunglasses"]
N_ITEMS = 300
#: Run a test over both index backends: FAISS in-process, and Milvus behind 2 serve workers.
OVER_BOTH = pytest.mark.parametrize("backend", ["faiss", "milvus"], indirect=True)
SRC = Path(__file__).resolve().parents[1] / "src"


# ---- building a real project -------------------------------------------------------------------

def _products(products_parquet: Path) -> pd.DataFrame:
    """70 products of each of six kinds, in a fixed shuffled order: the first N_ITEMS make the
    catalogue, the rest are real photos the catalogue does not have (for adds and queries)."""
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(CATEGORIES)].sort_values("id")
    frame = frame.groupby("article_type").head(70).sample(frac=1.0, random_state=0)
    return frame.reset_index(drop=True)


def _manifest(frame: pd.DataFrame, path: Path) -> Path:
    pd.DataFrame({
        "id": frame["id"].astype(str), "image": frame["image_jpeg"], "title": frame["title"],
        "category": frame["article_type"], "gender": frame["gender"],
        "colour": frame["base_colour"], "split": frame["split"],
        "price": (frame["id"] % 97 + 3).astype(float),  # a stand-in price for range filters
    }).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def products(products_parquet: Path) -> pd.DataFrame:
    return _products(products_parquet)


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    """The index backend: ``faiss`` unless a test is parametrised with ``OVER_BOTH``."""
    return getattr(request, "param", "faiss")


def _index(project: Project, backend: str, request: pytest.FixtureRequest,
           collection: str) -> None:
    """Index ``project`` with ``pixels``: the automatic FAISS kind, or into ``collection`` of the
    session's real Milvus server."""
    if backend == "milvus":
        uri = request.getfixturevalue("milvus").uri
        summary = project.index("pixels", kind="milvus", progress=False,
                                index_options={"uri": uri, "collection": collection})
        assert summary.kind == "milvus"
    else:
        project.index("pixels", progress=False)


@pytest.fixture(scope="session")
def built_projects() -> dict[str, Path]:
    """backend -> its base project, so the FAISS one is built once, whether a test is
    parametrised (``backend=faiss``) or not (pytest makes a fixture instance for each)."""
    return {}


@pytest.fixture(scope="session")
def base_project(products: pd.DataFrame, backend: str, request: pytest.FixtureRequest,
                 built_projects: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    if backend in built_projects:
        return built_projects[backend]
    folder = tmp_path_factory.mktemp(f"api-{backend}")
    project = Project(folder / "project")
    report = project.ingest(_manifest(products.iloc[:N_ITEMS], folder / "m.parquet"),
                            progress=False)
    assert report.added == N_ITEMS and not report.rejected
    _index(project, backend, request, "api_base")
    project.close()
    built_projects[backend] = folder / "project"
    return folder / "project"


@pytest.fixture()
def project_copy(base_project: Path, backend: str, request: pytest.FixtureRequest,
                 tmp_path: Path) -> Path:
    """A private copy of the shared project, for tests that write (over Milvus: with the index
    rebuilt, from the copied embedding cache, in a collection of its own)."""
    target = tmp_path / "project"
    shutil.copytree(base_project, target)
    if backend == "milvus":
        shutil.rmtree(target / "indexes")
        project = Project(target)
        _index(project, backend, request, f"api_{request.node.name.split('[')[0][5:40]}")
        project.close()
    return target


def _settings(project: Path, **overrides: object) -> ServeSettings:
    values: dict[str, object] = {"project": project, "api_key": API_KEY}
    values.update(overrides)
    return ServeSettings(**values)


@contextlib.contextmanager
def _service_url(project: Path, backend: str) -> Iterator[str]:
    """The URL of a writable service over ``project``: in a thread of this process over FAISS,
    ``lookalike serve --workers 2`` over Milvus."""
    if backend == "milvus":
        with _two_workers(project, read_only=False) as http:
            yield str(http.base_url).rstrip("/")
        return
    with BackgroundServer(create_app(_settings(project))) as server:
        yield server.url


@contextlib.contextmanager
def _two_workers(project: Path, read_only: bool) -> Iterator[httpx.Client]:
    """``lookalike serve --workers 2`` over ``project`` in its own process group, and an HTTP
    client for it (the same interface as a TestClient)."""
    port = free_port()
    env = {**os.environ, "LOOKALIKE_API_KEY": API_KEY,
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    log = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the server runs
    server = subprocess.Popen(
        [sys.executable, "-m", "lookalike", "serve", "--project", str(project), "--workers", "2",
         "--port", str(port), "--log-level", "warning",
         "--read-only" if read_only else "--writable"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, log)
        with httpx.Client(base_url=url, timeout=60) as http:
            yield http
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # uvicorn and its two workers
        server.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def client(base_project: Path, backend: str) -> Iterator[httpx.Client]:
    if backend == "milvus":
        with _two_workers(base_project, read_only=True) as http:
            yield http
        return
    with TestClient(create_app(_settings(base_project, read_only=True))) as test_client:
        yield test_client


@pytest.fixture()
def writer(project_copy: Path, backend: str) -> Iterator[httpx.Client]:
    if backend == "milvus":
        with _two_workers(project_copy, read_only=False) as http:
            yield http
        return
    with TestClient(create_app(_settings(project_copy))) as test_client:
        yield test_client


def _photo(products: pd.DataFrame, row: int) -> bytes:
    return bytes(products.iloc[row]["image_jpeg"])


def _stored_photo(project: Path, item_id: str) -> bytes:
    store_project = Project(project, create=False, read_only=True)
    try:
        return store_project.store.get(item_id).image_path.read_bytes()
    finally:
        store_project.close()


def _error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    if code is not None:
        assert body["error"]["code"] == code, body
    assert "Traceback" not in response.text
    return body["error"]


def _search(client: TestClient, photo: bytes, name: str = "photo.jpg",
            **fields: object) -> httpx.Response:
    data = {key: value for key, value in fields.items() if value is not None}
    return client.post("/v1/search", files={"image": (name, photo, "image/jpeg")}, data=data)


def _bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A real, valid 1-bit PNG of width x height that compresses to ~50 KB (400 MP)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + bytes((width + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


# ---- service endpoints --------------------------------------------------------------------------

@OVER_BOTH
def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/v1/health").json()["status"] == "ok"
    ready = client.get("/v1/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert ready.json()["index_version"].startswith("v")


@OVER_BOTH
def test_not_ready_until_the_first_index(products: pd.DataFrame, tmp_path: Path, backend: str,
                                         request: pytest.FixtureRequest) -> None:
    """A catalogue without an index: alive, not ready, queries 503; once `lookalike index` has
    run (here: by another Project, as another process would), the same service becomes ready."""
    project = Project(tmp_path / "project")
    project.ingest(_manifest(products.iloc[:40], tmp_path / "m.parquet"), progress=False)
    item_id = str(products.iloc[0]["id"])
    with TestClient(create_app(_settings(tmp_path / "project", read_only=True))) as test_client:
        assert test_client.get("/v1/health").status_code == 200
        assert test_client.get("/v1/ready").status_code == 503
        assert test_client.get("/v1/ready").json()["ready"] is False
        assert test_client.get("/v1/catalogue").json()["index"] is None
        _error(test_client.get(f"/v1/items/{item_id}/similar"), 503, "not_ready")
        _error(_search(test_client, _photo(products, 0)), 503, "not_ready")
        _index(project, backend, request, "api_first_index")
        assert test_client.get("/v1/ready").status_code == 200
        assert len(test_client.get(f"/v1/items/{item_id}/similar").json()["results"]) == 5
        assert test_client.get("/v1/catalogue").json()["index"]["embedder"] == "pixels"
    project.close()


@OVER_BOTH
def test_catalogue_summary(client: TestClient, products: pd.DataFrame, backend: str) -> None:
    summary = client.get("/v1/catalogue").json()
    head = products.iloc[:N_ITEMS]
    assert summary["items"] == N_ITEMS
    assert summary["index"]["embedder"] == "pixels"
    assert summary["index"]["kind"] in (("milvus",) if backend == "milvus" else ("exact", "hnsw"))
    assert summary["filters"]["category"] == sorted(head["article_type"].unique())
    assert summary["filters"]["colour"] == sorted(head["base_colour"].dropna().unique())
    prices = (head["id"] % 97 + 3).astype(float)
    assert summary["filters"]["price"] == [prices.min(), prices.max()]
    assert summary["read_only"] is True and summary["default_k"] == 5
    assert summary["max_upload_bytes"] == 10 * 1024 * 1024
    assert "project" not in summary  # no server paths leak


def test_openapi_schema_is_served(client: TestClient) -> None:
    schema = client.get("/v1/openapi.json").json()
    for path in ("/v1/search", "/v1/items/{item_id}/similar", "/v1/items/{item_id}",
                 "/v1/items/{item_id}/image", "/v1/items", "/v1/catalogue", "/v1/health",
                 "/v1/ready"):
        assert path in schema["paths"], path
    assert {"put", "delete", "get"} <= set(schema["paths"]["/v1/items/{item_id}"])
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_unknown_route_and_method_are_json_errors(client: TestClient) -> None:
    _error(client.get("/v1/nothing-here"), 404, "not_found")
    _error(client.patch("/v1/items/1"), 405, "method_not_allowed")


# ---- search by photo ----------------------------------------------------------------------------

@OVER_BOTH
def test_search_by_photo_finds_the_product(client: TestClient, products: pd.DataFrame,
                                           base_project: Path) -> None:
    item_id = str(products.iloc[42]["id"])
    response = _search(client, _photo(products, 42))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5
    assert results[0]["id"] == item_id
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    first = results[0]
    assert first["title"] == products.iloc[42]["title"]
    assert first["category"] == products.iloc[42]["article_type"]
    image = client.get(first["image_url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg"
    assert image.content == _stored_photo(base_project, item_id)


@OVER_BOTH
def test_search_k_and_filters(client: TestClient, products: pd.DataFrame) -> None:
    photo = _photo(products, 7)
    assert len(_search(client, photo, k=3).json()["results"]) == 3
    watches = _search(client, photo, k=20, category="Watches").json()["results"]
    assert len(watches) == 20 and {r["category"] for r in watches} == {"Watches"}
    cheap = _search(client, photo, k=30, price_min=10, price_max=20).json()["results"]
    assert cheap and all(10 <= r["attributes"]["price"] <= 20 for r in cheap)
    both = client.post("/v1/search", files={"image": ("p.jpg", photo, "image/jpeg")},
                       data={"category": ["Watches", "Handbags"], "k": "40"}).json()["results"]
    assert {r["category"] for r in both} == {"Watches", "Handbags"}


@pytest.mark.parametrize("fields, code", [
    ({"k": 0}, "invalid_request"), ({"k": 101}, "invalid_request"),
    ({"k": "five"}, "invalid_request"), ({"category": "Spaceships"}, "invalid_filter"),
    ({"gender": "Robots"}, "invalid_filter"), ({"price_min": "cheap"}, "invalid_request"),
    ({"price_min": "nan"}, "invalid_request"), ({"price_max": "inf"}, "invalid_request"),
    ({"price_min": 50, "price_max": 10}, "invalid_filter"),
])
def test_search_bad_parameters_are_422(client: TestClient, products: pd.DataFrame,
                                       fields: dict, code: str) -> None:
    _error(_search(client, _photo(products, 3), **fields), 422, code)


def test_search_without_an_image_is_422(client: TestClient) -> None:
    _error(client.post("/v1/search", data={"k": "5"}), 422, "invalid_request")


def test_exact_search_finds_the_product_in_a_shoppers_photo(client: TestClient,
                                                            products: pd.DataFrame,
                                                            base_project: Path) -> None:
    """``exact`` is the REST twin of ``answer(exact=True)`` / ``lookalike search --exact``."""
    import numpy as np

    from lookalike.catalogue.copy_edits import shopper_photo
    from lookalike.recommend.photo_match import search_exact

    photo = Image.open(io.BytesIO(_photo(products, 42))).convert("RGB")
    shot, _ = shopper_photo(photo, np.random.default_rng(5))
    buffer = io.BytesIO()
    shot.save(buffer, format="JPEG", quality=90)
    response = _search(client, buffer.getvalue(), exact="true", k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["exact"] is True
    assert body["results"][0]["id"] == str(products.iloc[42]["id"])
    reader = Project(base_project, create=False, read_only=True)
    try:  # the same answer as the Python call
        same = search_exact(reader, Image.open(io.BytesIO(buffer.getvalue())), 3)
    finally:
        reader.close()
    assert [r["id"] for r in body["results"]] == [r.id for r in same]
    _error(_search(client, buffer.getvalue(), exact="true", text="in red"), 422,
           "invalid_request")
    _error(client.post("/v1/search", data={"text": "red shirt", "exact": "true"}), 422,
           "invalid_request")


# ---- bad uploads ----------------------------------------------------------------------------------

def test_text_named_jpg_is_rejected(client: TestClient) -> None:
    error = _error(_search(client, b"this is not a photo, just text\n" * 20, "photo.jpg"), 422,
                   "image_rejected")
    assert error["reason"] == "not-an-image"


def test_truncated_jpeg_is_rejected(client: TestClient, products: pd.DataFrame) -> None:
    photo = _photo(products, 11)
    error = _error(_search(client, photo[: len(photo) // 2]), 422, "image_rejected")
    assert error["reason"] == "truncated"


def test_corrupt_and_empty_files_are_rejected(client: TestClient, products: pd.DataFrame) -> None:
    photo = bytearray(_photo(products, 12))
    photo[2:40] = b"\x00" * 38  # keep the JPEG signature, wreck the header
    assert _search(client, bytes(photo)).status_code == 422
    assert _error(_search(client, b""), 422, "image_rejected")["reason"] == "empty"


def test_decompression_bomb_is_refused(client: TestClient) -> None:
    bomb = _bomb_png()
    assert len(bomb) < 200_000  # cheap to send: the size cap alone would not stop it
    error = _error(_search(client, bomb, "bomb.png"), 413, "image_rejected")
    assert error["reason"] == "too-large"


def test_pixel_cap_is_configurable(base_project: Path, products: pd.DataFrame) -> None:
    big = Image.new("RGB", (300, 300), (120, 30, 30))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    settings = _settings(base_project, read_only=True, max_pixels=50_000)
    with TestClient(create_app(settings)) as test_client:
        _error(_search(test_client, buffer.getvalue(), "big.png"), 413, "image_rejected")
        assert _search(test_client, _photo(products, 1)).status_code == 200  # 60x80 is fine


def test_oversize_upload_is_413(base_project: Path, products: pd.DataFrame) -> None:
    settings = _settings(base_project, read_only=True, max_upload_bytes=50_000)
    with TestClient(create_app(settings)) as test_client:
        # Just above the file cap: the request passes the body cap, the file read stops.
        just_over = _photo(products, 2) + b"\x00" * 50_000
        assert "too_large" == _error(_search(test_client, just_over), 413)["code"]
        # Far above: refused from Content-Length before the body is read.
        _error(_search(test_client, os.urandom(400_000)), 413, "too_large")
        assert _search(test_client, _photo(products, 2)).status_code == 200


def test_streamed_oversize_upload_is_cut_off(base_project: Path) -> None:
    """A chunked body with no Content-Length is counted as it arrives and refused at the cap."""
    settings = _settings(base_project, read_only=True, max_upload_bytes=50_000)
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield (b"--xx\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
               b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(400):  # 400 x 64 KB = 25 MB offered
            chunk = b"\xff" * 65536
            sent += len(chunk)
            yield chunk
        yield b"\r\n--xx--\r\n"

    with BackgroundServer(create_app(settings)) as server:
        response = httpx.post(server.url + "/v1/search", content=body(), timeout=30,
                              headers={"content-type": "multipart/form-data; boundary=xx"})
    _error(response, 413, "too_large")
    assert sent < 25 * 1024 * 1024  # the server stopped reading long before the end


# ---- more like this and items ---------------------------------------------------------------------

@OVER_BOTH
def test_similar(client: TestClient, products: pd.DataFrame) -> None:
    item_id = str(products.iloc[5]["id"])
    body = client.get(f"/v1/items/{item_id}/similar", params={"k": 8}).json()
    ids = [r["id"] for r in body["results"]]
    assert len(ids) == 8 and item_id not in ids and len(set(ids)) == 8
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert body["query"]["item"] == item_id
    default = client.get(f"/v1/items/{item_id}/similar").json()["results"]
    assert [r["id"] for r in default] == ids[:5]


@OVER_BOTH
def test_similar_with_filters(client: TestClient, products: pd.DataFrame) -> None:
    item_id = str(products.iloc[5]["id"])
    women = client.get(f"/v1/items/{item_id}/similar",
                       params={"k": 10, "gender": "Women", "colour": ["Black", "White"]})
    assert women.status_code == 200
    for result in women.json()["results"]:
        assert result["attributes"]["gender"] == "Women"
        assert result["attributes"]["colour"] in ("Black", "White")
    _error(client.get(f"/v1/items/{item_id}/similar", params={"colour": "Octarine"}), 422,
           "invalid_filter")
    _error(client.get(f"/v1/items/{item_id}/similar", params={"k": 1000}), 422)
    _error(client.get(f"/v1/items/{item_id}/similar", params={"price_max": "-inf"}), 422)


@OVER_BOTH
def test_unknown_item_is_404(client: TestClient) -> None:
    for path in ("/v1/items/no-such-item", "/v1/items/no-such-item/similar",
                 "/v1/items/no-such-item/image"):
        assert "no-such-item" in _error(client.get(path), 404, "not_found")["message"]


@OVER_BOTH
def test_item_details_and_image(client: TestClient, products: pd.DataFrame,
                                base_project: Path) -> None:
    row = products.iloc[9]
    details = client.get(f"/v1/items/{row['id']}").json()
    assert details["id"] == str(row["id"])
    assert details["title"] == row["title"]
    assert details["category"] == row["article_type"]
    assert details["colour"] == row["base_colour"]
    assert details["image_url"] == f"/v1/items/{row['id']}/image"
    assert "image" not in details  # no server-side path, only the URL
    image = client.get(details["image_url"])
    assert image.content == _stored_photo(base_project, str(row["id"]))
    assert image.headers["x-content-type-options"] == "nosniff"
    assert Image.open(io.BytesIO(image.content)).size == (details["width"], details["height"])


@pytest.mark.parametrize("path", [
    "/v1/items/..%2F..%2F..%2Fetc%2Fpasswd/image",
    "/v1/items/%2e%2e/image",
    "/v1/items/..%252F..%252Fetc%252Fpasswd/image",
    "/v1/items/%2Fetc%2Fpasswd/image",
    "/v1/items/..%5C..%5Cwindows/image",
    "/v1/items/images%2F..%2F..%2Fcatalogue.sqlite/image",
])
def test_image_route_path_traversal(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422), (path, response.status_code)
    assert response.headers["content-type"].startswith("application/json")
    assert b"root:" not in response.content and b"SQLite" not in response.content


def test_image_route_never_leaves_the_image_store(project_copy: Path) -> None:
    """Even a catalogue row pointing outside images/ is refused (defence in depth)."""
    (project_copy / "secret.txt").write_text("do not serve me")
    db = sqlite3.connect(project_copy / "catalogue.sqlite")
    item_id, = db.execute("SELECT id FROM items LIMIT 1").fetchone()
    db.execute("UPDATE items SET image_path = 'images/../secret.txt' WHERE id = ?", (item_id,))
    db.commit()
    db.close()
    with TestClient(create_app(_settings(project_copy, read_only=True))) as test_client:
        response = test_client.get(f"/v1/items/{item_id}/image")
    _error(response, 404, "not_found")
    assert b"do not serve" not in response.content


def test_random_and_paged_items(client: TestClient, products: pd.DataFrame) -> None:
    known = set(products.iloc[:N_ITEMS]["id"].astype(str))
    body = client.get("/v1/items", params={"random": 6}).json()
    ids = [item["id"] for item in body["items"]]
    assert len(ids) == 6 and len(set(ids)) == 6 and set(ids) <= known
    assert body["total"] == N_ITEMS
    assert all(item["image_url"].endswith("/image") for item in body["items"])
    page = client.get("/v1/items", params={"offset": 10, "limit": 5}).json()["items"]
    assert [item["id"] for item in page] == list(products.iloc[10:15]["id"].astype(str))
    _error(client.get("/v1/items", params={"random": 0}), 422)
    _error(client.get("/v1/items", params={"random": 5000}), 422)


# ---- security -------------------------------------------------------------------------------------

def test_writes_need_the_api_key(writer: TestClient, products: pd.DataFrame,
                                 caplog: pytest.LogCaptureFixture) -> None:
    item_id = str(products.iloc[0]["id"])
    files = {"image": ("p.jpg", _photo(products, 0), "image/jpeg")}
    _error(writer.put(f"/v1/items/{item_id}", files=files), 401, "unauthorized")
    _error(writer.delete(f"/v1/items/{item_id}"), 401, "unauthorized")
    wrong = "wrong-key-0123456789abcdef"
    with caplog.at_level(logging.DEBUG):
        response = writer.delete(f"/v1/items/{item_id}", headers={"X-API-Key": wrong})
        _error(response, 403, "forbidden")
        _error(writer.delete(f"/v1/items/{item_id}",
                             headers={"Authorization": f"Bearer {wrong}"}), 403, "forbidden")
    assert wrong not in response.text and API_KEY not in response.text
    assert all(wrong not in r.getMessage() and API_KEY not in r.getMessage()
               for r in caplog.records)
    assert writer.get(f"/v1/items/{item_id}").status_code == 200  # nothing was deleted


def test_read_only_service_refuses_writes(client: TestClient, products: pd.DataFrame) -> None:
    item_id = str(products.iloc[0]["id"])
    headers = {"X-API-Key": API_KEY}
    files = {"image": ("p.jpg", _photo(products, 0), "image/jpeg")}
    _error(client.put(f"/v1/items/{item_id}", files=files, headers=headers), 403, "read_only")
    _error(client.delete(f"/v1/items/{item_id}", headers=headers), 403, "read_only")
    assert client.get(f"/v1/items/{item_id}").status_code == 200


def test_refuses_to_start_writable_without_a_key(base_project: Path, tmp_path: Path) -> None:
    with pytest.raises(ServeConfigError, match="API key"):
        create_app(ServeSettings(project=base_project))
    with pytest.raises(ServeConfigError, match="too short"):
        create_app(ServeSettings(project=base_project, api_key="short"))
    create_app(ServeSettings(project=base_project, read_only=True))  # fine without a key
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    assert ServeSettings(project=base_project, api_key_file=key_file).resolved_api_key() == API_KEY
    result = CliRunner().invoke(cli_app, ["serve", "--project", str(base_project)],
                                env={"LOOKALIKE_API_KEY": ""})
    assert result.exit_code == 1
    assert "without an API key" in result.output
    missing = CliRunner().invoke(cli_app, ["serve", "--read-only", "--project",
                                           str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "not a lookalike project" in missing.output


def test_settings_from_env_and_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('[serve]\nport = 9001\nmax_pixels = 1000000\ndefault_k = 8\n')
    monkeypatch.setenv("LOOKALIKE_DEFAULT_K", "12")
    monkeypatch.setenv("LOOKALIKE_CORS_ORIGINS", "https://shop.example,https://www.shop.example")
    monkeypatch.setenv("LOOKALIKE_API_KEY", API_KEY)
    settings = load_settings(config, port=9002)
    assert settings.port == 9002            # argument beats env and file
    assert settings.default_k == 12         # env beats file
    assert settings.max_pixels == 1_000_000  # file beats default
    assert settings.cors_origins == ["https://shop.example", "https://www.shop.example"]
    assert settings.resolved_api_key() == API_KEY
    assert API_KEY not in repr(settings)
    assert "LOOKALIKE_API_KEY" not in settings_env(settings)  # never copied into argv/env
    config.write_text('[serve]\nportt = 1\n')
    with pytest.raises(ServeConfigError, match="portt"):
        load_settings(config)
    monkeypatch.setenv("LOOKALIKE_MAX_UPLOAD_BYTES", "lots")
    with pytest.raises(ServeConfigError, match="max_upload_bytes"):
        load_settings()


def test_cors_is_off_by_default(client: TestClient, base_project: Path) -> None:
    origin = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in client.get("/v1/health", headers=origin).headers
    settings = _settings(base_project, read_only=True, cors_origins=["https://shop.example"])
    with TestClient(create_app(settings)) as test_client:
        allowed = test_client.get("/v1/health", headers={"Origin": "https://shop.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
        other = test_client.get("/v1/health", headers=origin)
        assert "access-control-allow-origin" not in other.headers


def test_unexpected_errors_are_a_plain_json_500(base_project: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(_settings(base_project, read_only=True))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail /srv/data")

    app.state.service.similar = broken
    with TestClient(app, raise_server_exceptions=False) as test_client, \
            caplog.at_level(logging.ERROR, logger="lookalike.serve"):
        response = test_client.get("/v1/items/1/similar")
    error = _error(response, 500, "internal_error")
    assert "secret" not in error["message"] and "RuntimeError" not in response.text
    assert any("RuntimeError" in (r.exc_text or "") or r.exc_info for r in caplog.records)


@OVER_BOTH
def test_two_writers_on_one_project_serialise(project_copy: Path,
                                               products: pd.DataFrame) -> None:
    """Two writable services on one directory (as two worker processes would be) writing at
    the same time: the project's file lock serialises them and no write is lost."""
    apps = [create_app(_settings(project_copy)) for _ in range(2)]
    statuses: list[int] = []
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        def write(client: TestClient, n: int) -> None:
            for m in range(2):
                row = N_ITEMS + 40 + 2 * n + m
                statuses.append(_put(client, f"twin-{n}-{m}", _photo(products, row),
                                     {"title": f"twin {n} {m}"}).status_code)

        threads = [threading.Thread(target=write, args=(client, n))
                   for n, client in enumerate((first, second))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert statuses == [201] * 4
        for n in range(2):
            for m in range(2):
                photo = _photo(products, N_ITEMS + 40 + 2 * n + m)
                assert _search(first, photo).json()["results"][0]["id"] == f"twin-{n}-{m}"
        assert second.get("/v1/catalogue").json()["items"] == N_ITEMS + 4


# ---- the page --------------------------------------------------------------------------------------

def test_page_and_static_files_are_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    for needle in ('id="picked-for-you"', 'id="text-search"', 'capture="environment"',
                   'accept="image/*"', 'lang="en"', 'name="viewport"'):
        assert needle in html, needle
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
        response = client.get(asset)
        assert response.status_code == 200, asset
        text = response.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name only
        assert "http://" not in text and "https://" not in text, asset  # nothing from elsewhere
    assert "http://" not in html and "https://" not in html


# ---- writes ------------------------------------------------------------------------------------------

def _put(client: TestClient, item_id: str, photo: bytes, attributes: dict | str | None = None,
         key: str = API_KEY) -> httpx.Response:
    data = {}
    if attributes is not None:
        data["attributes"] = attributes if isinstance(attributes, str) else json.dumps(attributes)
    return client.put(f"/v1/items/{item_id}", files={"image": ("new.jpg", photo, "image/jpeg")},
                      data=data, headers={"X-API-Key": key})


@OVER_BOTH
def test_add_search_replace_delete(writer: TestClient, products: pd.DataFrame,
                                   project_copy: Path) -> None:
    new_row = products.iloc[N_ITEMS + 3]  # a real product that is not in the catalogue
    photo = bytes(new_row["image_jpeg"])
    before = _search(writer, photo).json()["results"]
    assert "new-1" not in [r["id"] for r in before]
    attributes = {"title": "Brand new thing", "category": new_row["article_type"],
                  "gender": "Women", "colour": "Teal", "price": 42.5,
                  "attributes": {"brand": "Acme"}}
    created = _put(writer, "new-1", photo, attributes)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "created"

    details = writer.get("/v1/items/new-1").json()
    assert details["title"] == "Brand new thing" and details["price"] == 42.5
    assert details["attributes"].get("brand") == "Acme"
    found = _search(writer, photo).json()["results"]
    assert found[0]["id"] == "new-1" and found[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert "Teal" in writer.get("/v1/catalogue").json()["filters"]["colour"]
    assert writer.get("/v1/items/new-1/similar").status_code == 200
    teal = _search(writer, _photo(products, 0), colour="Teal").json()["results"]
    assert [r["id"] for r in teal] == ["new-1"]

    other_photo = _photo(products, N_ITEMS + 4)
    replaced = _put(writer, "new-1", other_photo, {"title": "Replaced"})
    assert replaced.status_code == 200 and replaced.json()["status"] == "replaced"
    assert _search(writer, other_photo).json()["results"][0]["id"] == "new-1"
    assert writer.get("/v1/items/new-1").json()["title"] == "Replaced"
    assert writer.get("/v1/items/new-1/image").content == _stored_photo(project_copy, "new-1")

    deleted = writer.delete("/v1/items/new-1", headers={"X-API-Key": API_KEY})
    assert deleted.status_code == 200 and deleted.json()["status"] == "deleted"
    _error(writer.get("/v1/items/new-1"), 404)
    _error(writer.get("/v1/items/new-1/similar"), 404)
    assert "new-1" not in [r["id"] for r in _search(writer, other_photo, k=20).json()["results"]]
    _error(writer.delete("/v1/items/new-1", headers={"X-API-Key": API_KEY}), 404)


@pytest.mark.parametrize("item_id, attributes, status", [
    ("ok-id", '{"title": 5}', 422),                     # wrong type
    ("ok-id", '{"price": -3}', 422),                    # out of range
    ("ok-id", '{"favourite_food": "x"}', 422),          # unknown field (extras go in attributes)
    ("ok-id", "not json", 422),
    ("ok-id", '{"attributes": {"a": {"nested": 1}}}', 422),
    ("..evil", "{}", 422),                              # ids may not be path-like
    (".hidden", "{}", 422),
    ("a" * 200, "{}", 422),
])
def test_put_validates_its_input(writer: TestClient, products: pd.DataFrame, item_id: str,
                                 attributes: str, status: int) -> None:
    response = _put(writer, item_id, _photo(products, N_ITEMS + 1), attributes)
    assert response.status_code == status, response.text
    assert "error" in response.json()
    assert writer.get("/v1/catalogue").json()["items"] == N_ITEMS


def test_put_rejects_bad_images_before_writing(writer: TestClient) -> None:
    error = _error(_put(writer, "bad-1", b"GIF89a but not really", {"title": "x"}), 422,
                   "image_rejected")
    assert error["reason"] in ("truncated", "unreadable", "not-an-image")
    _error(_put(writer, "bad-2", _bomb_png(), {}), 413, "image_rejected")
    assert writer.get("/v1/items/bad-1").status_code == 404
    assert writer.get("/v1/catalogue").json()["items"] == N_ITEMS


@OVER_BOTH
def test_restart_gives_the_same_results(project_copy: Path, products: pd.DataFrame) -> None:
    photo = _photo(products, N_ITEMS + 7)
    settings = _settings(project_copy)
    with TestClient(create_app(settings)) as first:
        assert _put(first, "added-x", photo, {"title": "X", "category": "Watches"}).status_code \
            == 201
        assert first.delete(f"/v1/items/{products.iloc[3]['id']}",
                            headers={"X-API-Key": API_KEY}).status_code == 200
        before_search = _search(first, photo, k=10).json()["results"]
        before_similar = first.get(f"/v1/items/{products.iloc[8]['id']}/similar?k=10").json()
    with TestClient(create_app(_settings(project_copy, read_only=True))) as second:
        after_search = _search(second, photo, k=10).json()["results"]
        after_similar = second.get(f"/v1/items/{products.iloc[8]['id']}/similar?k=10").json()
        assert second.get("/v1/catalogue").json()["items"] == N_ITEMS  # +1 -1
    assert after_search == before_search and after_search[0]["id"] == "added-x"
    assert after_similar == before_similar
    assert str(products.iloc[3]["id"]) not in [r["id"] for r in after_search]


def test_serving_a_named_index(project_copy: Path, products: pd.DataFrame) -> None:
    """--index NAME serves (and updates) that index, not the project's default one."""
    project = Project(project_copy)
    project.index("pixels", kind="hnsw", name="alt", progress=False)
    default_before = (project_copy / "indexes" / "default" / "CURRENT").read_text()
    project.close()
    with TestClient(create_app(_settings(project_copy, index="alt"))) as test_client:
        summary = test_client.get("/v1/catalogue").json()["index"]
        assert (summary["name"], summary["kind"]) == ("alt", "hnsw")
        photo = _photo(products, N_ITEMS + 11)
        assert _put(test_client, "in-alt", photo, {"title": "alt"}).status_code == 201
        assert _search(test_client, photo).json()["results"][0]["id"] == "in-alt"
    assert (project_copy / "indexes" / "default" / "CURRENT").read_text() == default_before


@OVER_BOTH
def test_other_workers_pick_up_a_write(project_copy: Path, products: pd.DataFrame) -> None:
    """A read-only worker on the same directory sees another worker's write on its next query."""
    photo = _photo(products, N_ITEMS + 9)
    with TestClient(create_app(_settings(project_copy, read_only=True))) as reader, \
            TestClient(create_app(_settings(project_copy))) as writer_client:
        assert "from-other" not in [r["id"] for r in _search(reader, photo).json()["results"]]
        assert _put(writer_client, "from-other", photo, {"title": "Other"}).status_code == 201
        assert _search(reader, photo).json()["results"][0]["id"] == "from-other"
        assert reader.get("/v1/items/from-other").status_code == 200


@OVER_BOTH
def test_a_version_replaced_while_loading_is_read_again(project_copy: Path,
                                                        products: pd.DataFrame) -> None:
    """A writer may swap CURRENT and prune the folder a reader is loading; the reader then
    loads the new version instead of failing. A damaged index that stays current is a 500."""
    app = create_app(_settings(project_copy, read_only=True))
    reader = app.state.service.project
    real_similar = reader.similar
    calls: list[int] = []

    def racing_similar(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:  # another process writes a new version while we load the old one
            other = Project(project_copy)
            other.add_item("racer", _photo(products, N_ITEMS + 30), {"title": "racer"})
            other.close()
            raise StoreError("damaged index files (folder pruned while reading)")
        return real_similar(*args, **kwargs)

    reader.similar = racing_similar  # type: ignore[method-assign]
    item_id = str(products.iloc[4]["id"])
    with TestClient(app, raise_server_exceptions=False) as test_client:
        assert test_client.get(f"/v1/items/{item_id}/similar").status_code == 200
        assert len(calls) == 2

        def always_damaged(*args: object, **kwargs: object) -> object:
            raise StoreError("damaged index files")

        reader.similar = always_damaged  # type: ignore[method-assign]
        _error(test_client.get(f"/v1/items/{item_id}/similar"), 500, "server_error")


@OVER_BOTH
def test_concurrent_reads_during_updates_never_fail(project_copy: Path, products: pd.DataFrame,
                                                    backend: str) -> None:
    """Readers hammer the server (real HTTP, several threads; over Milvus, two worker
    processes) while items are added and removed; every read succeeds and every write lands."""
    ids = list(products.iloc[:N_ITEMS]["id"].astype(str))
    photos = [_photo(products, row) for row in range(0, 40, 4)]
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    with _service_url(project_copy, backend) as url:
        def read_loop(seed: int) -> None:
            nonlocal reads
            with httpx.Client(base_url=url, timeout=60) as http:
                n = seed
                while not stop.is_set():
                    n += 1
                    if n % 3:
                        response = http.get(f"/v1/items/{ids[(n * 7) % 150]}/similar",
                                            params={"k": 5})
                    else:
                        response = http.post("/v1/search", files={
                            "image": ("p.jpg", photos[n % len(photos)], "image/jpeg")})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    scores = [r["score"] for r in response.json()["results"]]
                    # 5 results, or 4 while a deleted neighbour is already gone from the
                    # catalogue but still in the index version being replaced.
                    if len(scores) not in (4, 5) or scores != sorted(scores, reverse=True):
                        failures.append(f"bad results: {response.text[:200]}")
                    reads += 1

        threads = [threading.Thread(target=read_loop, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        try:
            with httpx.Client(base_url=url, timeout=120,
                              headers={"X-API-Key": API_KEY}) as http:
                for n in range(4):
                    photo = _photo(products, N_ITEMS + 20 + n)
                    response = http.put(f"/v1/items/live-{n}",
                                        files={"image": ("p.jpg", photo, "image/jpeg")},
                                        data={"attributes": json.dumps({"title": f"live {n}"})})
                    assert response.status_code == 201, response.text
                    # Items 150.. are never read by the readers, so removing them is safe.
                    assert http.delete(f"/v1/items/{ids[200 + n]}").status_code == 200
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        with httpx.Client(base_url=url, timeout=60) as http:
            summary = http.get("/v1/catalogue").json()
    assert not failures, failures[:5]
    assert reads > 20
    assert summary["items"] == N_ITEMS


def test_api_reference_is_current() -> None:
    """docs/api.md is generated from the OpenAPI schema; it must match the code."""
    import runpy

    generator = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" /
                                   "gen_api_docs.py"))
    expected = generator["render"](generator["build_schema"]())
    current = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    assert current == expected, "docs/api.md is stale: run python scripts/gen_api_docs.py"
