"""Binary codes and the ``binary`` index: packing, Hamming distances, search = brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hits_compare import assert_same_hits, assert_same_ranking

from lookalike.errors import LookalikeError
from lookalike.index.base import Filters, create_index, load_index
from lookalike.index.binary_backend import BinaryIndex
from lookalike.models import base
from lookalike.models.datasets import (
    ImageTensors,
    array_images,
    fashion_mnist_tensors,
    jpeg_images,
)
from lookalike.models.hashing import (
    CNNHashEmbedder,
    HyperplaneCoder,
    LSHEmbedder,
    hamming_distances,
    pack_bits,
    unpack_bits,
)


@pytest.fixture(scope="module")
def products(products_parquet: Path) -> dict:
    """1,500 train + 40 test products: raw-pixel unit vectors and their real attributes."""
    from lookalike.catalogue.sources import load_products_frame

    frame = load_products_frame(products_parquet)
    gallery = frame[frame["split"] == "train"].sample(n=1500, random_state=0)
    queries = frame[frame["split"] == "test"].sample(n=40, random_state=0)
    embedder = base.create("pixels", size=16)

    def part(rows):  # noqa: ANN001, ANN202
        return {"ids": rows["id"].astype(str).tolist(),
                "vectors": embedder.embed(jpeg_images(rows["image_jpeg"])),
                "attributes": [{"category": r.article_type, "gender": r.gender,
                                "colour": r.base_colour} for r in rows.itertuples()]}

    return {"gallery": part(gallery), "queries": part(queries)}


def _index(products: dict, **params) -> BinaryIndex:  # noqa: ANN003
    g = products["gallery"]
    index = create_index("binary", g["vectors"].shape[1], "pixels-test", **params)
    index.add(g["ids"], g["vectors"], g["attributes"])
    return index


def reference_hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The brief's reference: np.unpackbits + xor + sum (loops, no broadcasting tricks)."""
    out = np.zeros((len(a), len(b)), dtype=np.int64)
    for i, code in enumerate(a):
        out[i] = np.unpackbits(np.bitwise_xor(code[None, :], b), axis=1).sum(axis=1)
    return out


# ---- codes -------------------------------------------------------------------------------------
def test_pack_unpack_roundtrip_and_shapes(products: dict) -> None:
    coder = HyperplaneCoder.random(768, 64, seed=1)
    bits = coder.bit_matrix(products["gallery"]["vectors"])
    codes = pack_bits(bits)
    assert codes.shape == (1500, 8) and codes.dtype == np.uint8
    np.testing.assert_array_equal(unpack_bits(codes, 64).astype(bool), bits)
    np.testing.assert_array_equal(coder.codes(products["gallery"]["vectors"]), codes)
    assert 0.2 < bits.mean() < 0.8  # random planes through the origin split real data


def test_hamming_distances_equal_numpy_and_faiss(products: dict) -> None:
    coder = HyperplaneCoder.random(768, 128, seed=2)
    gallery = coder.codes(products["gallery"]["vectors"])
    queries = coder.codes(products["queries"]["vectors"])
    expected = reference_hamming(queries, gallery)
    np.testing.assert_array_equal(hamming_distances(queries, gallery), expected)
    # python popcount on one pair as an independent check of the reference itself
    a, b = queries[0], gallery[0]
    assert expected[0, 0] == sum(bin(x ^ y).count("1") for x, y in zip(a.tolist(), b.tolist()))

    index = BinaryIndex(768, coder=coder)
    index.add(products["gallery"]["ids"], products["gallery"]["vectors"])
    distances, labels = index.hamming_search(queries, depth=1500)
    for q in range(len(queries)):
        np.testing.assert_array_equal(distances[q], expected[q][labels[q]])
        np.testing.assert_array_equal(distances[q], np.sort(expected[q]))


def test_lsh_disagreement_tracks_the_angle(products: dict) -> None:
    vectors = products["gallery"]["vectors"][:200]
    coder = HyperplaneCoder.random(768, 2048, seed=3)
    codes = coder.codes(vectors)
    angle = np.arccos(np.clip(vectors[:100] @ vectors[100:].T, -1, 1)) / np.pi
    disagreement = hamming_distances(codes[:100], codes[100:]) / 2048
    assert np.abs(disagreement - angle).mean() < 0.02  # Charikar: P[bit differs] = angle / pi


def test_lsh_is_seeded() -> None:
    a = HyperplaneCoder.random(32, 16, seed=4)
    np.testing.assert_array_equal(a.planes, HyperplaneCoder.random(32, 16, seed=4).planes)
    assert not np.array_equal(a.planes, HyperplaneCoder.random(32, 16, seed=5).planes)
    with pytest.raises(LookalikeError, match="multiple of 8"):
        HyperplaneCoder.random(32, 12)


# ---- the binary index ---------------------------------------------------------------------------
def test_search_equals_brute_force_hamming_then_rerank(products: dict) -> None:
    k, depth = 10, 50
    index = _index(products, bits=64, candidates=depth)
    gallery = products["gallery"]
    queries = products["queries"]["vectors"]
    codes = index.coder.codes(gallery["vectors"])
    hamming = reference_hamming(index.coder.codes(queries), codes)
    hits = index.search(queries, k)
    _, candidates = index.hamming_search(index.coder.codes(queries), depth)
    position = {item: row for row, item in enumerate(gallery["ids"])}
    for q, result in enumerate(hits):
        # FAISS's candidates are exactly the `depth` smallest Hamming distances (ties aside) ...
        np.testing.assert_array_equal(np.sort(hamming[q][candidates[q]]),
                                      np.sort(hamming[q])[:depth])
        # ... and the answer is those candidates re-ranked by Euclidean distance (eq. 8)
        pool = candidates[q]
        euclid = np.linalg.norm(gallery["vectors"][pool] - queries[q], axis=1)
        order = np.argsort(euclid, kind="stable")[:k]
        expected = [gallery["ids"][r] for r in pool[order]]
        # near-ties may swap between SIMD kernels
        assert_same_ranking(result.ids, result.scores, expected,
                            gallery["vectors"][pool[order]] @ queries[q])
        rows = [position[i] for i in result.ids]
        np.testing.assert_allclose(result.scores, gallery["vectors"][rows] @ queries[q], atol=1e-5)
        assert max(hamming[q][rows]) <= np.sort(hamming[q])[depth - 1]


def test_without_rerank_the_order_is_hamming(products: dict) -> None:
    index = _index(products, bits=32, rerank=False)
    queries = products["queries"]["vectors"]
    hamming = reference_hamming(index.coder.codes(queries),
                                index.coder.codes(products["gallery"]["vectors"]))
    position = {item: row for row, item in enumerate(products["gallery"]["ids"])}
    for q, result in enumerate(index.search(queries, 15)):
        got = hamming[q][[position[i] for i in result.ids]]
        np.testing.assert_array_equal(got, np.sort(hamming[q])[:15])
        np.testing.assert_allclose(result.scores, 1 - 2 * got / 32)


def test_all_candidates_equals_exact_search(products: dict) -> None:
    binary = _index(products, candidates=5000)
    exact = create_index("exact", 768)
    g = products["gallery"]
    exact.add(g["ids"], g["vectors"], g["attributes"])
    queries = products["queries"]["vectors"]
    for a, b in zip(binary.search(queries, 10), exact.search(queries, 10)):
        assert_same_hits(a, b)  # near-ties may order differently on another SIMD kernel


def test_filters_and_exclude_inside_the_search(products: dict) -> None:
    index = _index(products, candidates=20)
    g = products["gallery"]
    queries = products["queries"]["vectors"][:10]
    common = max(set(a["category"] for a in g["attributes"]),
                 key=lambda c: sum(a["category"] == c for a in g["attributes"]))
    rare = Filters.of(category=common, gender="Women")
    passing = [i for i, a in zip(g["ids"], g["attributes"]) if rare.matches(a)]
    assert 0 < len(passing)
    for filters in (Filters.of(category=common), rare, Filters.of(colour=("Red", "Pink"))):
        allowed = {i for i, a in zip(g["ids"], g["attributes"]) if filters.matches(a)}
        for hits in index.search(queries, 25, filters=filters):
            assert set(hits.ids) <= allowed
            assert len(hits) == min(25, len(allowed))  # never lost to the candidate budget
    first = index.search(queries[:1], 5)[0]
    again = index.search(queries[:1], 5, exclude=[first.ids[:2]])[0]
    assert not set(first.ids[:2]) & set(again.ids) and len(again) == 5
    assert again.ids[:3] == first.ids[2:5]
    none = Filters.of(category="no such category")
    assert all(len(h) == 0 for h in index.search(queries, 5, filters=none))


def test_remove_upsert_and_compaction(products: dict) -> None:
    index = _index(products, candidates=5000)
    g = products["gallery"]
    gone = g["ids"][:500]
    assert index.remove(gone) == 500
    assert index.table.n_dead == 0  # a third dead: compacted
    kept = create_index("exact", 768)
    kept.add(g["ids"][500:], g["vectors"][500:])
    queries = products["queries"]["vectors"]
    for a, b in zip(index.search(queries, 10), kept.search(queries, 10)):
        assert_same_hits(a, b)
        assert not set(a.ids) & set(gone)
    # upsert: an id added again takes its new vector
    target = g["ids"][700]
    index.add([target], queries[:1])
    assert index.search(queries[:1], 1)[0].ids == [target]
    assert len(index) == 1000


def test_save_load_mmap_and_memory(products: dict, tmp_path: Path) -> None:
    index = _index(products, bits=64, candidates=30)
    queries = products["queries"]["vectors"]
    before = index.search(queries, 10, filters=Filters.of(gender="Men"))
    index.save(tmp_path / "binary")
    for mmap in (False, True):
        loaded = load_index(tmp_path / "binary", mmap=mmap)
        assert isinstance(loaded, BinaryIndex) and len(loaded) == 1500
        np.testing.assert_array_equal(loaded.coder.planes, index.coder.planes)
        after = loaded.search(queries, 10, filters=Filters.of(gender="Men"))
        assert [h.ids for h in after] == [h.ids for h in before]
    mapped = load_index(tmp_path / "binary", mmap=True)
    in_ram = load_index(tmp_path / "binary")
    codes_only = _index(products, bits=64, rerank=False, store_vectors=False)
    assert mapped.memory_bytes() < in_ram.memory_bytes() - 1500 * 768 * 4 + 1
    assert codes_only.memory_bytes() < in_ram.memory_bytes()
    mapped.add(["new"], -queries[:1])  # writing to a mapped index copies it first
    hits = mapped.search(-queries[:1], 1)[0]
    assert hits.ids == ["new"] and hits.scores[0] == pytest.approx(1.0, abs=1e-5)
    assert in_ram.search(queries, 10, filters=Filters.of(gender="Men"))[0].ids == before[0].ids


def test_bad_parameters_are_clear_errors() -> None:
    with pytest.raises(LookalikeError, match="needs store_vectors"):
        create_index("binary", 8, store_vectors=False)
    with pytest.raises(LookalikeError, match="unknown parameter"):
        create_index("binary", 8, bitz=64)
    with pytest.raises(LookalikeError, match="hashes 16-d"):
        create_index("binary", 8, coder=HyperplaneCoder.random(16, 8))


# ---- learned codes -------------------------------------------------------------------------------
def test_cnn_hash_codes_agree_with_its_coder_and_survive_saving(tmp_path: Path) -> None:
    train = fashion_mnist_tensors("train", limit=1500, seed=4)
    test = fashion_mnist_tensors("test", limit=300, seed=5)
    embedder = CNNHashEmbedder(bits=32, image_size=(28, 28), channels=1,
                               conv_channels=(16, 32), hidden=64, embedding_dim=32)
    embedder.fit_tensors(train, epochs=2, batch_size=64, patience=0, progress=False)
    assert embedder.training_result.history[-1]["val_accuracy"] > 0.5
    codes = embedder.codes_tensors(test.images)
    assert codes.shape == (300, 4) and codes.dtype == np.uint8
    via_vectors = embedder.coder().codes(embedder.embed_tensors(test.images))
    assert (unpack_bits(codes) != unpack_bits(via_vectors)).mean() < 1e-3
    on_rate = unpack_bits(codes).mean(axis=0)
    assert 0.2 < on_rate.mean() < 0.8 and (on_rate > 0.02).sum() >= 24  # bits are used
    np.testing.assert_array_equal(embedder.codes(array_images(test.images[:20, 0].numpy())),
                                  codes[:20])

    loaded = base.load(embedder.save(tmp_path / "hash"))
    assert isinstance(loaded, CNNHashEmbedder) and loaded.bits == 32
    np.testing.assert_array_equal(loaded.codes_tensors(test.images), codes)

    # the index holds the same codes the embedder makes; codes group same-class items
    index = create_index("binary", embedder.dim, embedder.embedder_id, coder=embedder.coder(),
                         rerank=False)
    index.add([str(i) for i in range(300)], embedder.embed_tensors(test.images))
    assert (unpack_bits(index.code_array()) != unpack_bits(codes)).mean() < 1e-3
    labels = test.labels.numpy()
    hits = index.search(embedder.embed_tensors(test.images[:50]), 6)
    same = [np.mean([labels[int(i)] == labels[q] for i in h.ids[1:]]) for q, h in enumerate(hits)]
    assert np.mean(same) > 0.4  # chance is 0.1


def test_lsh_embedder_roundtrip(products: dict, tmp_path: Path) -> None:
    lsh = base.create("lsh", base="pixels", base_config={"size": 16}, bits=64, seed=7)
    assert isinstance(lsh, LSHEmbedder) and lsh.dim == 768
    images = array_images(np.full((3, 20, 20, 3), 200, dtype=np.uint8))
    codes = lsh.codes(images)
    loaded = base.load(lsh.save(tmp_path / "lsh"))
    assert loaded.embedder_id == lsh.embedder_id
    np.testing.assert_array_equal(loaded.codes(images), codes)
    np.testing.assert_array_equal(codes, lsh.coder().codes(lsh.embed(images)))


def test_hash_layer_can_start_from_a_trained_cnn() -> None:
    from lookalike.models.cnn import CNNEmbedder

    train = fashion_mnist_tensors("train", limit=800, seed=6)
    small = {"image_size": (28, 28), "channels": 1, "conv_channels": (8, 16), "hidden": 32,
             "embedding_dim": 16}
    cnn = CNNEmbedder(**small).fit_tensors(train, epochs=1, batch_size=64, progress=False)
    hashed = CNNHashEmbedder.from_cnn(cnn, bits=16)
    start = hashed.build_module().backbone.state_dict()
    for name, value in cnn.module.state_dict().items():
        assert np.array_equal(start[name].numpy(), value.numpy()), name
    assert hashed.classes == cnn.classes and hashed.mean == cnn.mean
    hashed.fit_tensors(train, epochs=1, batch_size=64, progress=False)
    assert hashed.codes_tensors(train.images[:10]).shape == (10, 2)
    renamed = ImageTensors(train.images, train.labels, tuple(f"class {i}" for i in range(10)))
    with pytest.raises(LookalikeError, match="classes differ"):
        CNNHashEmbedder.from_cnn(cnn, 16).fit_tensors(renamed, epochs=1, progress=False)
