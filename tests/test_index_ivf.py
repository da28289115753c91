"""The ``ivf`` index kind (IVF + PQ fast-scan, re-ranked on SQ8 codes) on real vectors.

Fashion-MNIST pixels, PCA to 64-d, L2-normalised; ``category`` is the real class and ``price`` is
made from each image (mean ink), so filters select real, uneven subsets. Results are compared with
numpy brute force as sets or by score with a tolerance (never by exact order), so any CPU passes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.index.base import Filters, create_index, load_index

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]
N = 6000
#: Small-set parameters: 32 cells, 16 four-bit sub-quantisers, trained once 2,000 vectors arrive.
PARAMS = {"nlist": 32, "nprobe": 8, "pq": 16, "k_factor": 32, "train_size": 2000,
          "exact_below": 100}


def _idx(folder: Path, name: str) -> np.ndarray:
    raw = gzip.open(folder / name).read()
    count = int.from_bytes(raw[4:8], "big")
    return np.frombuffer(raw, np.uint8, offset=16 if raw[3] == 3 else 8).reshape(count, -1)


@pytest.fixture(scope="module")
def data(fashion_mnist_dir):
    from sklearn.decomposition import PCA

    images = _idx(fashion_mnist_dir, "train-images-idx3-ubyte.gz")[:N].astype(np.float32) / 255
    labels = _idx(fashion_mnist_dir, "train-labels-idx1-ubyte.gz")[:N].ravel()
    queries = _idx(fashion_mnist_dir, "t10k-images-idx3-ubyte.gz")[:200].astype(np.float32) / 255
    pca = PCA(64, svd_solver="randomized", random_state=0).fit(images)

    def unit(x: np.ndarray) -> np.ndarray:
        z = pca.transform(x).astype(np.float32)
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    return {"ids": [f"fm-{i}" for i in range(N)], "vectors": unit(images),
            "attrs": [{"category": CLASSES[c], "price": round(float(im.mean()) * 200, 2)}
                      for c, im in zip(labels, images)],
            "queries": unit(queries)}


@pytest.fixture(scope="module")
def built(data):
    index = create_index("ivf", 64, embedder_id="fm", **PARAMS)
    for lo in range(0, N, 1500):  # batches: trained on the first 2,000, later ones encoded
        index.add(data["ids"][lo: lo + 1500], data["vectors"][lo: lo + 1500],
                  data["attrs"][lo: lo + 1500])
    return index


def brute(data, queries, k, filters=None, keep=None):
    """Top-k ids by numpy over the items passing ``filters.matches`` (and ``keep``)."""
    passing = np.array([filters is None or filters.matches(a) for a in data["attrs"]])
    if keep is not None:
        passing &= keep
    scores = queries @ data["vectors"].T
    scores[:, ~passing] = -np.inf
    order = np.argsort(-scores, axis=1)[:, :k]
    return [[data["ids"][r] for r in row if np.isfinite(scores[q, r])]
            for q, row in enumerate(order)]


def recall(hits, expected) -> float:
    return float(np.mean([len(set(h.ids) & set(e)) / max(1, len(e)) for h, e in zip(hits, expected)]))


def test_trained_on_the_first_batches_and_recall_close_to_exact(data, built):
    assert built.kind == "ivf" and built.trained and len(built) == N
    hits = built.search(data["queries"], 10)
    assert all(len(h) == 10 for h in hits)
    assert recall(hits, brute(data, data["queries"], 10)) >= 0.9
    for hit in hits:  # scores are cosines of the SQ8-decoded vectors: close to the true ones
        row = [int(i[3:]) for i in hit.ids]
        true = data["vectors"][row] @ data["queries"][hits.index(hit)]
        np.testing.assert_allclose(hit.scores, true, atol=0.02)
        assert hit.scores == sorted(hit.scores, reverse=True)


def test_untrained_index_searches_exactly(data):
    index = create_index("ivf", 64, **PARAMS)
    index.add(data["ids"][:500], data["vectors"][:500], data["attrs"][:500])
    assert not index.trained
    hits = index.search(data["queries"][:20], 5)
    small = {**data, "vectors": data["vectors"][:500], "attrs": data["attrs"][:500]}
    assert recall(hits, brute(small, data["queries"][:20], 5)) == 1.0


@pytest.mark.parametrize("filters", [
    Filters.of(category="Sandal"),                       # ~10%: through the cell scan
    Filters(ranges={"price": (None, 40.0)}),            # a wide range
    Filters.of(category="Bag", price_min=60.0),          # few: exact over their SQ8 codes
])
def test_filters_return_only_matches_and_never_lose_results(data, built, filters):
    queries = data["queries"][:50]
    expected = brute(data, queries, 10, filters)
    hits = built.search(queries, 10, filters=filters)
    attrs = dict(zip(data["ids"], data["attrs"]))
    for hit, want in zip(hits, expected):
        assert len(hit) == len(want)  # k hits whenever k items pass
        assert all(filters.matches(attrs[i]) for i in hit.ids)
    assert recall(hits, expected) >= 0.85


def test_remove_upsert_and_compaction(data):
    index = create_index("ivf", 64, **{**PARAMS, "compact_ratio": 0.2})
    index.add(data["ids"][:4000], data["vectors"][:4000], data["attrs"][:4000])
    gone = data["ids"][:600]  # 15%: marked dead, not yet compacted
    assert index.remove(gone + ["nope"]) == 600 and index.table.n_dead == 600
    for hit in index.search(data["vectors"][:100], 10):
        assert not set(hit.ids) & set(gone)
    index.remove(data["ids"][600:1000])  # 25% dead: rebuilt from the stored codes
    assert index.table.n_dead == 0 and index._index.ntotal == len(index) == 3000
    keep = np.zeros(N, dtype=bool)
    keep[1000:4000] = True
    hits = index.search(data["queries"][:50], 10)
    assert recall(hits, brute(data, data["queries"][:50], 10, keep=keep)) >= 0.9
    index.add(["fm-1500"], data["vectors"][5999:6000], [{"category": "Moved"}])  # upsert
    top = index.search(data["vectors"][5999:6000], 1, filters=Filters.of(category="Moved"))[0]
    assert top.ids == ["fm-1500"] and top.scores[0] > 0.98 and len(index) == 3000


def test_save_load_and_keep_adding(data, built, tmp_path):
    built.save(tmp_path / "ivf")
    again = load_index(tmp_path / "ivf", expected_embedder_id="fm", expected_dim=64)
    assert again.kind == "ivf" and again.params == built.params and len(again) == N
    a, b = built.search(data["queries"][:20], 10), again.search(data["queries"][:20], 10)
    assert [h.ids for h in a] == [h.ids for h in b]
    again.add(["extra"], data["queries"][:1], [{"category": "New"}])  # still takes new items
    assert again.search(data["queries"][:1], 1)[0].ids == ["extra"]
    assert again.memory_bytes() < N * 64 * 4 + again.table.nbytes()  # codes, not floats


def test_bad_parameters_are_one_line_errors():
    for params in ({"pq": 7}, {"refine": "PQ8"}, {"coarse": "kd"}, {"nprobe": 0}, {"nlists": 8}):
        with pytest.raises(LookalikeError):
            create_index("ivf", 64, **params)
