"""The embedding cache and pipeline, on real product photos from the bundled demo catalogue.

The embedder is the real ``pixels`` baseline (fast), wrapped only to count how many images it is
asked to embed, so incremental and resumed runs can be checked by what they actually compute.
"""

from __future__ import annotations

import hashlib
import io
import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lookalike.errors import ModelMismatchError
from lookalike.models import base
from lookalike.models.baselines import PixelsEmbedder
from lookalike.models.cache import (EmbeddingCache, EmbedMapper, embed_with_cache, read_items,
                                    save_model_once)


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """120 real JPEGs keyed by their sha256 (the catalogue's content hash)."""
    with resources.as_file(resources.files("lookalike") / "data" / "demo.parquet") as path:
        table = pd.read_parquet(path, columns=["id", "image_jpeg"]).sort_values("id").head(120)
    return {hashlib.sha256(blob).hexdigest(): blob for blob in table["image_jpeg"]}


def load(photos: dict[str, bytes]):
    return lambda key: Image.open(io.BytesIO(photos[key])).convert("RGB")


class CountingPixels(PixelsEmbedder):
    """The pixels embedder, counting the images it embeds."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.embedded = 0

    def embed_prepared(self, items):
        self.embedded += len(items)
        return super().embed_prepared(items)


def cache_for(folder, embedder) -> EmbeddingCache:
    return EmbeddingCache(folder / "embeddings" / embedder.embedder_id, embedder.embedder_id,
                          embedder.dim)


def test_put_lookup_round_trip_and_missing_keys(tmp_path, photos):
    embedder = PixelsEmbedder(size=16)
    keys = list(photos)[:10]
    vectors = embedder.embed([load(photos)(k) for k in keys])
    cache = cache_for(tmp_path, embedder)
    cache.put(keys[:6], vectors[:6])
    cache.put(keys[6:], vectors[6:])
    got, found = cache.lookup(keys[::-1] + ["0" * 64])
    assert found.tolist() == [True] * 10 + [False]
    np.testing.assert_array_equal(got[:10], vectors[::-1])
    assert not got[10].any()
    assert len(cache) == 10 and keys[3] in cache and "f" * 64 not in cache


def test_reopen_is_memory_mapped_and_newest_duplicate_wins_then_compact(tmp_path, photos):
    embedder = PixelsEmbedder(size=16)
    keys = list(photos)[:8]
    vectors = embedder.embed([load(photos)(k) for k in keys])
    cache = cache_for(tmp_path, embedder)
    cache.put(keys, vectors)
    newer = vectors[:2][::-1].copy()  # different rows for the first two keys
    cache.put(keys[:2], newer)

    reopened = cache_for(tmp_path, embedder)
    assert all(isinstance(v, np.memmap) for v in reopened._vectors)
    got, found = reopened.lookup(keys)
    assert found.all() and len(reopened) == 8
    np.testing.assert_array_equal(got[:2], newer)
    np.testing.assert_array_equal(got[2:], vectors[2:])

    # A crash between writing a chunk's vectors and committing its keys leaves an orphan file.
    orphan = reopened.folder / "chunk-000099-abcdef.npy"
    np.save(orphan, np.ones((3, embedder.dim), dtype=np.float32))
    assert len(cache_for(tmp_path, embedder)) == 8  # ignored
    reopened.compact()
    chunks = sorted(p.name for p in reopened.folder.glob("chunk-*.npy"))
    assert len(chunks) == 2 and not orphan.exists()  # one vectors file + its keys file
    got, found = cache_for(tmp_path, embedder).lookup(keys)
    assert found.all()
    np.testing.assert_array_equal(got[:2], newer)
    np.testing.assert_array_equal(got[2:], vectors[2:])


def test_dim_or_embedder_mismatch_is_refused(tmp_path, photos):
    embedder = PixelsEmbedder(size=16)
    cache = cache_for(tmp_path, embedder)
    cache.put(list(photos)[:2], embedder.embed([load(photos)(k) for k in list(photos)[:2]]))
    with pytest.raises(ModelMismatchError, match="768-d"):
        EmbeddingCache(cache.folder, embedder.embedder_id, 99)
    with pytest.raises(ModelMismatchError):
        cache.put(["a"], np.zeros((1, 5), dtype=np.float32))
    other = PixelsEmbedder(size=8)
    with pytest.raises(ModelMismatchError):
        embed_with_cache(other, list(photos)[:2], load(photos), cache, progress=False)


def test_incremental_run_embeds_only_new_keys(tmp_path, photos):
    embedder = CountingPixels(size=16)
    cache = cache_for(tmp_path, embedder)
    keys = list(photos)[:60]
    first = embed_with_cache(embedder, keys[:40], load(photos), cache, batch_size=16,
                             chunk_size=16, progress=False)
    assert embedder.embedded == 40
    again = embed_with_cache(embedder, keys[:40], load(photos), cache, progress=False)
    assert embedder.embedded == 40  # nothing new
    np.testing.assert_array_equal(again, first)
    both = embed_with_cache(embedder, keys + keys[:5], load(photos), cache, batch_size=16,
                            progress=False)
    assert embedder.embedded == 60  # only the 20 new keys
    assert both.shape == (65, embedder.dim) and both.dtype == np.float32
    np.testing.assert_array_equal(both[:40], first)
    np.testing.assert_array_equal(both[60:], first[:5])  # duplicated keys, in key order
    expected = PixelsEmbedder(size=16).embed([load(photos)(k) for k in keys])
    np.testing.assert_allclose(both[:60], expected, atol=1e-6)


def test_interrupted_run_resumes_from_its_finished_chunks(tmp_path, photos):
    keys = list(photos)[:100]
    loader = load(photos)
    seen: list[str] = []

    def crashing_loader(key: str) -> Image.Image:
        if len(seen) >= 70:
            raise KeyboardInterrupt("power cut")  # not an image error: it must stop the run
        seen.append(key)
        return loader(key)

    embedder = CountingPixels(size=16)
    cache = cache_for(tmp_path, embedder)
    with pytest.raises(KeyboardInterrupt):
        embed_with_cache(embedder, keys, crashing_loader, cache, batch_size=10, chunk_size=20,
                         progress=False, workers=1)
    kept = len(cache_for(tmp_path, embedder))
    assert 20 <= kept <= 70  # whole chunks written before the crash survive
    resumed = CountingPixels(size=16)
    vectors = embed_with_cache(resumed, keys, loader, cache_for(tmp_path, resumed),
                               batch_size=10, progress=False)
    assert resumed.embedded == 100 - kept
    np.testing.assert_allclose(vectors, PixelsEmbedder(size=16).embed([loader(k) for k in keys]),
                               atol=1e-6)


def test_bad_images_are_reported_not_cached(tmp_path, photos):
    keys = list(photos)[:12]
    broken = dict(photos)
    broken[keys[4]] = photos[keys[4]][:200]  # a truncated JPEG
    broken[keys[7]] = b"not an image at all"
    embedder = CountingPixels(size=16)
    cache = cache_for(tmp_path, embedder)
    errors: dict[str, Exception] = {}
    vectors = embed_with_cache(embedder, keys, load(broken), cache, progress=False,
                               on_error=lambda key, error: errors.__setitem__(key, error))
    assert set(errors) == {keys[4], keys[7]}
    assert not vectors[4].any() and not vectors[7].any()
    assert np.allclose(np.linalg.norm(np.delete(vectors, [4, 7], axis=0), axis=1), 1.0)
    assert len(cache) == 10 and keys[4] not in cache
    with pytest.raises(OSError):  # without on_error the failure is raised
        embed_with_cache(embedder, keys, load(broken), cache, progress=False)


def test_save_model_once_keeps_the_model_beside_its_vectors(tmp_path, photos):
    embedder = PixelsEmbedder(size=16, colour="grey")
    folder = cache_for(tmp_path, embedder).folder / "model"
    save_model_once(embedder, folder)
    stamp = (folder / "config.json").stat().st_mtime_ns
    save_model_once(embedder, folder)  # already there: untouched
    assert (folder / "config.json").stat().st_mtime_ns == stamp
    assert json.loads((folder / "config.json").read_text())["embedder_id"] == embedder.embedder_id
    assert base.load(folder).embedder_id == embedder.embedder_id
    with pytest.raises(ModelMismatchError):
        save_model_once(PixelsEmbedder(size=8), folder)


def test_pipeline_pieces_work_on_their_own(photos):
    embedder = PixelsEmbedder(size=16)
    keys = list(photos)[:9]
    read = list(read_items(keys, load(photos), embedder.prepare, workers=3, prefetch=4))
    assert [k for k, _ in read] == keys  # order kept despite the thread pool
    out = EmbedMapper(embedder)({"key": keys, "item": [item for _, item in read]})
    assert out["key"] == keys and out["vector"].shape == (9, embedder.dim)
