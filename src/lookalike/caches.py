"""In-memory caches, held by their owner, never by a module.

:class:`BoundedCache` is a small thread-safe mapping that drops its oldest entries beyond a
limit. :class:`ProjectCaches` groups the caches of one :class:`~lookalike.project.Project`
(``project.caches``): they live and die with it, so two projects never share an entry and a
service that reopens its project starts afresh. Functions that can run without a project
(``windowed_features``, ``EfficientNetMaps``) take a ``caches`` argument; without one they
cache nothing.

This module imports nothing from lookalike, so any room may use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class BoundedCache(Generic[V]):
    """At most ``limit`` entries, oldest dropped first; safe to share between threads."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a cache holds at least 1 entry, not {limit}")
        self.limit = limit
        self._items: dict[Hashable, V] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        """The value kept for ``key``, or None."""
        with self._lock:
            return self._items.get(key)

    def put(self, key: Hashable, value: V) -> V:
        """Keep ``value`` for ``key`` (dropping the oldest entries to stay within the limit)."""
        with self._lock:
            while len(self._items) >= self.limit:
                self._items.pop(next(iter(self._items)))
            self._items[key] = value
        return value

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        """The value kept for ``key``, made (outside the lock) and kept when absent."""
        with self._lock:
            if key in self._items:
                return self._items[key]
        return self.put(key, make())

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class ProjectCaches:
    """The in-memory caches of one project's queries (``Project.caches``).

    ``instance_caches``   personalisation: one bag-of-windows cache per index version
                          (``lookalike.recommend.personal.InstanceCache``)
    ``look_bags``         shop-the-look: windows of catalogue photos by (embedder id, item id)
    ``prototypes``        shop-the-look: k-means centres per index version, embedder and seed
    ``screen_embedders``  shop-the-look: the fast pass's registry embedders by name
    ``gist_spectra``      GIST window features: Gabor bank FFTs by (embedder id, shape)
    ``feature_nets``      EfficientNet feature maps: folded PyTorch networks by embedder id
    ``feature_sessions``  EfficientNet feature maps: ONNX Runtime sessions by graph file
    ``box_regressors``    the box regressor shipped in the package (one entry)
    ``segmenters``        shop-the-look: the scene segmenter shipped in the package (one entry)
    ``look_heads``        shop-the-look: the look head shipped in the package (one entry)
    ``look_rankers``      shop-the-look: the look ranker shipped in the package (one entry)
    ``text_indexes``      words: the loaded fused (image + text) index per image index
    ``text_models``       words: the loaded sentence model by embedder id
    ``text_lock``         held while a words index is loaded or rebuilt
    ``duplicate_finders`` near-duplicates of one photo: the DuplicateFinder per index name
    """

    def __init__(self) -> None:
        self.instance_caches: BoundedCache[Any] = BoundedCache(4)
        self.look_bags: BoundedCache[Any] = BoundedCache(20000)
        self.prototypes: BoundedCache[Any] = BoundedCache(8)
        self.screen_embedders: BoundedCache[Any] = BoundedCache(4)
        self.gist_spectra: BoundedCache[Any] = BoundedCache(4)
        self.feature_nets: BoundedCache[Any] = BoundedCache(2)
        self.feature_sessions: BoundedCache[Any] = BoundedCache(2)
        self.box_regressors: BoundedCache[Any] = BoundedCache(1)
        self.segmenters: BoundedCache[Any] = BoundedCache(1)
        self.look_heads: BoundedCache[Any] = BoundedCache(1)
        self.look_rankers: BoundedCache[Any] = BoundedCache(1)
        self.text_indexes: BoundedCache[Any] = BoundedCache(8)
        self.text_models: BoundedCache[Any] = BoundedCache(2)
        self.text_lock = threading.RLock()
        self.duplicate_finders: BoundedCache[Any] = BoundedCache(4)

    def clear(self) -> None:
        """Forget everything (the next queries rebuild what they need)."""
        for cache in vars(self).values():
            if isinstance(cache, BoundedCache):
                cache.clear()
