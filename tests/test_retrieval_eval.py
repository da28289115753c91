"""Blocked class-match evaluation against brute force, on real Fashion-MNIST pixels; reports."""

from __future__ import annotations

import base64
import html.parser
import io
import json
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from lookalike.catalogue.sources import load_fashion_mnist
from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.evaluate.report import (
    plot_bars,
    plot_lines,
    write_metrics_table,
    write_result_grid_html,
    write_result_grid_png,
)
from lookalike.evaluate.retrieval import evaluate_retrieval, nearest_rows, neighbours

@pytest.fixture(scope="module")
def fashion(fashion_mnist_dir: Path) -> dict[str, np.ndarray]:
    """The first 1,500 test and 6,000 train images as raw 784-pixel rows, labels as names."""
    test_x, test_y, names = load_fashion_mnist("test")
    train_x, train_y, _ = load_fashion_mnist("train")
    test_x, test_y, train_x, train_y = test_x[:1500], test_y[:1500], train_x[:6000], train_y[:6000]
    names = np.array(names, dtype=object)
    return {"test_images": test_x, "test_x": _unit(test_x), "test_y": names[test_y],
            "train_images": train_x, "train_x": _unit(train_x), "train_y": names[train_y]}


def _unit(images: np.ndarray) -> np.ndarray:
    rows = images.reshape(len(images), -1).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _brute_force(queries: np.ndarray, query_y: np.ndarray, gallery: np.ndarray,
                 gallery_y: np.ndarray, depth: int, self_excluded: bool = False) -> dict:
    """Dense float64 similarities + argsort: the reference the blocked search must reproduce."""
    sims = queries.astype(np.float64) @ gallery.astype(np.float64).T
    if self_excluded:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
    relevant = gallery_y[order] == query_y[:, None]
    n_relevant = (gallery_y[None, :] == query_y[:, None]).sum(axis=1) - int(self_excluded)
    out = {"order": order, "sims": np.take_along_axis(sims, order, axis=1)}
    for k in (1, 5, 10):
        out[f"P@{k}"] = relevant[:, :k].mean(axis=1)
        out[f"R@{k}"] = relevant[:, :k].sum(axis=1) / n_relevant
    # AP@100 written out the long way: mean of precision at each hit, over min(100, n_relevant).
    ap = []
    for row, total in zip(relevant[:, :100], n_relevant):
        hits = np.flatnonzero(row)
        ap.append(sum((i + 1) / (rank + 1) for i, rank in enumerate(hits)) / min(100, total))
    out["mAP@100"] = np.array(ap)
    gains = relevant[:, :10] / np.log2(np.arange(2, 12))
    ideal = np.array([sum(1 / np.log2(np.arange(2, 2 + min(10, t)))) for t in n_relevant])
    out["NDCG@10"] = gains.sum(axis=1) / ideal
    return out


def test_blocked_evaluation_equals_brute_force(fashion: dict) -> None:
    report = evaluate_retrieval(fashion["test_x"], fashion["test_y"], fashion["train_x"],
                                fashion["train_y"], block=256, class_column="label")
    reference = _brute_force(fashion["test_x"], fashion["test_y"], fashion["train_x"],
                             fashion["train_y"], depth=100)
    assert report.protocol == "split"
    assert (report.n_queries, report.n_gallery) == (1500, 6000)
    for name in ("P@1", "P@5", "P@10", "R@10", "mAP@100", "NDCG@10"):
        # float32 search vs float64 reference may swap near-ties; anything more is a bug.
        assert report.metrics[name] == pytest.approx(reference[name].mean(), abs=2e-3), name
    assert 0.7 < report.metrics["P@10"] < 0.95  # raw pixels on Fashion-MNIST: about 0.8
    # Per-class numbers are the same means taken over each class's queries.
    for label in ("Trouser", "Shirt"):
        mask = fashion["test_y"] == label
        assert report.per_class[label]["queries"] == int(mask.sum())
        assert report.per_class[label]["P@10"] == pytest.approx(
            reference["P@10"][mask].mean(), abs=5e-3)
    assert report.per_class["Trouser"]["P@10"] > report.per_class["Shirt"]["P@10"]
    # The kept neighbours are the brute-force top 10, scores included.
    kept = report.neighbours
    assert kept is not None and kept.rows.shape == (1500, 10)
    np.testing.assert_allclose(kept.scores, reference["sims"][:, :10], atol=1e-4)
    same = (kept.rows == reference["order"][:, :10]).all(axis=1).mean()
    assert same > 0.99


def test_block_size_does_not_change_the_result(fashion: dict) -> None:
    args = (fashion["test_x"][:300], fashion["test_y"][:300], fashion["train_x"],
            fashion["train_y"])
    one = evaluate_retrieval(*args, block=300)
    for block in (64, 7):
        many = evaluate_retrieval(*args, block=block)
        # FAISS computes blocks under 20 queries without BLAS, so float32 rounding (and with
        # it the order of near-ties) may differ in the last digits; nothing else may.
        for name, value in one.metrics.items():
            assert many.metrics[name] == pytest.approx(value, abs=1e-3), (block, name)
        assert (one.neighbours.rows == many.neighbours.rows).all(axis=1).mean() > 0.98


def test_leave_one_out_excludes_self(fashion: dict) -> None:
    x, y = fashion["train_x"][:3000], fashion["train_y"][:3000]
    report = evaluate_retrieval(x, y, leave_one_out=True, block=500)
    reference = _brute_force(x, y, x, y, depth=100, self_excluded=True)
    assert report.protocol == "leave-one-out"
    assert report.n_gallery == 3000
    rows = report.neighbours.rows
    assert not (rows == np.arange(3000)[:, None]).any(), "a query got itself back"
    for name in ("P@1", "P@10", "mAP@100", "NDCG@10", "R@10"):
        assert report.metrics[name] == pytest.approx(reference[name].mean(), abs=2e-3), name
    # Without the exclusion every query would find itself at rank 1.
    assert report.metrics["P@1"] < 0.95


def test_leave_one_out_by_id_with_an_exact_duplicate(fashion: dict) -> None:
    """The own row is excluded by id even when a duplicate ties with it for first place."""
    x = np.concatenate([fashion["train_x"][:200], fashion["train_x"][:1]])  # row 200 == row 0
    y = np.concatenate([fashion["train_y"][:200], fashion["train_y"][:1]])
    ids = [f"item-{i}" for i in range(201)]
    found = nearest_rows(x, x, k=3, leave_one_out=True, query_ids=ids, gallery_ids=ids)
    assert found.rows[0, 0] == 200 and found.rows[200, 0] == 0
    assert not (found.rows == np.arange(201)[:, None]).any()
    report = evaluate_retrieval(x, y, leave_one_out=True, query_ids=ids, gallery_ids=ids)
    assert report.per_class[str(y[0])]["HR@1"] > 0  # the duplicate is a correct hit
    # neighbours() gives ids, leaving the query's own id out whenever both id lists are given.
    ids_out, scores_out = neighbours(x[:2], x, k=2, query_ids=ids[:2], gallery_ids=ids)
    assert ids_out[0][0] == "item-200" and "item-0" not in ids_out[0]
    assert "item-1" not in ids_out[1]
    assert scores_out[0][0] == pytest.approx(1.0, abs=1e-5)


def test_queries_without_gallery_class_count_as_zero(fashion: dict) -> None:
    keep = fashion["train_y"] != "Bag"
    report = evaluate_retrieval(fashion["test_x"][:500], fashion["test_y"][:500],
                                fashion["train_x"][keep], fashion["train_y"][keep])
    bags = int((fashion["test_y"][:500] == "Bag").sum())
    assert bags > 0
    assert report.queries_without_relevant == bags
    assert report.classes_without_gallery == ["Bag"]
    assert report.per_class["Bag"]["P@10"] == 0.0 and report.per_class["Bag"]["gallery"] == 0
    payload = json.loads(json.dumps(report.to_json()))
    assert payload["queries_without_relevant"] == bags
    assert payload["classes_without_gallery"] == ["Bag"]
    # They are counted: the overall mean is diluted by exactly their share.
    others = [v["P@10"] * v["queries"] for k, v in report.per_class.items() if k != "Bag"]
    assert report.metrics["P@10"] == pytest.approx(sum(others) / 500)


def test_small_gallery_and_unnormalised_vectors(fashion: dict) -> None:
    raw = fashion["test_images"][:50].reshape(50, -1).astype(np.float32)  # not unit length
    report = evaluate_retrieval(raw, fashion["test_y"][:50], fashion["train_x"][:4],
                                fashion["train_y"][:4], ks=(1, 10), map_at=100)
    assert report.neighbours.rows.shape == (50, 10)
    assert (report.neighbours.rows[:, 4:] == -1).all()  # the gallery ran out after 4
    unit = evaluate_retrieval(fashion["test_x"][:50], fashion["test_y"][:50],
                              fashion["train_x"][:4], fashion["train_y"][:4], ks=(1, 10))
    assert report.metrics == unit.metrics


def test_bad_inputs_raise_one_line_errors(fashion: dict) -> None:
    x, y = fashion["test_x"][:10], fashion["test_y"][:10]
    with pytest.raises(ModelMismatchError, match="dimension"):
        evaluate_retrieval(x, y, x[:, :100], y)
    with pytest.raises(LookalikeError, match="labels"):
        evaluate_retrieval(x, y[:5], x, y)
    with pytest.raises(LookalikeError, match="unique"):
        evaluate_retrieval(x, y, x, y, gallery_ids=["a"] * 10)
    with pytest.raises(LookalikeError, match="NaN"):
        evaluate_retrieval(np.full_like(x, np.nan), y, x, y)
    with pytest.raises(LookalikeError, match="gallery_vectors is required"):
        evaluate_retrieval(x, y, None, y)


# ---- reports ----------------------------------------------------------------------------------
class _Images(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "img":
            self.images.append(dict(attrs))


def _grid_rows(fashion: dict, tmp_path: Path, outside: Path) -> list[dict]:
    """Six queries with their top 4 from a real evaluation, images three ways: files under the
    page folder, encoded bytes, and files outside the page folder."""
    report = evaluate_retrieval(fashion["test_x"][:6], fashion["test_y"][:6],
                                fashion["train_x"], fashion["train_y"], ks=(4,))
    (tmp_path / "images").mkdir()
    outside.mkdir()

    def png(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    rows = []
    for q in range(6):
        query_file = tmp_path / "images" / f"query {q}.png"  # a space, to check URL quoting
        query_file.write_bytes(png(fashion["test_images"][q]))
        results = []
        for rank, (row, score) in enumerate(zip(report.neighbours.rows[q],
                                                report.neighbours.scores[q])):
            if rank % 2:
                image: object = png(fashion["train_images"][row])
            else:
                image = outside / f"train-{row}.png"
                image.write_bytes(png(fashion["train_images"][row]))
            results.append({"id": str(row), "image": image, "score": float(score),
                            "title": f"train #{row} <b>&", "label": fashion["train_y"][row],
                            "match": fashion["train_y"][row] == fashion["test_y"][q]})
        rows.append({"query": {"image": str(query_file), "label": fashion["test_y"][q],
                               "title": f'query <script>alert("{q}")</script>'},
                     "results": results})
    return rows


def test_result_grid_html(fashion: dict, tmp_path: Path) -> None:
    rows = _grid_rows(fashion, tmp_path, tmp_path.parent / f"{tmp_path.name}-outside")
    rows[0]["results"][0]["image"] = ""  # an item without an image still gets a cell
    page = write_result_grid_html(tmp_path / "results.html", rows, title="Fashion <MNIST> & co",
                                  summary={"P@10": 0.8123})
    text = page.read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(&#34;0&#34;)" in text
    assert "Fashion &lt;MNIST&gt; &amp; co" in text and "train #" in text
    assert "&lt;b&gt;&amp;" in text
    assert "0.812" in text
    assert "http://" not in text and "https://" not in text  # nothing from the network
    parser = _Images()
    parser.feed(text)
    assert len(parser.images) == 6 * 5 - 1
    relative = [i for i in parser.images if not i["src"].startswith("data:")]
    inline = [i for i in parser.images if i["src"].startswith("data:")]
    assert len(relative) == 6 and len(inline) == 6 * 4 - 1
    for image in relative:
        assert (tmp_path / unquote(image["src"])).is_file(), image["src"]
    for image in inline:
        header, payload = image["src"].split(",", 1)
        assert header == "data:image/png;base64"
        assert Image.open(io.BytesIO(base64.b64decode(payload))).size == (28, 28)
    assert all(image["alt"] for image in parser.images)
    matches = sum(r["match"] for row in rows for r in row["results"])
    assert text.count('class="match"') == matches
    assert text.count('class="miss"') == 6 * 4 - matches
    assert "no image" in text


def test_result_grid_png(fashion: dict, tmp_path: Path) -> None:
    rows = _grid_rows(fashion, tmp_path, tmp_path.parent / f"{tmp_path.name}-outside")
    path = write_result_grid_png(tmp_path / "grid.png", rows, thumb=64, title="top 4")
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        assert picture.width > 5 * 64 and picture.height > 6 * 64
        pixels = np.asarray(picture.convert("RGB"))
    green = ((pixels == [26, 127, 55]).all(axis=2)).sum()
    red = ((pixels == [207, 34, 46]).all(axis=2)).sum()
    assert green > 0 and red > 0  # both flags are drawn (raw pixels get some wrong)


def test_metrics_table_and_plots(fashion: dict, tmp_path: Path) -> None:
    report = evaluate_retrieval(fashion["test_x"][:300], fashion["test_y"][:300],
                                fashion["train_x"], fashion["train_y"], class_column="label")
    table = report.table(per_class=2)
    assert [c.header for c in table.columns] == ["class", "queries", "P@1", "P@5", "P@10",
                                                "R@10", "HR@10", "mAP@100", "NDCG@10"]
    assert table.row_count == 3
    assert f"P@10       {report.metrics['P@10']:.4f}" in report.text()
    markdown = write_metrics_table(tmp_path / "m.md", tmp_path / "m.json", report)
    assert (tmp_path / "m.md").read_text() == markdown
    assert f"{report.metrics['P@10']:.3f}" in markdown and "| Trouser |" in markdown
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["P@10"] == pytest.approx(
        report.metrics["P@10"], abs=1e-6)
    rows = [{"embedder": "pixels", "dataset": "a", "P@10": 0.65, "note": "x|y"},
            {"embedder": "cnn", "dataset": "a", "P@10": 0.75}]
    markdown = write_metrics_table(None, tmp_path / "rows.json", rows, title="compare")
    assert "| pixels | a | 0.650 | x\\|y |" in markdown and "| cnn | a | 0.750 |  |" in markdown
    assert json.loads((tmp_path / "rows.json").read_text())["rows"] == rows
    bars = plot_bars(tmp_path / "bars.png", rows, x="embedder", y="P@10", hue="dataset",
                     reference={"published": 0.7})
    lines = plot_lines(tmp_path / "lines.png",
                       [{"k": k, "P@k": v, "m": m} for m, vs in (("a", (0.9, 0.8, 0.7)),
                                                                 ("b", (0.8, 0.7, 0.6)))
                        for k, v in zip((1, 5, 10), vs)], x="k", y="P@k", hue="m")
    for path in (bars, lines):
        with Image.open(path) as picture:
            assert picture.format == "PNG" and picture.width > 300
