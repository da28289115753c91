"""``Project.index``: embed the catalogue and build or update an index, incrementally.

A mixin of :class:`lookalike.project.Project` (never imported by it the other way): only images
not embedded before are embedded (the cache is keyed by content hash and embedder id), items
added, changed or removed since the last run are applied to the existing index without a rebuild
when the embedder is unchanged, and small updates are appended to the saved version's journal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import LookalikeError, ModelMismatchError, StoreError, UnknownNameError
from lookalike.index import journal
from lookalike.index.base import (INDEX_MANIFEST, VectorIndex, create_index, index_class,
                                  load_index)
from lookalike.layout import INDEX_EMBEDDER_DIR, INDEX_HASHES_FILE
from lookalike.searcher import Searcher
from lookalike.storage import atomic_write_text, current_version, versioned_folder

DEFAULT_EMBEDDER = "efficientnet-lite0"
DEFAULT_INDEX_NAME = "default"
# Index versions kept on disk: readers that opened the previous one can finish with it.
_KEEP_VERSIONS = 3
#: Items embedded and added per step of a (re)index: bounds memory on big catalogues.
_INDEX_CHUNK = 50_000


@dataclass
class IndexSummary:
    """What ``Project.index`` did."""

    name: str
    kind: str
    embedder: str
    embedder_id: str
    dim: int
    size: int
    added: int
    removed: int
    unchanged: int
    failed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class IndexVerbs:
    """The indexing verbs of :class:`~lookalike.project.Project` (``index``,
    ``refresh_index``, ``text_index``) and the steps behind them."""

    def index(self, embedder: str = DEFAULT_EMBEDDER, *, kind: str = "auto",
              name: str = DEFAULT_INDEX_NAME, embedder_options: Mapping[str, Any] | None = None,
              index_options: Mapping[str, Any] | None = None, progress: bool = True,
              text_columns: Sequence[str] | None = None, engine: str = "local",
              engine_options: Mapping[str, Any] | None = None,
              shards: str | Path | None = None) -> IndexSummary:
        """Embed the catalogue and build (or incrementally update) the index ``name``.

        ``embedder`` is a registry name (see ``lookalike.models.base.available()``) or the folder
        of a saved/trained model. Only images not embedded before are embedded (the cache is keyed
        by content hash and embedder id); items added, changed or removed since the last run are
        applied to the existing index without a rebuild when the embedder is unchanged.
        ``text_columns`` (e.g. ``["title"]``) also embeds those columns with the MiniLM text model
        into the words index queries with ``text`` use; once built, later runs (and
        ``add_item``/``remove_items``) keep it up to date.
        ``engine="ray"`` embeds what is missing with Ray Data first (``engine_options``:
        ``address``, ``num_actors``, ... see :class:`lookalike.models.ray_engine.RayOptions`).
        ``shards`` is a folder of Parquet vector shards (:mod:`lookalike.models.vector_shards`):
        with ``engine="ray"`` the actors write the missing vectors there (resumable); with any
        engine the shards' vectors are read into the embedding cache before indexing.
        """
        self.require_writable("index")
        if engine not in ("local", "ray"):
            raise UnknownNameError(f"unknown engine {engine!r}; use local or ray")
        with self.write_lock():
            summary = self._index_locked(embedder, kind=kind, name=name,
                                         embedder_options=embedder_options,
                                         index_options=index_options, progress=progress,
                                         engine=engine, engine_options=engine_options,
                                         shards=shards)
            if text_columns:
                from lookalike.recommend.text_search import build_text_index

                build_text_index(self, index=name, columns=list(text_columns), progress=progress)
            else:
                self._refresh_text_index(name, progress=progress)
            return summary

    def text_index(self, index: str | None = None, *, columns: Sequence[str] | None = None,
                   progress: bool = True):  # -> lookalike.recommend.text_search.TextIndexSummary
        """Embed the items' text ``columns`` (default: the title) with the MiniLM text model and
        build or update the words (fused image + text) index over image index ``index``."""
        from lookalike.recommend.text_search import DEFAULT_COLUMNS, build_text_index

        return build_text_index(self, index=index, columns=list(columns or DEFAULT_COLUMNS),
                                progress=progress)

    def has_text_index(self, index: str | None = None) -> bool:
        """Whether image index ``index`` (default: the project's) has a words index yet."""
        return current_version(self.layout.text_index(self.index_name(index))) is not None

    def _refresh_text_index(self, name: str, progress: bool = False) -> None:
        """Keep the words index of image index ``name`` (if one was built) up to date, with the
        columns it was built with: only new or changed titles are embedded."""
        from lookalike.recommend import text_search

        folder = current_version(self.layout.text_index(name))
        if folder is None:
            return
        columns = json.loads((folder / text_search.TEXT_META).read_text()).get("columns")
        text_search.build_text_index(self, index=name, columns=columns or ["title"],
                                     progress=progress)

    def _index_locked(self, embedder: str, *, kind: str, name: str,
                      embedder_options: Mapping[str, Any] | None,
                      index_options: Mapping[str, Any] | None, progress: bool,
                      engine: str = "local", engine_options: Mapping[str, Any] | None = None,
                      shards: str | Path | None = None) -> IndexSummary:
        self.reload_settings()  # another process may have added an index meanwhile
        model, cache = self._embedder_and_cache(embedder, embedder_options or {})
        hashes = self.store.content_hashes()
        self._fill_cache(model, cache, engine, engine_options, shards, progress)
        previous = current_version(self.layout.index(name))
        live = self._live_index(name, previous, model.embedder_id, kind)
        if live is not None:  # this process holds that version already: update it in place
            index, old_hashes, seen = live.index, live.hashes, live.journal_seen
        else:
            index, old_hashes, seen = self._reusable_index(previous, model.embedder_id,
                                                           model.dim, kind)
        changed = [i for i, h in hashes.items() if old_hashes.get(i) != h]
        gone = [i for i in old_hashes if i not in hashes]

        if index is None:
            options = {**self._kept_params(previous, kind), **dict(index_options or {})}
            kind, options = self._choose_kind(kind, len(hashes), model.dim, options)
            index = create_index(kind, model.dim, model.embedder_id, **options)
        try:
            added, failed, vectors = self._apply_changes(model, cache, index, changed, hashes,
                                                         progress)
            removed = gone + failed
            if removed:
                index.remove(removed)
            folder, seen = self._persist(name, model, index, hashes, previous, seen,
                                         added, removed, failed, vectors)
        except BaseException:
            with self._lock:
                self._loaded.pop(name, None)  # memory may be ahead of disk: reload next time
            raise
        for item_id in removed:
            old_hashes.pop(item_id, None)
        old_hashes.update({i: hashes[i] for i in added})
        self._record_index(name, model, index.kind)
        with self._lock:
            self._loaded[name] = Searcher(name, folder, index, model, old_hashes, cache, seen)
        unchanged = len(hashes) - len(changed)
        return IndexSummary(name=name, kind=index.kind, embedder=model.name,
                            embedder_id=model.embedder_id, dim=model.dim, size=len(index),
                            added=len(added), removed=len(gone), unchanged=unchanged,
                            failed=failed)

    def _fill_cache(self, model, cache, engine: str, engine_options: Mapping[str, Any] | None,
                    shards: str | Path | None, progress: bool) -> None:
        """Fill the cache before indexing: on Ray (into it, or into ``shards``) and from
        ``shards``; the steps after then find those vectors cached."""
        model_dir = self.layout.embeddings(model.embedder_id) / "model"
        if engine == "ray":
            from lookalike.models import ray_engine

            if shards is not None:
                ray_engine.embed_to_shards(
                    {item.id: (item.content_hash, item.image_path) for item in self.store.items()},
                    model_dir, shards, engine_options, progress=progress, embedder=model)
            else:
                ray_engine.embed_missing(
                    cache, model_dir,
                    {item.content_hash: item.image_path for item in self.store.items()},
                    engine_options, progress=progress, embedder=model)
        if shards is not None:
            from lookalike.models.vector_shards import import_shards, shard_files

            if not shard_files(shards) and engine != "ray":
                raise LookalikeError(f"no vector shards (part-*.parquet) in {shards}")
            import_shards(cache, shards)

    def _embedder_and_cache(self, embedder: str, options: Mapping[str, Any]) -> tuple[Any, Any]:
        """The embedder to index with and its embedding cache (its model saved there once)."""
        from lookalike.models.cache import EmbeddingCache, save_model_once

        model = self._make_embedder(embedder, options)
        cache_dir = self.layout.embeddings(model.embedder_id)
        cache = EmbeddingCache(cache_dir, model.embedder_id, model.dim)
        save_model_once(model, cache_dir / "model")
        return model, cache

    def _persist(self, name: str, model, index: VectorIndex, hashes: Mapping[str, str],
                 previous: Path | None, seen: int | None, added: list[str], removed: list[str],
                 failed: list[str], vectors: np.ndarray | None) -> tuple[Path, int | None]:
        """Make the update durable: nothing to do, a journal entry on the current version (a
        small update) or a new version. Returns (the version folder, journal entries seen)."""
        if not added and not removed and previous is not None and seen is not None:
            return previous, seen  # nothing changed: the saved version stays as it is
        if (vectors is not None and previous is not None and seen is not None
                and self._fits_journal(previous, seen, len(added) + len(removed))):
            # A small update: append it to the current version instead of rewriting it.
            journal.append(previous, added, vectors, self._attributes_of(added),
                           {i: hashes[i] for i in added}, removed)
            return previous, seen + 1
        index_root = self.layout.index(name)
        with versioned_folder(index_root, keep=_KEEP_VERSIONS) as staging:
            index.save(staging / "index")
            model.save(staging / INDEX_EMBEDDER_DIR)
            failed_set = set(failed)
            kept = {i: h for i, h in hashes.items() if i not in failed_set}
            atomic_write_text(staging / INDEX_HASHES_FILE, json.dumps(kept))
        return current_version(index_root), 0

    def _record_index(self, name: str, model, kind: str) -> None:
        """Note the index (embedder, kind, precision) in the project's settings; the first
        index becomes the default."""
        entry = {"embedder": model.name, "embedder_id": model.embedder_id, "kind": kind}
        if "precision" in model.config():  # the precision actually used (int8 self-check)
            entry["precision"] = model.config()["precision"]
        with self._lock:
            if self.settings.get("indexes", {}).get(name) != entry or \
                    "default_index" not in self.settings:
                self.settings.setdefault("indexes", {})[name] = entry
                self.settings.setdefault("default_index", name)
                self._write_settings(self.settings)

    def _apply_changes(self, model, cache, index: VectorIndex, changed: list[str],
                       hashes: Mapping[str, str], progress: bool
                       ) -> tuple[list[str], list[str], np.ndarray | None]:
        """Embed the changed items (cache first) and upsert them, a chunk at a time so a big
        catalogue never holds all its vectors at once. Returns (added, failed, vectors of the
        added items — only for a small update, which may go to the journal; else None)."""
        from lookalike.catalogue.images import decode_image
        from lookalike.models.cache import embed_with_cache

        added: list[str] = []
        failed: list[str] = []
        kept: list[np.ndarray] = []
        small = len(changed) <= journal.MAX_ITEMS
        for start in range(0, len(changed), _INDEX_CHUNK):
            chunk = changed[start:start + _INDEX_CHUNK]
            items = {item.id: item for item in self.store.items(chunk)}
            paths = {item.content_hash: item.image_path for item in items.values()}
            keys = [hashes[i] for i in chunk]
            failures: dict[str, str] = {}

            def note_failure(key: str, error: Exception) -> None:
                failures[key] = str(error)

            vectors = embed_with_cache(model, keys, lambda key: decode_image(paths[key]), cache,
                                       progress=progress, on_error=note_failure)
            good = [n for n, key in enumerate(keys) if key not in failures]
            ids = [chunk[n] for n in good]
            vectors = np.ascontiguousarray(vectors[good], dtype=np.float32)
            index.add(ids, vectors, [items[i].filter_attributes() for i in ids])
            added += ids
            failed += [chunk[n] for n, key in enumerate(keys) if key in failures]
            if small:
                kept.append(vectors)
        if not small:
            return added, failed, None
        return added, failed, (np.concatenate(kept) if kept
                               else np.zeros((0, model.dim), np.float32))

    def _attributes_of(self, ids: list[str]) -> list[dict[str, Any]]:
        found = self.store.find(ids)
        return [found[i].filter_attributes() for i in ids]

    @staticmethod
    def _fits_journal(folder: Path, seen: int, changes: int) -> bool:
        if changes == 0 or seen + 1 > journal.MAX_ENTRIES:
            return False
        return journal.item_count(folder) + changes <= journal.MAX_ITEMS

    def _live_index(self, name: str, previous: Path | None, embedder_id: str,
                    kind: str) -> "Searcher | None":
        """The loaded index of ``name`` if it is the saved version and can take the update."""
        with self._lock:
            live = self._loaded.get(name)
        if live is None or previous is None or live.folder != previous:
            return None
        if live.embedder.embedder_id != embedder_id or kind not in ("auto", live.index.kind):
            return None
        try:
            live.catch_up()
        except (OSError, StoreError):
            return None
        return live

    def _make_embedder(self, embedder: str, options: Mapping[str, Any]):
        from lookalike.models import base as models

        from lookalike.training_run import model_folder

        folder = model_folder(self.path, embedder)  # models/<name> (trained here) or a folder
        if folder is not None:
            if options:
                raise LookalikeError("embedder options apply to registry names, not saved models")
            return models.load(folder)
        return models.create(embedder, **options)

    def _reusable_index(self, previous: Path | None, embedder_id: str, dim: int, kind: str
                        ) -> tuple[VectorIndex | None, dict[str, str], int | None]:
        """The saved index (journal replayed), its id -> hash map and how many journal entries
        it holds, if it can be updated in place; ``(None, {}, None)`` otherwise."""
        if previous is None:
            return None, {}, None
        try:
            index = load_index(previous / "index", expected_embedder_id=embedder_id,
                               expected_dim=dim)
        except ModelMismatchError:
            return None, {}, None  # another embedder: rebuild from the (cached) embeddings
        if kind not in ("auto", index.kind):
            return None, {}, None
        hashes = json.loads((previous / INDEX_HASHES_FILE).read_text())
        entries = journal.read(previous)
        journal.replay(entries, index, hashes)
        return index, hashes, len(entries)

    @staticmethod
    def _kept_params(previous: Path | None, kind: str) -> dict[str, Any]:
        """What a rebuild keeps of the saved index when it is of the asked ``kind``
        (``rebuild_params``: a Milvus rebuild stays on its server and collection)."""
        manifest = None if previous is None else previous / "index" / INDEX_MANIFEST
        if kind == "auto" or manifest is None or not manifest.is_file():
            return {}
        saved = json.loads(manifest.read_text())
        return index_class(kind).rebuild_params(saved) if saved.get("kind") == kind else {}

    @staticmethod
    def _choose_kind(kind: str, n_items: int, dim: int,
                     options: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
        """The index kind and its parameters: ``auto`` keeps choose_index's whole choice (the
        caller's ``options`` on top); an explicit kind takes just the caller's options."""
        if kind != "auto":
            return kind, dict(options or {})
        from lookalike.index.choose import choose_index

        choice = choose_index(n_items, dim)
        return choice.kind, {**choice.params, **dict(options or {})}


    def refresh_index(self, name: str | None = None, *, progress: bool = False) -> IndexSummary:
        """Bring index ``name`` up to date with the catalogue using its own embedder."""
        name = name or self.default_index_name()
        if not name:
            raise UnknownNameError("no index yet; run `lookalike index` first")
        folder = current_version(self.layout.index(name))
        if folder is None:
            raise UnknownNameError(f"index {name!r} does not exist in {self.path}")
        entry = self.settings["indexes"][name]
        return self.index(str(folder / INDEX_EMBEDDER_DIR), kind=entry["kind"], name=name,
                          progress=progress)

