"""Embedding with Ray Data: the cache's reader -> mapper -> writer as a distributed pipeline.

The single-process path (:func:`lookalike.models.embed_pipeline.embed_with_cache`) decodes in a thread
pool and runs one model. This engine runs the same pieces on a Ray cluster -- a local one it
starts itself, or an existing one (``address``)::

    rows (key, image)  --Ray Data-->  map_batches(EmbedBatches, ActorPoolStrategy(N))
                                       |  per actor: the model loaded once from the saved
                                       |  embedder folder; per batch: read_items (the
                                       |  catalogue's safe decode + the model's prepare)
                                       |  then EmbedMapper
    driver: iter_batches  -->  ChunkWriter  -->  EmbeddingCache (atomic chunks by content hash)

Vectors land in the same cache as the single-process path, a chunk at a time as they arrive,
so a killed driver or worker loses at most the chunk in flight and a re-run embeds only what is
missing. Images that fail to decode are reported per key with the catalogue's own rejection
message (and are never cached, so the core path rejects them again the same way).

Entry points:

* :func:`embed_missing` -- what ``Project.index(engine="ray")`` calls: the catalogue store's
  missing content hashes with their stored image files.
* :func:`embed_to_shards` -- ``Project.index(engine="ray", shards=DIR)``: each actor writes its
  batch as one Parquet vector shard (:mod:`lookalike.models.vector_shards`) instead of sending
  the vectors to the driver; a rerun embeds only the ids no shard holds.
* :func:`embed_manifest` -- a plain function over manifest shards (Parquet with inline image
  bytes or paths, or CSV with paths) read with ``ray.data.read_parquet`` / ``read_csv``; the
  content hash is computed as the catalogue computes it.

On a cluster every node needs lookalike installed and the project folder (images, the saved
model, the cache) on a shared filesystem. Ray is imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.catalogue.images import decode, decode_image, sha256_hex, storable_bytes
from lookalike.errors import LookalikeError
from lookalike.models.embed_pipeline import ChunkWriter, ItemFailed, ProgressBar, read_items
from lookalike.models.embedding_cache import EmbeddingCache

#: Environment a local Ray needs to stay quiet and offline (set before ``ray.init``).
QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
#: Object store of a Ray this module starts: small, the vectors stream through it.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


@dataclass
class RayOptions:
    """How to run: ``address`` of a cluster (None: start a local Ray with ``num_cpus``),
    ``num_actors`` model replicas (default: one per ``cpus_per_actor`` CPUs of the cluster;
    for manifests one fewer, leaving a CPU to the read tasks -- set it below the CPU count),
    rows per model call (``batch_size``, default the embedder's) and rows per cache chunk."""

    address: str | None = None
    num_actors: int | None = None
    num_cpus: int | None = None
    cpus_per_actor: int = 1
    batch_size: int | None = None
    chunk_size: int = 2048

    @classmethod
    def of(cls, options: Mapping[str, Any] | None) -> "RayOptions":
        """Options from a plain mapping; an unknown or bad option is a one-line error."""
        options = dict(options or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise LookalikeError(f"unknown ray engine option(s) {', '.join(unknown)}; "
                                 f"use {', '.join(sorted(known))}")
        made = cls(**options)
        for name in ("num_actors", "num_cpus", "batch_size"):
            value = getattr(made, name)
            if value is not None and int(value) < 1:
                raise LookalikeError(f"ray engine option {name} must be at least 1, not {value}")
        if made.cpus_per_actor < 1 or made.chunk_size < 1:
            raise LookalikeError("ray engine options cpus_per_actor and chunk_size must be >= 1")
        return made


@dataclass
class ManifestResult:
    """What :func:`embed_manifest` did: id -> content hash of every good row, how many rows were
    embedded now (the rest were cached), and the rejected rows (id -> message)."""

    hashes: dict[str, str] = field(default_factory=dict)
    embedded: int = 0
    failed: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[Any]:
    """The ``ray`` module, connected: to ``options.address``, to the Ray this process already
    joined, or to a local Ray started here (no dashboard, no usage stats) and shut down after."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    try:
        import ray
        import ray.data  # noqa: F401 - fails here, clearly, without the ray[data] extra
    except ImportError as error:
        raise LookalikeError(f"the ray engine needs Ray Data: pip install 'ray[data]' "
                             f"({error})") from None
    for name in ("ray", "ray.data"):  # Ray Data logs every execution at INFO
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        yield ray
        return
    if options.address:
        ray.init(address=options.address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ray.init(num_cpus=options.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level=logging.ERROR,
                 log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


class EmbedBatches:
    """The ``map_batches`` callable: one per actor, holding the model it loaded once.

    A batch has ``image`` (a file path or image bytes) and ``key`` (the content hash, catalogue
    rows) and/or ``id`` (manifest rows without ``key``, whose hash is computed here like the
    catalogue does). The result has ``key``, ``vector`` (unit rows, zeros where not embedded),
    ``status`` (``embedded``, ``cached`` or ``failed``), ``error`` and ``id`` if given. With
    ``shards_dir`` the embedded rows are written there as one vector shard
    (:mod:`lookalike.models.vector_shards`) and the result has no ``vector``.
    """

    def __init__(self, model_dir: str, threads: int = 1, cache_dir: str | None = None,
                 shards_dir: str | None = None) -> None:
        from lookalike.models import base

        self.embedder = base.load(model_dir)
        if getattr(self.embedder, "cache_dir", "") is None:  # built files (ONNX) live there
            self.embedder.cache_dir = Path(model_dir) / "onnx"
        if getattr(self.embedder, "num_threads", "") is None:  # share the node, not fight
            self.embedder.num_threads = int(threads)
        self.threads = max(1, int(threads))
        self.cache = (EmbeddingCache(cache_dir, self.embedder.embedder_id, self.embedder.dim)
                      if cache_dir else None)
        self.shards_dir = shards_dir

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = list(batch["image"])
        n = len(images)
        ids = [str(i) for i in batch["id"]] if "id" in batch else None
        keys = [str(k) for k in batch["key"]] if "key" in batch else [""] * n
        status = np.array(["embedded"] * n, dtype=object)
        errors = np.array([""] * n, dtype=object)
        prepared: dict[int, Any] = {}

        hashed = "key" in batch

        def load(row: str) -> Any:
            image = images[int(row)]
            if hashed:
                return decode_image(_image_source(image))  # rejected as the core path does
            decoded = decode(_image_source(image), source=f"row {ids[int(row)]}")
            keys[int(row)] = sha256_hex(storable_bytes(_raw_bytes(image), decoded)[0])
            return decoded.image

        for row, item in read_items([str(i) for i in range(n)], load, self.embedder.prepare,
                                    workers=self.threads, prefetch=n):
            if isinstance(item, ItemFailed):
                reason = getattr(item.error, "reason", type(item.error).__name__)
                status[int(row)], errors[int(row)] = "failed", f"{reason}: {item.error}"
            else:
                prepared[int(row)] = item
        if self.cache is not None and prepared:
            rows = list(prepared)
            _, found = self.cache.lookup([keys[r] for r in rows])
            for r in np.asarray(rows)[found]:
                status[r] = "cached"
                del prepared[int(r)]
        vectors = np.zeros((n, self.embedder.dim), dtype=np.float32)
        if prepared:
            rows = list(prepared)
            vectors[rows] = self.embedder.embed_prepared([prepared[r] for r in rows])
        out = {"key": np.array(keys, dtype=str), "vector": vectors,
               "status": status.astype(str), "error": errors.astype(str)}
        if ids is not None:
            out["id"] = np.array(ids, dtype=str)
        if self.shards_dir is not None:
            self._write_shard(out)
        return out

    def _write_shard(self, out: dict[str, np.ndarray]) -> None:
        """Write the embedded rows of ``out`` as one shard and drop its vectors."""
        from lookalike.models.vector_shards import write_shard

        vectors = out.pop("vector")
        good = np.flatnonzero(out["status"] == "embedded")
        if len(good):
            write_shard(str(self.shards_dir), [str(i) for i in out["id"][good]],
                        [str(k) for k in out["key"][good]], self.embedder.embedder_id,
                        vectors[good])


def _image_source(image: Any) -> bytes | str:
    return bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else str(image)


def _raw_bytes(image: Any) -> bytes:
    from lookalike.catalogue.images import read_image_bytes

    return read_image_bytes(_image_source(image))


def _actor_count(ray: Any, options: RayOptions) -> int:
    if options.num_actors:
        return int(options.num_actors)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // options.cpus_per_actor)


def _run(ray: Any, dataset: Any, model_dir: Path, options: RayOptions, batch_size: int,
         cache_dir: Path | None = None, max_actors: int | None = None,
         shards_dir: Path | None = None) -> Any:
    """``dataset`` through a pool of at most ``max_actors`` actors (lazy results)."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    actors = min(_actor_count(ray, options), max_actors or 1 << 30)
    return dataset.map_batches(
        EmbedBatches, batch_size=batch_size, batch_format="numpy",
        fn_constructor_kwargs={"model_dir": str(model_dir), "threads": options.cpus_per_actor,
                               "cache_dir": str(cache_dir) if cache_dir else None,
                               "shards_dir": str(shards_dir) if shards_dir else None},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=options.cpus_per_actor)


def _drain(results: Any, writer: ChunkWriter, advance: Any) -> Iterator[dict[str, np.ndarray]]:
    """Write every embedded row of ``results`` as it arrives; yield each result batch."""
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        status = np.asarray(batch["status"]).astype(str)
        good = np.flatnonzero(status == "embedded")
        if len(good):
            writer.write([str(k) for k in np.asarray(batch["key"])[good]],
                         np.asarray(batch["vector"], dtype=np.float32)[good])
        advance(len(status))
        yield batch


def embed_missing(cache: EmbeddingCache, model_dir: str | Path, images: Mapping[str, str | Path],
                  options: RayOptions | Mapping[str, Any] | None = None, *,
                  progress: bool = True, embedder: Any = None) -> dict[str, str]:
    """Embed into ``cache`` every key of ``images`` (content hash -> image file) not cached yet.

    ``model_dir`` is the saved embedder (the cache's ``model/``); each actor loads it once.
    ``embedder``, the same model already loaded here, is run once on a blank image first so
    files it builds on first use (ONNX) are built once, not by every actor. Returns the keys
    whose image failed (``"<reason>: <the catalogue's message>"``); those are not cached.
    Finished chunks stay in the cache whatever happens to the run.
    """
    options = options if isinstance(options, RayOptions) else RayOptions.of(options)
    keys = sorted(images)
    _, found = cache.lookup(keys)
    missing = [k for k, hit in zip(keys, found) if not hit]
    if not missing:
        return {}
    import pyarrow as pa

    _warm(embedder)
    failed: dict[str, str] = {}
    size = options.batch_size or _saved_batch_size(model_dir)
    with ray_session(options) as ray:
        blocks = [pa.table({"key": missing[s:s + size],
                            "image": [str(images[k]) for k in missing[s:s + size]]})
                  for s in range(0, len(missing), size)]
        results = _run(ray, ray.data.from_arrow(blocks), Path(model_dir), options, size,
                       max_actors=len(blocks))  # no more actors than blocks of work
        writer = ChunkWriter(cache, options.chunk_size)
        with ProgressBar(progress, len(missing), "ray") as advance:
            try:
                for batch in _drain(results, writer, advance):
                    for key, state, error in zip(batch["key"], batch["status"], batch["error"]):
                        if str(state) == "failed":
                            failed[str(key)] = str(error)
            finally:
                writer.close()
    return failed


def _warm(embedder: Any) -> None:
    """Run ``embedder`` (if given) once on a blank image, so files it builds on first use
    (ONNX) are built here once, not by every actor."""
    from PIL import Image

    if embedder is not None:
        embedder.embed_prepared([embedder.prepare(Image.new("RGB", (64, 64), "white"))])


def embed_to_shards(images: Mapping[str, tuple[str, str | Path]], model_dir: str | Path,
                    folder: str | Path, options: RayOptions | Mapping[str, Any] | None = None,
                    *, progress: bool = True, embedder: Any = None) -> dict[str, str]:
    """Embed the items of ``images`` (item id -> (content hash, image file)) that no shard in
    ``folder`` holds yet into vector shards there (:mod:`lookalike.models.vector_shards`): each
    actor writes the rows of its batch as one shard, so no vector passes through the driver.
    A rerun embeds only the (id, hash) pairs missing from them. Returns the ids whose image failed
    (``"<reason>: <the catalogue's message>"``). ``embedder`` as in :func:`embed_missing`."""
    import pyarrow as pa

    from lookalike.models.vector_shards import shard_rows

    options = options if isinstance(options, RayOptions) else RayOptions.of(options)
    done = shard_rows(folder)
    missing = sorted(i for i in images if (i, images[i][0]) not in done)
    if not missing:
        return {}
    Path(folder).mkdir(parents=True, exist_ok=True)
    _warm(embedder)
    size = options.batch_size or _saved_batch_size(model_dir)
    failed: dict[str, str] = {}
    with ray_session(options) as ray:
        blocks = [pa.table({"id": part, "key": [images[i][0] for i in part],
                            "image": [str(images[i][1]) for i in part]})
                  for part in (missing[s:s + size] for s in range(0, len(missing), size))]
        results = _run(ray, ray.data.from_arrow(blocks), Path(model_dir), options, size,
                       max_actors=len(blocks), shards_dir=Path(folder))
        with ProgressBar(progress, len(missing), "ray shards") as advance:
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                for item_id, state, error in zip(batch["id"], batch["status"], batch["error"]):
                    if str(state) == "failed":
                        failed[str(item_id)] = str(error)
                advance(len(batch["status"]))
    return failed


def embed_manifest(sources: str | Path | Sequence[str | Path], model_dir: str | Path,
                   cache_dir: str | Path, options: RayOptions | Mapping[str, Any] | None = None,
                   *, id_column: str = "id", image_column: str = "image",
                   progress: bool = True) -> ManifestResult:
    """Embed the images of manifest shards (``.parquet`` or ``.csv``; a file, a folder or a list)
    into the cache at ``cache_dir`` with the model saved in ``model_dir``.

    Keys are content hashes computed as the catalogue computes them, so the vectors serve a
    project that ingests the same rows. Rows already cached are decoded (to hash them) but not
    embedded again; a rejected row is reported as ``"<reason>: <the catalogue's message>"``.
    """
    from lookalike.models import base

    options = options if isinstance(options, RayOptions) else RayOptions.of(options)
    embedder = base.load(model_dir)
    cache = EmbeddingCache(cache_dir, embedder.embedder_id, embedder.dim)
    paths = [str(p) for p in ([sources] if isinstance(sources, (str, Path)) else sources)]
    kinds = {Path(p).suffix.lower() for p in paths if Path(p).suffix}
    size = options.batch_size or embedder.batch_size
    result = ManifestResult()
    with ray_session(options) as ray:
        reader = ray.data.read_csv if kinds == {".csv"} else ray.data.read_parquet
        try:
            dataset = reader(paths)
        except Exception as error:  # noqa: BLE001 - Ray/Arrow errors vary by source
            raise LookalikeError(f"cannot read manifest {', '.join(paths)}: {error}") from None
        if id_column != "id" or image_column != "image":
            dataset = dataset.rename_columns({id_column: "id", image_column: "image"})
        dataset = dataset.select_columns(["id", "image"])
        # Read tasks need a CPU of their own: with every CPU held by an actor they never run.
        spare = max(1, _actor_count(ray, options) - 1)
        results = _run(ray, dataset, Path(model_dir), options, size, Path(cache_dir),
                       max_actors=None if options.num_actors else spare)
        writer = ChunkWriter(cache, options.chunk_size)
        with ProgressBar(progress, 0, "ray manifest") as advance:
            try:
                for batch in _drain(results, writer, advance):
                    for item_id, key, state, error in zip(batch["id"], batch["key"],
                                                          batch["status"], batch["error"]):
                        if str(state) == "failed":
                            result.failed[str(item_id)] = str(error)
                            continue
                        result.hashes[str(item_id)] = str(key)
                        result.embedded += str(state) == "embedded"
            finally:
                writer.close()
    return result


def _saved_batch_size(model_dir: str | Path) -> int:
    """The batch size of the embedder kind saved in ``model_dir`` (no weights loaded)."""
    import json

    from lookalike.models import base

    kind = json.loads((Path(model_dir) / base.CONFIG_FILE).read_text()).get("kind")
    return int(getattr(base.embedder_class(kind), "batch_size", 32) or 32)
