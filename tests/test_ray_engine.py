"""The Ray Data engine against the single-process path, on a real local Ray.

One local Ray (2 CPUs) is started for the module and shut down at the end. The embedder is the
default efficientnet-lite0 at image_size 112 (ONNX int8), on a 200-product slice of the demo
catalogue with one stored image damaged after ingest.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lookalike import Project
from lookalike.catalogue.images import decode_image
from lookalike.catalogue.sources import demo_parquet
from lookalike.errors import ImageRejected, LookalikeError
from lookalike.models.cache import EmbeddingCache
from lookalike.models.ray_engine import RayOptions, embed_manifest, embed_missing

SLICE = 200
EMBEDDER = "efficientnet-lite0"
OPTIONS = {"image_size": 112}
BAD_ID_ROW = 17  # the slice row whose stored image is truncated after ingest


@pytest.fixture(scope="module")
def slice_manifest(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slice")
    frame = pd.read_parquet(demo_parquet()).head(SLICE)
    frame.to_parquet(folder / "slice.parquet")
    return folder / "slice.parquet"


def _project(folder: Path, manifest: Path) -> tuple[Project, str]:
    """A project of the slice whose row BAD_ID_ROW has its stored image cut short."""
    project = Project(folder)
    report = project.ingest(manifest, progress=False)
    assert not report.rejected
    bad_id = str(pd.read_parquet(manifest, columns=["id"])["id"].iloc[BAD_ID_ROW])
    path = Path(project.store.get(bad_id).image_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return project, bad_id


def _vectors(project: Project) -> tuple[list[str], np.ndarray]:
    loaded = project.searcher(None)
    ids = sorted(loaded.hashes)
    return ids, loaded.vectors_of(ids, project.store)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, slice_manifest):
    """The single-process result: (ids, vectors, summary, bad id)."""
    project, bad_id = _project(tmp_path_factory.mktemp("local"), slice_manifest)
    summary = project.index(EMBEDDER, embedder_options=OPTIONS, progress=False)
    ids, vectors = _vectors(project)
    return ids, vectors, summary, bad_id


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, slice_manifest, local_ray):
    project, bad_id = _project(tmp_path_factory.mktemp("ray"), slice_manifest)
    summary = project.index(EMBEDDER, embedder_options=OPTIONS, progress=False, engine="ray",
                            engine_options={"num_actors": 2, "batch_size": 16})
    ids, vectors = _vectors(project)
    return project, ids, vectors, summary, bad_id


def test_ray_gives_the_single_process_vectors(reference, ray_run):
    ref_ids, ref_vectors, ref_summary, _ = reference
    project, ids, vectors, summary, _ = ray_run
    assert ids == ref_ids and len(ids) == SLICE - 1
    cosine = np.sum(ref_vectors * vectors, axis=1)
    assert cosine.min() >= 0.999
    assert (summary.added, summary.size) == (ref_summary.added, ref_summary.size)
    cache = project.searcher(None).cache
    assert len(cache) == SLICE - 1  # the Ray run filled the cache: nothing embedded twice


def test_bad_image_is_rejected_as_in_the_core_path(reference, ray_run, local_ray):
    _, _, ref_summary, ref_bad = reference
    project, ids, _, summary, bad_id = ray_run
    assert summary.failed == ref_summary.failed == [bad_id] == [ref_bad]
    assert bad_id not in ids
    with pytest.raises(ImageRejected) as rejected:
        decode_image(project.store.get(bad_id).image_path)
    assert rejected.value.reason == "truncated"
    assert project.store.get(bad_id).content_hash not in project.searcher(None).cache
    assert bad_id in project.store  # still catalogued, just not indexed


def test_a_complete_cache_needs_no_ray_run(ray_run):
    """Resume at its simplest: every key is cached, so nothing is embedded (no chunk is added)."""
    project = ray_run[0]
    cache = project.searcher(None).cache
    items = {i.content_hash: i.image_path for i in project.store.items()
             if i.content_hash in cache}
    chunks = sorted(cache.folder.glob("chunk-*.npy"))
    assert len(items) == SLICE - 1
    assert embed_missing(cache, cache.folder / "model", items, progress=False) == {}
    assert sorted(cache.folder.glob("chunk-*.npy")) == chunks


def test_manifest_shards_through_ray(tmp_path, slice_manifest, ray_run, local_ray):
    """A plain manifest (Parquet shards with inline bytes) keys rows like the catalogue does,
    rejects what it rejects, and embeds only rows whose content is not cached yet."""
    project = ray_run[0]
    frame = pd.read_parquet(slice_manifest).head(40)[["id", "image_jpeg"]]
    frame.loc[5, "image_jpeg"] = b"this is not an image"
    shards = tmp_path / "shards"
    shards.mkdir()
    frame.iloc[:20].to_parquet(shards / "part-0.parquet")
    frame.iloc[20:].to_parquet(shards / "part-1.parquet")
    bad = str(frame.loc[5, "id"])
    good = {i: project.store.get(i).content_hash for i in map(str, frame["id"]) if i != bad}
    theirs = project.searcher(None).cache
    cache_dir = tmp_path / "cache"
    mine = EmbeddingCache(cache_dir, theirs.embedder_id, theirs.dim)
    keys = sorted(good.values())
    ours, found = theirs.lookup(keys)  # all but the slice's damaged image (BAD_ID_ROW < 40)
    assert found.sum() == len(keys) - 1
    seeded = [k for k, hit in zip(keys, found) if hit][:10]  # as if a killed run had done these
    mine.put(seeded, theirs.lookup(seeded)[0])
    result = embed_manifest(shards, theirs.folder / "model", cache_dir, {"batch_size": 8},
                            image_column="image_jpeg", progress=False)
    rejected = Project(tmp_path / "p").ingest(shards / "part-0.parquet", progress=False).rejected
    assert [r.item_id for r in rejected] == [bad]  # the catalogue rejects the row ...
    assert list(result.failed) == [bad]  # ... and so does the engine, for the same reason
    assert result.failed[bad].startswith(f"{rejected[0].reason}: ")
    assert result.hashes == good and result.embedded == len(good) - len(seeded)
    assert _committed_rows(cache_dir) == len(good)  # nothing embedded twice
    assert np.sum(mine.lookup(keys)[0][found] * ours[found], axis=1).min() >= 0.999


def _committed_rows(folder: Path) -> int:
    return sum(len(np.load(p)) for p in folder.glob("chunk-*.keys.npy"))


def _kill_an_actor_after_a_chunk(cache_dir: Path, rows_before: int,
                                 runner: threading.Thread) -> bool:
    """SIGKILL one Ray Data model actor (a process of this test's local Ray) once the run has
    committed a chunk and while it is still running; whether that happened."""
    import psutil

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and runner.is_alive():
        if _committed_rows(cache_dir) > rows_before:
            actors = []
            for proc in psutil.Process().children(recursive=True):
                try:
                    if "MapWorker" in " ".join(proc.cmdline()):
                        actors.append(proc)
                except psutil.Error:  # exited meanwhile
                    continue
            if actors and runner.is_alive() and _committed_rows(cache_dir) < SLICE - 1:
                actors[0].send_signal(signal.SIGKILL)
                return True
        time.sleep(0.05)
    return False


def test_killed_driver_or_actor_loses_nothing_and_rerun_embeds_only_the_rest(tmp_path, slice_manifest,
                                                                     reference, local_ray):
    project, bad_id = _project(tmp_path / "p", slice_manifest)
    address = local_ray.get_runtime_context().gcs_address
    script = ("import sys; from lookalike import Project; "
              "Project(sys.argv[1]).index('efficientnet-lite0', embedder_options={'image_size': "
              "112}, progress=False, engine='ray', engine_options={'address': sys.argv[2], "
              "'num_actors': 1, 'batch_size': 8, 'chunk_size': 8})")
    driver = subprocess.Popen([sys.executable, "-c", script, str(project.path), address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    embeddings = project.path / "embeddings"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            if any(embeddings.glob("*/chunk-*.keys.npy")):
                break
            time.sleep(0.05)
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
        driver.stderr.close()
    cache_dir = next(embeddings.glob("*/"))
    before = _committed_rows(cache_dir)
    assert 0 < before < SLICE - 1  # the kill came mid-run, after the first chunk
    # The rerun loses one of its model actors (SIGKILL) after its first chunk: Ray restarts the
    # actor and retries its batch; nothing the driver wrote is lost or written twice.
    done: dict[str, object] = {}

    def rerun() -> None:
        done["summary"] = project.index(EMBEDDER, embedder_options=OPTIONS, progress=False,
                                        engine="ray", engine_options={
                                            "num_actors": 2, "batch_size": 8, "chunk_size": 8})

    runner = threading.Thread(target=rerun)
    runner.start()
    killed = _kill_an_actor_after_a_chunk(cache_dir, before, runner)
    runner.join(timeout=300)
    assert killed and not runner.is_alive()
    summary = done["summary"]
    assert summary.failed == [bad_id] and summary.size == SLICE - 1
    # Each image was embedded exactly once over the two runs: the rerun did only the rest.
    assert _committed_rows(cache_dir) == SLICE - 1
    ids, vectors = _vectors(project)
    ref_ids, ref_vectors = reference[0], reference[1]
    assert ids == ref_ids
    assert np.sum(ref_vectors * vectors, axis=1).min() >= 0.999


def test_bad_engine_options_are_one_line_errors():
    with pytest.raises(LookalikeError, match="unknown ray engine option"):
        RayOptions.of({"adress": "x"})
    with pytest.raises(LookalikeError, match="num_actors must be at least 1"):
        RayOptions.of({"num_actors": 0})
