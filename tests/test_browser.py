"""The web page in a real browser: Debian's Chromium driven by Playwright.

The service runs with uvicorn on a free loopback port over a project of real product photos
indexed with the real EfficientNet-Lite0 backbone (the end-to-end test of the whole stack).
Playwright never downloads a browser here: it launches the system ``/usr/bin/chromium``
(installed by ``scripts/system-deps.sh``). Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from lookalike import Project
from lookalike.serve.app import create_app
from lookalike.serve.run import BackgroundServer
from lookalike.serve.settings import ServeSettings

CHROMIUM = os.environ.get("LOOKALIKE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CATEGORIES = ["Tshirts", "Watches", "Casual Shoes", "Handbags", "Kurtas", "Sunglasses",
              "Tops", "Heels", "Jeans", "Backpacks"]
N_ITEMS = 150

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def shop(products_parquet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    frame = pd.read_parquet(products_parquet)
    frame = frame[frame["article_type"].isin(CATEGORIES)].sort_values("id")
    # A mix of kinds so the page has something to show: every 7th product of these types.
    frame = frame.iloc[::7].iloc[:N_ITEMS]
    manifest = folder / "m.parquet"
    pd.DataFrame({"id": frame["id"].astype(str), "image": frame["image_jpeg"],
                  "title": frame["title"], "category": frame["article_type"],
                  "gender": frame["gender"], "colour": frame["base_colour"],
                  "price": (frame["id"] % 97 + 3).astype(float)}).to_parquet(manifest)
    project = Project(folder / "project")
    project.ingest(manifest, progress=False)
    # The machine-wide ONNX cache (built once per machine, also what the served model uses)
    # instead of a fresh per-project build of the int8 model.
    from lookalike.models.efficientnet import default_cache_dir

    project.index("efficientnet-lite0", embedder_options={"cache_dir": default_cache_dir()},
                  progress=False)
    project.close()
    return folder / "project"


@pytest.fixture(scope="module")
def server(shop: Path) -> Iterator[str]:
    settings = ServeSettings(project=shop, read_only=True)
    with BackgroundServer(create_app(settings)) as running:
        yield running.url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/system-deps.sh` "
                    "(apt-get install chromium); this test needs a real browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _query_item(shop: Path) -> tuple[str, str, bytes]:
    """A product with no exact look-alike in the catalogue (so 'first result = itself' is a
    fair test): the first one whose nearest other product scores below 0.995."""
    project = Project(shop, create=False, read_only=True)
    try:
        for item_id in project.store.ids()[5:]:
            if project.similar(item_id, k=1)[0].score < 0.995:
                item = project.store.get(item_id)
                return item_id, item.title or item_id, item.image_path.read_bytes()
    finally:
        project.close()
    raise AssertionError("every product has an exact duplicate; cannot pick a query")


def _open_page(browser, url: str, width: int = 1100, height: int = 900):  # noqa: ANN001,ANN202
    page = browser.new_page(viewport={"width": width, "height": height})
    outside: list[str] = []
    errors: list[str] = []

    def only_local(route) -> None:  # noqa: ANN001 - playwright's Route
        if route.request.url.startswith(url):
            route.continue_()
        else:  # the page must work offline: nothing may be fetched from elsewhere
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_local)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url + "/")
    page.wait_for_selector("#random-items .card")
    return page, outside, errors


def test_search_by_photo_then_more_like_this(browser, server: str, shop: Path,
                                             tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    item_id, title, photo = _query_item(shop)
    upload = tmp_path / "shopper-photo.jpg"
    upload.write_bytes(photo)

    page, outside, errors = _open_page(browser, server)
    assert page.locator("#f-category option").count() > 1  # filters filled from /v1/catalogue
    page.set_input_files("#photo", str(upload))
    page.wait_for_selector("#results .card")
    cards = page.locator("#results .card")
    assert cards.count() == 5
    assert cards.nth(0).get_attribute("data-id") == item_id
    assert cards.nth(0).locator(".title").inner_text() == title
    assert page.locator("#results-title").inner_text() == "Most like your photo"
    assert page.locator("#preview").is_visible()
    for n in range(5):  # every thumbnail really loaded and has alt text
        image = cards.nth(n).locator("img")
        assert image.get_attribute("alt")
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    page.screenshot(path=str(ARTIFACTS / "browser-search.png"), full_page=True)

    # Click the second result: its more-like-this replaces the results.
    second = cards.nth(1)
    second_id = second.get_attribute("data-id")
    second.click()
    page.wait_for_function(
        "id => document.querySelector('#results-title').textContent.startsWith('More like')"
        " && !document.querySelector(`#results .card[data-id=\"${id}\"]`)", arg=second_id)
    similar_ids = [cards.nth(n).get_attribute("data-id") for n in range(cards.count())]
    expected = page.evaluate(
        "async id => (await (await fetch(`/v1/items/${encodeURIComponent(id)}/similar?k=5`))"
        ".json()).results.map(r => r.id)", second_id)
    assert similar_ids == expected and second_id not in similar_ids
    assert page.url.endswith("#item=" + second_id)
    page.screenshot(path=str(ARTIFACTS / "browser-more-like-this.png"), full_page=True)

    assert not outside, outside
    assert not errors, errors
    page.close()


def test_keyboard_filters_and_bad_upload(browser, server: str, tmp_path: Path) -> None:
    page, outside, errors = _open_page(browser, server)

    # Keyboard only: Tab to the first catalogue product and press Enter.
    first = page.locator("#random-items .card").first
    first.focus()
    assert page.evaluate("document.activeElement.classList.contains('card')")
    page.keyboard.press("Enter")
    page.wait_for_selector("#results .card")
    assert page.locator("#results .card").count() == 5

    # A filter re-runs the query and every result obeys it.
    category = page.locator("#f-category option").nth(1).get_attribute("value")
    page.select_option("#f-category", category)
    page.wait_for_function(
        "c => { const cards = [...document.querySelectorAll('#results .card .category')];"
        " return cards.length > 0 && cards.every(e => e.textContent === c); }", arg=category)

    assert not outside and not errors, (outside, errors)

    # A text file dressed up as a JPEG gets a clear message, not a crash.
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not a photo\n" * 10)
    page.set_input_files("#photo", str(fake))
    page.wait_for_selector("#message.error")
    assert "not an image" in page.locator("#message").inner_text()
    # The browser logs the refused upload (a 422); nothing else went wrong.
    assert all("status of 422" in error for error in errors), errors
    assert not outside, outside
    page.close()


def test_phone_width_layout(browser, server: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page, outside, errors = _open_page(browser, server, width=375, height=812)
    page.locator("#random-items .card").nth(2).click()
    page.wait_for_selector("#results .card")
    # Nothing wider than the screen: no sideways scrolling on a 375 px phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    for selector in ("#choose-photo", "#results .card >> nth=0", "#f-category"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, selector
        assert box["height"] >= 40, selector  # big enough to tap
    page.screenshot(path=str(ARTIFACTS / "browser-phone.png"), full_page=True)
    assert not outside and not errors, (outside, errors)
    page.close()


def test_words_box_and_browse_view(browser, server: str, shop: Path, tmp_path: Path) -> None:
    """The words box beside the upload (words alone, then refining a photo) and the "browse"
    view of the catalogue's clusters, where a click starts more-like-this."""
    from lookalike.recommend.clusters import clusters
    from lookalike.recommend.query import recommend
    from lookalike.recommend.text_search import build_text_index

    ARTIFACTS.mkdir(exist_ok=True)
    _, _, photo = _query_item(shop)
    upload = tmp_path / "shopper-photo.jpg"
    upload.write_bytes(photo)
    project = Project(shop, create=False)  # the served project is read-only; prepare it here
    try:
        build_text_index(project)
        report = clusters(project, k=4, seed=0)
        by_words = [r.id for r in recommend(project, text="black watch", k=5)]
        by_photo_and_words = [r.id for r in recommend(project, image=photo, text="in red", k=5)]
        red_as_words = [r.id for r in recommend(project, image=photo, text="in red", k=5,
                                                literal=["colour"])]
    finally:
        project.close()

    page, outside, errors = _open_page(browser, server)
    cards = page.locator("#results .card")
    words = page.locator("#text-query")
    assert words.is_visible() and page.locator("label[for=text-query]").is_visible()
    # Words alone: type and press Enter.
    words.fill("black watch")
    words.press("Enter")
    page.wait_for_function("() => document.querySelector('#results-title').textContent"
                           ".startsWith('Matching')")
    assert [cards.nth(n).get_attribute("data-id") for n in range(cards.count())] == by_words
    # A photo refined by the words in the box.
    words.fill("in red")
    page.set_input_files("#photo", str(upload))
    page.wait_for_function("() => document.querySelector('#results-title').textContent"
                           ".startsWith('Like your photo')")
    assert [cards.nth(n).get_attribute("data-id") for n in range(cards.count())] == \
        by_photo_and_words
    # What the words meant: removable chips ("colour: Red", and the photo's kept category).
    chips = page.locator("#understood .chip")
    chips.first.wait_for()
    assert chips.nth(0).inner_text().startswith("colour: Red")
    assert any("from the photo" in chips.nth(n).inner_text() for n in range(chips.count()))
    page.screenshot(path=str(ARTIFACTS / "browser-words.png"), full_page=True)
    chips.nth(0).click()  # remove the colour: the words "in red" go to the text model instead
    page.wait_for_function("ids => { const got = [...document.querySelectorAll('#results .card')]"
                           ".map(e => e.dataset.id); return JSON.stringify(got) ==="
                           " JSON.stringify(ids); }", arg=red_as_words)
    assert page.locator("#understood").is_hidden()

    # Browse: one row of thumbnails per cluster, largest first; a click starts more-like-this.
    words.fill("")
    rows = page.locator("#cluster-rows ol")
    rows.first.locator(".card").first.wait_for()
    assert rows.count() == 4
    largest = max(range(4), key=lambda c: report.sizes[c])
    first_row = [rows.first.locator(".card").nth(n).get_attribute("data-id")
                 for n in range(rows.first.locator(".card").count())]
    assert first_row == report.central[largest][:8]
    clicked = first_row[0]
    rows.first.locator(".card").first.click()
    page.wait_for_function(
        "id => document.querySelector('#results-title').textContent.startsWith('More like')"
        " && document.querySelectorAll('#results .card').length === 5"
        " && location.hash === '#item=' + encodeURIComponent(id)", arg=clicked)
    expected = page.evaluate(
        "async id => (await (await fetch(`/v1/items/${encodeURIComponent(id)}/similar?k=5`))"
        ".json()).results.map(r => r.id)", clicked)
    assert [cards.nth(n).get_attribute("data-id") for n in range(5)] == expected
    page.screenshot(path=str(ARTIFACTS / "browser-browse.png"), full_page=True)
    assert not outside and not errors, (outside, errors)
    page.close()


def _scene_with_products(shop: Path, folder: Path) -> tuple[Path, list[str]]:
    """A 640 x 480 scene photo: scikit-image's brick wall with three real catalogue photos."""
    import numpy as np

    from lookalike.recommend.scenes import compose_scene

    project = Project(shop, create=False, read_only=True)
    try:
        ids = project.store.ids()[:3]
        photos = [(i, project.store.open_image(i), "target" if n == 0 else "distractor")
                  for n, i in enumerate(ids)]
    finally:
        project.close()
    scene = compose_scene("brick", photos, np.random.default_rng(0), side_range=(90, 140))
    path = folder / "my-living-room.jpg"
    scene.image.save(path, quality=90)
    return path, ids


def test_picked_for_you_and_shop_the_look(browser, server: str, shop: Path,
                                          tmp_path: Path) -> None:
    """Views kept in this browser feed "Picked for you"; a scene upload draws boxes over the
    photo with products under each box."""
    ARTIFACTS.mkdir(exist_ok=True)
    page, outside, errors = _open_page(browser, server)
    failed: list[str] = []  # which request failed, when the console reports one
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400
            else None)
    assert page.locator("#picked-for-you").is_hidden()  # a new visitor has no history

    # Two product views: kept in localStorage only, and the strip appears.
    viewed = []
    for n in (0, 3):
        card = page.locator("#random-items .card").nth(n)
        viewed.append(card.get_attribute("data-id"))
        card.click()
        page.wait_for_selector("#results .card")
    assert page.evaluate("JSON.parse(localStorage.getItem('lookalike.viewed'))") == viewed
    expected = page.evaluate(
        "async h => (await (await fetch('/v1/recommend', {method: 'POST', headers: "
        "{'Content-Type': 'application/json'}, body: JSON.stringify({history: h, k: 10, "
        "method: 'centroid', diversity: 0.2})})).json()).results.map(r => r.id)", viewed)
    assert 1 <= len(expected) <= 10 and not set(expected) & set(viewed)
    # The strip is refreshed (debounced) after each view: it must end with the picks for both.
    page.wait_for_function(
        "ids => JSON.stringify([...document.querySelectorAll('#picked-items .card')]"
        ".map(c => c.dataset.id)) === JSON.stringify(ids)", arg=expected)
    assert page.locator("#picked-for-you").is_visible()

    # Shop the look: upload a scene, see numbered boxes over it and products under each box.
    scene, _ = _scene_with_products(shop, tmp_path)
    page.set_input_files("#look-photo", str(scene))
    page.wait_for_selector("#look-stage .look-box", timeout=120_000)
    boxes = page.locator("#look-stage .look-box")
    regions = page.locator("#look-regions > li")
    assert boxes.count() == regions.count() >= 1
    page.wait_for_function("document.querySelector('#look-stage img').complete")
    # Every box lies on the photo as displayed (the API's boxes are in the photo's own pixels,
    # the page scales them), is not empty and carries its region number.
    geometry = page.evaluate(
        "() => { const p = document.querySelector('#look-stage img').getBoundingClientRect();"
        " return [...document.querySelectorAll('#look-stage .look-box')].map(b => {"
        " const r = b.getBoundingClientRect(); return {left: r.left - p.left, top: r.top - p.top,"
        " right: p.right - r.right, bottom: p.bottom - r.bottom, width: r.width,"
        " height: r.height, photo: p.width, label: b.textContent}; }); }")
    assert geometry[0]["photo"] > 100
    for n, box in enumerate(geometry):
        assert min(box["left"], box["top"], box["right"], box["bottom"]) >= -1, box
        assert box["width"] > 5 and box["height"] > 5 and box["label"] == str(n + 1), box
    for n in range(boxes.count()):
        cards = regions.nth(n).locator(".card")
        assert cards.count() >= 1
        thumb = cards.first.locator("img")  # lazy-loaded: scroll to it, then it must load
        thumb.scroll_into_view_if_needed()
        thumb.evaluate("img => img.complete ? true : new Promise(ok => img.onload = ok)")
        assert thumb.evaluate("img => img.naturalWidth > 0")
    assert "ranked by what you viewed" in page.locator("#look-message").inner_text()
    page.screenshot(path=str(ARTIFACTS / "browser-shop-the-look.png"), full_page=True)

    # "Forget what I viewed" empties the browser's history and hides the strip.
    page.click("#clear-viewed")
    assert page.evaluate("localStorage.getItem('lookalike.viewed')") is None
    assert page.locator("#picked-for-you").is_hidden()
    assert not outside, outside
    assert not errors, (errors, failed)
    page.close()
