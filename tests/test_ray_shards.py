"""Ray writing Parquet vector shards, and the readers: the embedding cache and a Milvus index.

A real local Ray (2 CPUs) for the module; the session's real Milvus server (tests/conftest.py).
The embedder is efficientnet-lite0 at image_size 112 on the first 64 demo products; the
single-process ``Project.index`` is the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lookalike import LookalikeError, ModelMismatchError, Project
from lookalike.api import add_shards
from lookalike.catalogue.sources import demo_parquet
from lookalike.cli import app as cli_app
from lookalike.index.base import Filters, create_index
from lookalike.models.ray_engine import embed_to_shards
from lookalike.models.vector_shards import read_shards, shard_files, shard_ids

SLICE = 64
EMBEDDER = "efficientnet-lite0"
OPTIONS = {"image_size": 112}
RAY = {"num_actors": 2, "batch_size": 16}
TOL = 1e-4


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slice") / "slice.parquet"
    pd.read_parquet(demo_parquet()).head(SLICE).to_parquet(path)
    return path


def _project(folder: Path, manifest: Path) -> Project:
    project = Project(folder)
    assert project.ingest(manifest, progress=False).added == SLICE
    return project


def _by_id(folder: Path) -> dict[str, np.ndarray]:
    return {i: v for rows in read_shards(folder) for i, v in zip(rows.ids, rows.vectors)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, manifest) -> tuple[list[str], np.ndarray]:
    """The single-process path: (sorted ids, their vectors)."""
    project = _project(tmp_path_factory.mktemp("local"), manifest)
    project.index(EMBEDDER, embedder_options=OPTIONS, progress=False)
    loaded = project.searcher(None)
    ids = sorted(loaded.hashes)
    return ids, loaded.vectors_of(ids, project.store)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, manifest, local_ray) -> tuple[Project, Path]:
    """A project indexed with ``engine="ray", shards=...``: the actors wrote the shards."""
    folder = tmp_path_factory.mktemp("ray")
    project = _project(folder / "project", manifest)
    summary = project.index(EMBEDDER, embedder_options=OPTIONS, progress=False, engine="ray",
                            engine_options=RAY, shards=folder / "shards")
    assert (summary.size, summary.failed) == (SLICE, [])
    return project, folder / "shards"


def test_shards_hold_the_single_process_vectors(reference, sharded) -> None:
    ref_ids, ref_vectors = reference
    project, shards = sharded
    assert len(shard_files(shards)) == SLICE // RAY["batch_size"]  # one shard per batch
    assert sorted(shard_ids(shards)) == ref_ids
    vectors = _by_id(shards)
    got = np.stack([vectors[i] for i in ref_ids])
    assert np.sum(got * ref_vectors, axis=1).min() >= 0.999
    rows = next(read_shards(shards))  # keys are the catalogue's content hashes
    assert rows.keys == [project.store.get(i).content_hash for i in rows.ids]
    cache = project.searcher(None).cache  # the index was built from the shards, via the cache
    assert len(cache) == SLICE
    assert not list(cache.folder.glob(".*.tmp"))


def test_rerun_after_removing_a_shard_redoes_only_it(sharded, tmp_path) -> None:
    project, shards = sharded
    copy = tmp_path / "shards"
    copy.mkdir()
    for path in shard_files(shards):
        (copy / path.name).write_bytes(path.read_bytes())
    lost = shard_files(copy)[1]
    lost_ids = _ids_of(lost)
    kept = {p.name: p.stat().st_mtime_ns for p in shard_files(copy) if p != lost}
    lost.unlink()
    images = {item.id: (item.content_hash, item.image_path) for item in project.store.items()}
    model_dir = project.searcher(None).cache.folder / "model"
    assert embed_to_shards(images, model_dir, copy, RAY, progress=False) == {}
    after = {p.name: p for p in shard_files(copy)}
    new = set(after) - set(kept)
    assert {n: after[n].stat().st_mtime_ns for n in kept} == kept  # untouched
    assert len(new) == 1 and _ids_of(after[new.pop()]) == lost_ids
    before = {p.name: p.stat().st_mtime_ns for p in shard_files(copy)}
    assert embed_to_shards(images, model_dir, copy, RAY, progress=False) == {}  # nothing to do
    assert {p.name: p.stat().st_mtime_ns for p in shard_files(copy)} == before
    np.testing.assert_allclose(np.stack([_by_id(copy)[i] for i in sorted(lost_ids)]),
                               np.stack([_by_id(shards)[i] for i in sorted(lost_ids)]), atol=1e-3)

    # An item whose image changed (here: item a now shows item b's photo) is embedded again into
    # a row of its own; `current` hashes pick that row when loading an index.
    a, b = sorted(images)[:2]
    images[a] = images[b]
    assert embed_to_shards(images, model_dir, copy, RAY, progress=False) == {}
    fresh = [p for p in shard_files(copy) if p.name not in before]
    assert len(fresh) == 1 and _ids_of(fresh[0]) == {a}
    vectors = _by_id(copy)
    index = create_index("exact", vectors[b].shape[0], project.searcher(None).embedder.embedder_id)
    current = {i: key for i, (key, _) in images.items()}
    assert add_shards(index, copy, current=current) == SLICE
    np.testing.assert_allclose(index.get_vectors([a])[0], vectors[b], atol=1e-3)


def _ids_of(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_table(path, columns=["id"]).column("id").to_pylist())


def test_shards_into_milvus_search_like_faiss_exact(sharded, milvus) -> None:
    project, shards = sharded
    embedder_id = project.searcher(None).embedder.embedder_id
    dim = next(read_shards(shards)).vectors.shape[1]
    exact = create_index("exact", dim, embedder_id)
    remote = create_index("milvus", dim, embedder_id, uri=milvus.uri, collection="from_shards")

    def attributes(ids: list[str]) -> list[dict]:
        found = project.store.find(ids)
        return [found[i].filter_attributes() for i in ids]

    assert add_shards(exact, shards, attributes) == add_shards(remote, shards, attributes) == SLICE
    assert len(remote) == SLICE
    queries = np.stack(list(_by_id(shards).values()))[::4]
    category = project.store.find([next(iter(shard_ids(shards)))])
    filters = Filters.of(category=next(iter(category.values())).filter_attributes()["category"])
    for where in (None, filters):
        for got, want in zip(remote.search(queries, k=5, filters=where),
                             exact.search(queries, k=5, filters=where)):
            assert len(got) == len(want)
            np.testing.assert_allclose(got.scores, want.scores, atol=TOL)
            sure = {i for i, s in zip(want.ids, want.scores) if s > want.scores[-1] + TOL}
            assert sure <= set(got.ids)  # the same ids, near-ties aside
    wrong = create_index("exact", dim, "another-embedder")
    with pytest.raises(ModelMismatchError, match="not another-embedder"):
        add_shards(wrong, shards)


def test_cli_indexes_milvus_from_shards_without_embedding(sharded, manifest, milvus,
                                                          tmp_path) -> None:
    _, shards = sharded
    project = _project(tmp_path / "p", manifest)
    project.close()
    result = CliRunner().invoke(cli_app, [
        "index", "--embedder", EMBEDDER, "--image-size", "112", "--kind", "milvus", "--uri",
        milvus.uri, "--collection", "cli_shards", "--shards", str(shards),
        "--project", str(tmp_path / "p"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["kind"], summary["size"], summary["failed"]) == ("milvus", SLICE, [])
    cache = next((tmp_path / "p" / "embeddings").glob("*/"))
    assert len(list(cache.glob("chunk-*.keys.npy"))) == 1  # one import, nothing embedded
    reopened = Project(tmp_path / "p", read_only=True)
    first = next(iter(reopened.store.items()))
    hits = reopened.search(first.image_path.read_bytes(), k=1)
    assert hits[0].id == first.id
    reopened.close()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LookalikeError, match="no vector shards"):
        Project(tmp_path / "p").index(EMBEDDER, embedder_options=OPTIONS, progress=False,
                                      shards=empty)
    other = _project(tmp_path / "q", manifest)
    with pytest.raises(ModelMismatchError, match="shard vectors are from embedder"):
        other.index("pixels", progress=False, shards=shards)


def test_shard_writes_are_atomic_and_replace_their_own(tmp_path) -> None:
    """No Ray needed: a half-written shard (a kill -9 mid-write leaves its hidden temporary
    file) is never read; the same ids written again replace their shard; a damaged shard is a
    one-line error."""
    from lookalike import StoreError
    from lookalike.models.vector_shards import write_shard

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 8)).astype(np.float32)
    ids = [f"i{n}" for n in range(5)]
    first = write_shard(tmp_path, ids, [f"k{n}" for n in range(5)], "e", vectors)
    (tmp_path / f".{first.name}.dead.tmp").write_bytes(b"PAR1 cut short")
    again = write_shard(tmp_path, ids, [f"k{n}" for n in range(5)], "e", vectors[::-1])
    assert again == first and shard_files(tmp_path) == [first]
    rows = list(read_shards(tmp_path, "e", 8))
    assert len(rows) == 1 and rows[0].ids == ids
    np.testing.assert_array_equal(rows[0].vectors, vectors[::-1])
    with pytest.raises(ModelMismatchError, match="holds 8-d vectors, not 16-d"):
        list(read_shards(tmp_path, "e", 16))
    first.write_bytes(b"not parquet at all")
    with pytest.raises(StoreError, match="unreadable vector shard"):
        list(read_shards(tmp_path))


def test_a_killed_actor_loses_nothing_and_duplicates_nothing(sharded, reference, tmp_path) -> None:
    """SIGKILL one model actor once the first shard is in: Ray restarts it and retries its
    batch, whose shard (named by its ids) replaces any copy: every id once, right vectors."""
    import signal
    import threading
    import time

    import psutil

    project, _ = sharded
    images = {item.id: (item.content_hash, item.image_path) for item in project.store.items()}
    model_dir = project.searcher(None).cache.folder / "model"
    out = tmp_path / "shards"
    done: dict[str, object] = {}
    runner = threading.Thread(target=lambda: done.update(failed=embed_to_shards(
        images, model_dir, out, {"num_actors": 2, "batch_size": 4}, progress=False)))
    runner.start()
    killed, at, deadline = False, 0, time.monotonic() + 240
    while not killed and runner.is_alive() and time.monotonic() < deadline:
        at = len(shard_files(out))
        if at:
            for proc in psutil.Process().children(recursive=True):
                try:
                    if "MapWorker" in " ".join(proc.cmdline()):
                        proc.send_signal(signal.SIGKILL)
                        killed = True
                        break
                except psutil.Error:  # exited meanwhile
                    continue
        time.sleep(0.02)
    runner.join(timeout=300)
    assert killed and 0 < at < SLICE // 4  # mid-run: some of the 16 shards were in
    assert not runner.is_alive() and done["failed"] == {}
    ids = [i for rows in read_shards(out) for i in rows.ids]
    assert sorted(ids) == reference[0]  # every id, each once
    vectors = _by_id(out)
    got = np.stack([vectors[i] for i in reference[0]])
    assert np.sum(got * reference[1], axis=1).min() >= 0.999
