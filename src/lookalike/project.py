"""The project directory and the public Python API.

A :class:`Project` is one folder (default ``./lookalike-data``) holding a shop's catalogue, the
embeddings of its images, its indexes and reports. Every verb of lookalike is a method here
(the CLI and the service call nothing else)::

    from lookalike import Project

    project = Project("lookalike-data")
    project.ingest("demo")                      # or a folder / manifest
    project.index(embedder="efficientnet-lite0")
    project.similar("15970", k=5)
    project.search("photo.jpg", k=5, filters=Filters.of(gender="Women"))
    project.search(text="red running shoes", k=5)
    project.evaluate()

The verbs are grouped by what they do into mixins (:mod:`lookalike.verbs`: catalogue,
indexing, queries, analysis); this module holds what they share: the settings file, the
catalogue store, the write lock and the :class:`~lookalike.searcher.Searcher` per index.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lookalike.caches import ProjectCaches
from lookalike.errors import StoreError, UnknownNameError
from lookalike.index import journal
from lookalike.index.base import Filters
from lookalike.layout import (  # noqa: F401  (re-exported: older imports name them here)
    INDEX_EMBEDDER_DIR,
    INDEX_HASHES_FILE,
    PROJECT_FILE,
    ProjectLayout,
)
from lookalike.recommend.results import Recommendation
from lookalike.searcher import Searcher, recommendations
from lookalike.storage import atomic_write_text, current_version
from lookalike.verbs.analysis import AnalysisVerbs
from lookalike.verbs.catalogue import CatalogueVerbs
from lookalike.verbs.indexing import DEFAULT_EMBEDDER, DEFAULT_INDEX_NAME, IndexSummary, IndexVerbs
from lookalike.verbs.queries import QueryVerbs

DEFAULT_PROJECT_DIR = "lookalike-data"
PROJECT_FORMAT_VERSION = 1


class Project(CatalogueVerbs, IndexVerbs, QueryVerbs, AnalysisVerbs):
    """One shop's catalogue, embeddings, indexes and reports, in one directory.

    Opening a project is cheap: the store, the embedder and the index load on first use. A
    project opened ``read_only`` never writes (several service workers can share one directory).
    """

    def __init__(self, path: str | Path = DEFAULT_PROJECT_DIR, *, create: bool = True,
                 read_only: bool = False) -> None:
        self.path = Path(path).expanduser().resolve()
        self.layout = ProjectLayout(self.path)
        self.read_only = read_only
        if not self.layout.settings_file.is_file():
            if not create or read_only:
                raise StoreError(f"{self.path}: not a lookalike project (no {PROJECT_FILE}); "
                                 "create it with `lookalike ingest SOURCE --project DIR`")
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_settings({"format_version": PROJECT_FORMAT_VERSION, "indexes": {}})
        self.reload_settings()
        version = self.settings.get("format_version")
        if version != PROJECT_FORMAT_VERSION:
            raise StoreError(f"{self.layout.settings_file}: format version {version} is not "
                             f"supported (this lookalike reads {PROJECT_FORMAT_VERSION})")
        self._store = None
        self._loaded: dict[str, Searcher] = {}
        self._lock = threading.RLock()
        self._lock_depth = 0
        self._vocabulary = None  # the words the catalogue's values are known by (see vocabulary)
        self.caches = ProjectCaches()  # in-memory caches of this project's queries

    @property
    def store(self):  # -> CatalogueStore (imported lazily: keeps `import lookalike` light)
        if self._store is None:
            from lookalike.catalogue.store import CatalogueStore

            self._store = CatalogueStore(self.path, create=not self.read_only)
        return self._store

    # ---- indexes: which, and the searcher of each ------------------------------------------------
    def searcher(self, name: str | None = None) -> Searcher:
        """The :class:`~lookalike.searcher.Searcher` of index ``name`` (None: the default
        index): the current version with its embedder and vector cache, loaded once and kept,
        caught up with small updates other processes appended, reloaded when a new version is
        saved."""
        name = self.index_name(name)
        with self._lock:
            folder = current_version(self.layout.index(name))
            if folder is None:  # removed since index_name looked
                raise UnknownNameError(f"index {name!r} does not exist in {self.path}")
            loaded = self._loaded.get(name)
            if loaded is not None and loaded.folder == folder:
                try:
                    loaded.catch_up()  # small updates another process appended meanwhile
                    return loaded
                except (OSError, StoreError):
                    pass  # the version was compacted and pruned under us: load the current one
            # First use, or another process saved a new version.
            reuse = loaded.embedder if loaded is not None else None
            loaded = Searcher.open(name, folder, self.path, embedder=reuse)
            self._loaded[name] = loaded
            return loaded

    def recommendations(self, ids: Sequence[str], scores: Sequence[float]) -> list[Recommendation]:
        """Hits as :class:`Recommendation` rows with their catalogue details (items deleted
        since the index was saved are left out)."""
        return recommendations(self.store, ids, scores)

    def index_name(self, name: str | None = None) -> str:
        """The index a query naming ``name`` uses (None: the project's default), checked to
        exist; a one-line UnknownNameError otherwise."""
        if not (name or self.default_index_name()):
            self.reload_settings()  # a writer process may have built the first index since
        name = name or self.default_index_name()
        if not name:
            raise UnknownNameError(f"{self.path}: no index yet; run `lookalike index` first")
        if current_version(self.layout.index(name)) is None:
            raise UnknownNameError(f"index {name!r} does not exist in {self.path}; "
                                   f"known: {', '.join(self.indexes()) or 'none'}")
        return name

    def index_version(self, name: str | None = None) -> str | None:
        """The current version folder of index ``name`` (default: the project's), with ``+N``
        when N small updates were appended to it since; None when there is no such index."""
        name = name or self.default_index_name()
        folder = current_version(self.layout.index(name)) if name else None
        if folder is None:
            return None
        updates = journal.entry_count(folder)  # small updates appended to that version
        return f"{folder.name}+{updates}" if updates else folder.name

    def default_index_name(self) -> str | None:
        return self.settings.get("default_index")

    def indexes(self) -> dict[str, dict[str, Any]]:
        return dict(self.settings.get("indexes", {}))

    def summary(self) -> dict[str, Any]:
        """Size, indexes and filter values: what a UI or the service needs to describe itself."""
        frame = self.store.frame() if len(self.store) else None
        filters: dict[str, Any] = {}
        if frame is not None:
            for column in ("category", "gender", "colour"):
                if column in frame.columns:
                    filters[column] = sorted(map(str, frame[column].dropna().unique()))
            if "price" in frame.columns and frame["price"].notna().any():
                filters["price"] = [float(frame["price"].min()), float(frame["price"].max())]
        return {"project": str(self.path), "items": len(self.store),
                "indexes": self.indexes(), "default_index": self.default_index_name(),
                "filters": filters}


    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialise writers to this project, across threads and processes (``fcntl`` lock).

        Readers never need it: every write becomes visible in one atomic rename.
        """
        with self._lock:
            if self._lock_depth:  # re-entered (add_item -> index): flock would deadlock itself
                self._lock_depth += 1
                try:
                    yield
                finally:
                    self._lock_depth -= 1
                return
            with open(self.layout.write_lock_file, "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
                    fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- settings ---------------------------------------------------------------------------------
    def reload_settings(self) -> None:
        """Re-read ``lookalike.json`` (another process may have built an index since)."""
        self.settings = json.loads(self.layout.settings_file.read_text())

    def require_writable(self, what: str) -> None:
        """A one-line ``StoreError`` when this project was opened read-only."""
        if self.read_only:
            raise StoreError(f"{self.path}: opened read-only; cannot {what}")

    def _write_settings(self, settings: dict[str, Any]) -> None:
        atomic_write_text(self.layout.settings_file,
                          json.dumps(settings, indent=2, sort_keys=True))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def remove_project(path: str | Path) -> None:
    """Delete a project directory (used by tests and `lookalike demo --fresh`)."""
    path = Path(path)
    if ProjectLayout(path).settings_file.is_file():
        shutil.rmtree(path)
    elif path.exists():
        raise StoreError(f"{path}: not a lookalike project; refusing to delete it")


__all__ = ["Project", "IndexSummary", "Recommendation", "Filters", "remove_project",
           "DEFAULT_PROJECT_DIR", "DEFAULT_EMBEDDER", "DEFAULT_INDEX_NAME"]
