"""The embedding pipeline: reader -> embedder -> writer, filling an embedding cache.

Three separable pieces -- :func:`read_items` (decode + prepare in a thread pool),
:class:`EmbedMapper` (a batch in, unit vectors out; shaped like a Ray Data ``map_batches``
callable) and :class:`ChunkWriter` (buffer rows, put chunks into an
:class:`~lookalike.models.embedding_cache.EmbeddingCache`) -- which :func:`embed_with_cache`
wires together in one process; :mod:`lookalike.models.ray_engine` reuses them on Ray.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import ModelMismatchError
from lookalike.models.base import Embedder
from lookalike.models.embedding_cache import EmbeddingCache


class ItemFailed:
    """What the reader yields for a key whose image could not be loaded or prepared."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def read_items(keys: Iterable[str], load_image: Callable[[str], Image.Image],
               prepare: Callable[[Image.Image], Any], *, workers: int = 2,
               prefetch: int = 256) -> Iterator[tuple[str, Any]]:
    """The reader: ``(key, prepared item or ItemFailed)`` in ``keys`` order.

    Loading (decode) and ``prepare`` (resize) run in a thread pool -- Pillow releases the GIL
    while it decodes and resizes -- at most ``prefetch`` items ahead of the consumer.
    """

    def work(key: str) -> Any:
        try:
            return prepare(load_image(key))
        except Exception as error:  # noqa: BLE001 - reported per key, the run goes on
            return ItemFailed(error)

    with ThreadPoolExecutor(max_workers=max(1, workers),
                            thread_name_prefix="lookalike-read") as pool:
        pending: deque[tuple[str, Future]] = deque()
        key_iter = iter(keys)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < prefetch:
                    key = next(key_iter, None)
                    if key is None:
                        exhausted = True
                        break
                    pending.append((key, pool.submit(work, key)))
                if not pending:
                    return
                key, future = pending.popleft()
                yield key, future.result()
        finally:
            for _, future in pending:
                future.cancel()


class EmbedMapper:
    """The mapper: a batch of prepared items -> unit vectors.

    ``mapper({"key": [...], "item": [...]}) -> {"key": [...], "vector": array}`` has the shape
    of a Ray Data ``map_batches`` callable, so a distributed job can reuse it as is.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        vectors = self.embedder.embed_prepared(list(batch["item"]))
        return {"key": list(batch["key"]), "vector": vectors}


class ChunkWriter:
    """The writer: buffers rows and puts them into the cache ``chunk_size`` at a time.

    Writes happen on a background thread (one chunk in flight) so the model keeps running;
    ``close`` flushes the rest and re-raises any write error.
    """

    def __init__(self, cache: EmbeddingCache, chunk_size: int = 2048) -> None:
        self.cache = cache
        self.chunk_size = max(1, int(chunk_size))
        self._keys: list[str] = []
        self._vectors: list[np.ndarray] = []
        self._rows = 0
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="lookalike-write", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error is None:
                try:
                    self.cache.put(*job)
                except BaseException as error:  # noqa: BLE001 - re-raised by close()
                    self._error = error

    def write(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._keys.extend(keys)
        self._vectors.append(np.asarray(vectors, dtype=np.float32))
        self._rows += len(keys)
        while self._rows >= self.chunk_size:
            self._emit(self.chunk_size)

    def _emit(self, rows: int) -> None:
        stacked = np.concatenate(self._vectors) if len(self._vectors) > 1 else self._vectors[0]
        self._queue.put((self._keys[:rows], stacked[:rows]))
        self._keys, rest = self._keys[rows:], stacked[rows:]
        self._vectors = [rest] if len(rest) else []
        self._rows -= rows

    def close(self) -> None:
        """Write what is buffered and wait for the writes to finish."""
        if self._rows and self._error is None:
            self._emit(self._rows)
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def embed_with_cache(embedder: Embedder, keys: Sequence[str],
                     load_image: Callable[[str], Image.Image], cache: EmbeddingCache, *,
                     batch_size: int | None = None, chunk_size: int = 2048, progress: bool = True,
                     on_error: Callable[[str, Exception], None] | None = None,
                     workers: int | None = None) -> np.ndarray:
    """Vectors for ``keys`` (in order, duplicates allowed), embedding only keys not yet cached.

    ``load_image(key)`` returns the PIL image of a key. New vectors are written to ``cache`` in
    chunks of ``chunk_size`` as they are made, so an interrupted run keeps its finished chunks.
    A key whose image fails is passed to ``on_error(key, error)`` and gets a zero row (nothing
    is cached for it, so a later run retries it); without ``on_error`` the first failure is
    raised after the finished chunks are written.
    """
    if embedder.dim != cache.dim:
        raise ModelMismatchError(f"{cache.folder}: cache dim {cache.dim} != embedder "
                                 f"{embedder.name} dim {embedder.dim}")
    if embedder.embedder_id != cache.embedder_id:
        raise ModelMismatchError(f"{cache.folder}: cache is for {cache.embedder_id}, "
                                 f"not {embedder.embedder_id}")
    keys = [str(k) for k in keys]
    unique = list(dict.fromkeys(keys))
    vectors, found = cache.lookup(unique)
    missing = [unique[i] for i in np.flatnonzero(~found)]
    if missing:
        row_of = {key: i for i, key in enumerate(unique)}
        size = batch_size or embedder.batch_size
        mapper = EmbedMapper(embedder)
        writer = ChunkWriter(cache, chunk_size)
        workers = workers or min(4, os.cpu_count() or 1)
        failure: tuple[str, Exception] | None = None
        with ProgressBar(progress, len(missing), embedder.name) as advance:
            try:
                batch_keys: list[str] = []
                batch_items: list[Any] = []

                def flush() -> None:
                    result = mapper({"key": batch_keys, "item": batch_items})
                    vectors[[row_of[k] for k in result["key"]]] = result["vector"]
                    writer.write(result["key"], result["vector"])
                    advance(len(batch_keys))
                    batch_keys.clear()
                    batch_items.clear()

                for key, item in read_items(missing, load_image, embedder.prepare,
                                            workers=workers, prefetch=max(2 * size, 64)):
                    if isinstance(item, ItemFailed):
                        advance(1)
                        if on_error is None:
                            failure = (key, item.error)
                            break
                        on_error(key, item.error)
                        continue
                    batch_keys.append(key)
                    batch_items.append(item)
                    if len(batch_keys) == size:
                        flush()
                if batch_keys and failure is None:
                    flush()
            finally:
                writer.close()  # keep every finished row, even when interrupted
        if failure is not None:
            raise failure[1]
    index = {key: i for i, key in enumerate(unique)}
    if len(unique) == len(keys):
        return vectors
    return vectors[[index[k] for k in keys]]


class ProgressBar:
    """A Rich progress bar when ``enabled``, else a no-op; yields ``advance(n)``. It reads
    "embedding (label)" unless another ``verb`` is given."""

    def __init__(self, enabled: bool, total: int, label: str, verb: str = "embedding") -> None:
        self.enabled, self.total, self.label, self.verb = enabled, total, label, verb
        self._progress: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(),
                                  TimeRemainingColumn())
        self._progress.start()
        task = self._progress.add_task(f"{self.verb} ({self.label})", total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
