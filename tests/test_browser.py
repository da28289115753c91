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
