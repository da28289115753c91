"""The project directory and the public Python API.

A :class:`Project` is one folder (default ``./lookalike-data``) holding a shop's catalogue, the
embeddings of its images, its indexes and reports. Every CLI command is one method here::

    from lookalike import Project

    project = Project("lookalike-data")
    project.ingest("demo")                      # or a folder / manifest
    project.index(embedder="efficientnet-lite0")
    project.similar("15970", k=5)
    project.search("photo.jpg", k=5, filters=Filters.of(gender="Women"))
    project.evaluate()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.caches import ProjectCaches
from lookalike.errors import (
    ImageRejected,
    LookalikeError,
    ModelMismatchError,
    StoreError,
    UnknownItemError,
    UnknownNameError,
)
from lookalike.index import journal
from lookalike.index.base import Filters, VectorIndex, create_index, load_index
from lookalike.recommend.results import Recommendation
from lookalike.storage import atomic_write_text, current_version, versioned_folder

DEFAULT_PROJECT_DIR = "lookalike-data"
DEFAULT_EMBEDDER = "efficientnet-lite0"
DEFAULT_INDEX_NAME = "default"
PROJECT_FILE = "lookalike.json"
PROJECT_FORMAT_VERSION = 1
# Sidecar in every index version: which image (content hash) each id was embedded from, so a later
# `index` run knows what changed without re-embedding everything.
INDEX_HASHES_FILE = "content_hashes.json"
INDEX_EMBEDDER_DIR = "embedder"
# Extra hits fetched per query so that items deleted from the catalogue between the index search
# and the detail lookup (a concurrent writer) do not leave a result list short.
_SPARE = 4
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


class Project:
    """One shop's catalogue, embeddings, indexes and reports, in one directory.

    Opening a project is cheap: the store, the embedder and the index load on first use. A
    project opened ``read_only`` never writes (several service workers can share one directory).
    """

    def __init__(self, path: str | Path = DEFAULT_PROJECT_DIR, *, create: bool = True,
                 read_only: bool = False) -> None:
        self.path = Path(path).expanduser().resolve()
        self.read_only = read_only
        if not (self.path / PROJECT_FILE).is_file():
            if not create or read_only:
                raise StoreError(f"{self.path}: not a lookalike project (no {PROJECT_FILE}); "
                                 "create it with `lookalike ingest SOURCE --project DIR`")
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_settings({"format_version": PROJECT_FORMAT_VERSION, "indexes": {}})
        self._reload_settings()
        version = self.settings.get("format_version")
        if version != PROJECT_FORMAT_VERSION:
            raise StoreError(f"{self.path / PROJECT_FILE}: format version {version} is not "
                             f"supported (this lookalike reads {PROJECT_FORMAT_VERSION})")
        self._store = None
        self._loaded: dict[str, _LoadedIndex] = {}
        self._lock = threading.RLock()
        self._lock_depth = 0
        self._vocabulary = None  # the words the catalogue's values are known by (see vocabulary)
        self.caches = ProjectCaches()  # in-memory caches of this project's queries

    # ---- catalogue ---------------------------------------------------------------------------
    @property
    def store(self):  # -> CatalogueStore (imported lazily: keeps `import lookalike` light)
        if self._store is None:
            from lookalike.catalogue.store import CatalogueStore

            self._store = CatalogueStore(self.path, create=not self.read_only)
        return self._store

    def ingest(self, source: str | Path, *, progress: bool = True, **options: Any):
        """Add a folder, a manifest (CSV/JSONL/Parquet) or a named catalogue (``demo``,
        ``products``, ``fashion-mnist``) to the catalogue. Incremental and resumable; returns an
        :class:`~lookalike.catalogue.ingest.IngestReport` listing every rejected file."""
        self._require_writable("ingest")
        from lookalike.catalogue.ingest import ingest

        if options.get("on_duplicate_image", "keep") != "keep" \
                and options.get("duplicate_method", "copies") == "copies":
            from lookalike.recommend.duplicates import index_neighbours

            options.setdefault("duplicate_neighbours", index_neighbours(self))
        with self.write_lock():
            return ingest(source, self.store, progress=progress, **options)

    def vocabulary(self):  # -> lookalike.recommend.words.Vocabulary
        """The words this catalogue's colours, genders and categories are known by (query
        understanding, docs/text-search.md); rebuilt only when the catalogue has changed."""
        from lookalike.recommend.words import COLUMNS, Vocabulary

        state = self.store.state()
        with self._lock:
            if self._vocabulary is None or self._vocabulary.state != state:
                self._vocabulary = Vocabulary.build(
                    {column: self.store.value_counts(column) for column in COLUMNS}, state)
            return self._vocabulary

    def item(self, item_id: str) -> dict[str, Any]:
        """Catalogue details of one item (``UnknownItemError`` when absent)."""
        return self.store.get(str(item_id)).to_json()

    # ---- embedding and indexing --------------------------------------------------------------
    def index(self, embedder: str = DEFAULT_EMBEDDER, *, kind: str = "auto",
              name: str = DEFAULT_INDEX_NAME, embedder_options: Mapping[str, Any] | None = None,
              index_options: Mapping[str, Any] | None = None, progress: bool = True,
              text_columns: Sequence[str] | None = None, engine: str = "local",
              engine_options: Mapping[str, Any] | None = None) -> IndexSummary:
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
        """
        self._require_writable("index")
        if engine not in ("local", "ray"):
            raise UnknownNameError(f"unknown engine {engine!r}; use local or ray")
        with self.write_lock():
            summary = self._index_locked(embedder, kind=kind, name=name,
                                         embedder_options=embedder_options,
                                         index_options=index_options, progress=progress,
                                         engine=engine, engine_options=engine_options)
            if text_columns:
                from lookalike.recommend.text_search import build_text_index

                build_text_index(self, index=name, columns=list(text_columns), progress=progress)
            else:
                self._refresh_text_index(name, progress=progress)
            return summary

    def _refresh_text_index(self, name: str, progress: bool = False) -> None:
        """Keep the words index of image index ``name`` (if one was built) up to date, with the
        columns it was built with: only new or changed titles are embedded."""
        from lookalike.recommend import text_search

        folder = current_version(self.path / text_search.TEXT_DIR / name)
        if folder is None:
            return
        columns = json.loads((folder / text_search.TEXT_META).read_text()).get("columns")
        text_search.build_text_index(self, index=name, columns=columns or ["title"],
                                     progress=progress)

    def _index_locked(self, embedder: str, *, kind: str, name: str,
                      embedder_options: Mapping[str, Any] | None,
                      index_options: Mapping[str, Any] | None, progress: bool,
                      engine: str = "local", engine_options: Mapping[str, Any] | None = None
                      ) -> IndexSummary:
        from lookalike.models.cache import EmbeddingCache, save_model_once

        self._reload_settings()  # another process may have added an index meanwhile
        model = self._make_embedder(embedder, embedder_options or {})
        cache_dir = self.path / "embeddings" / model.embedder_id
        cache = EmbeddingCache(cache_dir, model.embedder_id, model.dim)
        save_model_once(model, cache_dir / "model")

        hashes = self.store.content_hashes()
        if engine == "ray":  # fill the cache on Ray; the steps below then find it all cached
            from lookalike.models.ray_engine import embed_missing

            embed_missing(cache, cache_dir / "model",
                          {item.content_hash: item.image_path for item in self.store.items()},
                          engine_options, progress=progress, embedder=model)
        index_root = self.path / "indexes" / name
        previous = current_version(index_root)
        live = self._live_index(name, previous, model.embedder_id, kind)
        if live is not None:  # this process holds that version already: update it in place
            index, old_hashes, seen = live.index, live.hashes, live.journal_seen
        else:
            index, old_hashes, seen = self._reusable_index(previous, model.embedder_id,
                                                           model.dim, kind)
        changed = [i for i, h in hashes.items() if old_hashes.get(i) != h]
        gone = [i for i in old_hashes if i not in hashes]

        if index is None:
            kind = self._choose_kind(kind, len(hashes), model.dim)
            index = create_index(kind, model.dim, model.embedder_id, **dict(index_options or {}))
        try:
            added, failed, vectors = self._apply_changes(model, cache, index, changed, hashes,
                                                         progress)
            removed = gone + failed
            if removed:
                index.remove(removed)
            if not added and not removed and previous is not None and seen is not None:
                folder = previous  # nothing changed: the saved version stays as it is
            elif (vectors is not None and previous is not None and seen is not None
                  and self._fits_journal(previous, seen, len(added) + len(removed))):
                # A small update: append it to the current version instead of rewriting it.
                journal.append(previous, added, vectors, self._attributes_of(added),
                               {i: hashes[i] for i in added}, removed)
                folder, seen = previous, seen + 1
            else:
                with versioned_folder(index_root, keep=_KEEP_VERSIONS) as staging:
                    index.save(staging / "index")
                    model.save(staging / INDEX_EMBEDDER_DIR)
                    failed_set = set(failed)
                    kept = {i: h for i, h in hashes.items() if i not in failed_set}
                    atomic_write_text(staging / INDEX_HASHES_FILE, json.dumps(kept))
                folder, seen = current_version(index_root), 0
        except BaseException:
            with self._lock:
                self._loaded.pop(name, None)  # memory may be ahead of disk: reload next time
            raise
        for item_id in removed:
            old_hashes.pop(item_id, None)
        old_hashes.update({i: hashes[i] for i in added})
        entry = {"embedder": model.name, "embedder_id": model.embedder_id, "kind": index.kind}
        if "precision" in model.config():  # the precision actually used (int8 self-check)
            entry["precision"] = model.config()["precision"]
        with self._lock:
            if self.settings.get("indexes", {}).get(name) != entry or \
                    "default_index" not in self.settings:
                self.settings.setdefault("indexes", {})[name] = entry
                self.settings.setdefault("default_index", name)
                self._write_settings(self.settings)
            self._loaded[name] = _LoadedIndex(name, folder, index, model, old_hashes, cache, seen)
        unchanged = len(hashes) - len(changed)
        return IndexSummary(name=name, kind=index.kind, embedder=model.name,
                            embedder_id=model.embedder_id, dim=model.dim, size=len(index),
                            added=len(added), removed=len(gone), unchanged=unchanged,
                            failed=failed)

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
                    kind: str) -> "_LoadedIndex | None":
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
    def _choose_kind(kind: str, n_items: int, dim: int) -> str:
        if kind != "auto":
            return kind
        from lookalike.index.choose import choose_index

        return choose_index(n_items, dim).kind

    # ---- training ----------------------------------------------------------------------------
    def train(self, method: str, *, name: str | None = None,
              label_column: str | None = "article_type",
              options: Mapping[str, Any] | None = None, resume: bool = False,
              progress: bool = True):
        """Train a learning embedder (``cnn``, ``cnn-hash``, ``finetune``, ``pca``,
        ``projection``, ...) on this catalogue's train split; returns a
        :class:`~lookalike.training_run.TrainSummary`.

        ``options`` are the embedder's settings and its training settings (``epochs``,
        ``learning_rate``, ...) in one mapping. Checkpoints go to
        ``models/<name>/checkpoints/`` (``resume=True`` continues from them) and the finished
        model to ``models/<name>/``; index it with ``index(embedder="models/<name>")``.
        """
        self._require_writable("train")
        from lookalike.training_run import train_project

        return train_project(self, method, name=name, label_column=label_column,
                             options=options, resume=resume, progress=progress)

    # ---- queries -----------------------------------------------------------------------------
    def similar(self, item_id: str, k: int = 5, filters: Filters | None = None, *,
                index: str | None = None) -> list[Recommendation]:
        """Products most like catalogue item ``item_id`` (the item itself excluded)."""
        loaded = self._index(index)
        item_id = str(item_id)
        vector = loaded.vector_of(item_id, self.store)
        hits = loaded.index.search(vector[None, :], k=k + _SPARE, filters=filters,
                                   exclude=[[item_id]])[0]
        return self._recommendations(hits.ids, hits.scores)[:k]

    def search(self, image: str | Path | bytes | Image.Image, k: int = 5,
               filters: Filters | None = None, *, index: str | None = None,
               exclude: Iterable[str] = ()) -> list[Recommendation]:
        """Products most like a photo given as a path, raw bytes or a PIL image."""
        loaded = self._index(index)
        vector = loaded.embedder.embed_one(_as_image(image))
        hits = loaded.index.search(vector[None, :], k=k + _SPARE, filters=filters,
                                   exclude=[list(exclude)])[0]
        return self._recommendations(hits.ids, hits.scores)[:k]

    def embed_query(self, image: str | Path | bytes | Image.Image, *,
                    index: str | None = None) -> np.ndarray:
        """The query vector of a photo under the embedder of index ``index``."""
        return self._index(index).embedder.embed_one(_as_image(image))

    def _recommendations(self, ids: Sequence[str], scores: Sequence[float]) -> list[Recommendation]:
        items = self.store.find(list(ids))  # ids deleted meanwhile are simply absent
        out = []
        for item_id, score in zip(ids, scores):
            item = items.get(item_id)
            if item is None:  # removed from the catalogue after the index was saved
                continue
            details = item.to_json()
            out.append(Recommendation(id=item_id, score=float(score), title=item.title,
                                      category=item.category, image=details.get("image"),
                                      attributes=item.filter_attributes()))
        return out

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self, *, class_column: str = "category", index: str | None = None,
                 query_split: str | None = "test", gallery_split: str | None = "train",
                 ks: Sequence[int] = (1, 5, 10), map_at: int = 100, grid_queries: int = 12,
                 out_dir: str | Path | None = None, progress: bool = False):
        """Class-match retrieval quality of an index's embeddings.

        Queries are the ``query_split`` items against the ``gallery_split`` items; when the
        catalogue has no such splits, every item is a query against all others (leave-one-out).
        Writes ``eval.json``, a Markdown table and an HTML result grid into ``out_dir``
        (default ``<project>/reports/eval-<index>/``) and returns the
        :class:`~lookalike.evaluate.retrieval.RetrievalReport`.
        """
        from lookalike.evaluate.retrieval import evaluate_retrieval

        loaded = self._index(index)
        frame = self.store.frame()
        if class_column not in frame.columns:
            raise LookalikeError(f"class column {class_column!r} is not in the catalogue; "
                                 f"columns: {', '.join(map(str, frame.columns))}")
        frame = frame[frame[class_column].notna()]
        frame = frame[frame.index.isin(set(loaded.hashes))]
        splits = frame["split"] if "split" in frame.columns else None
        use_splits = (splits is not None and query_split and gallery_split
                      and (splits == query_split).any() and (splits == gallery_split).any())
        if use_splits:
            queries = frame[splits == query_split]
            gallery = frame[splits == gallery_split]
        else:
            queries = gallery = frame
        query_vectors = loaded.vectors_of(list(queries.index), self.store)
        gallery_vectors = (query_vectors if gallery is queries
                           else loaded.vectors_of(list(gallery.index), self.store))
        report = evaluate_retrieval(
            query_vectors, queries[class_column].astype(str).to_numpy(),
            gallery_vectors, gallery[class_column].astype(str).to_numpy(),
            ks=tuple(ks), map_at=map_at, query_ids=list(queries.index),
            gallery_ids=list(gallery.index), leave_one_out=not use_splits, progress=progress)
        out = Path(out_dir) if out_dir else self.path / "reports" / f"eval-{loaded.name}"
        if not self.read_only or out_dir:
            self._write_eval_outputs(out, report, queries, gallery, query_vectors, gallery_vectors,
                                     class_column, grid_queries, not use_splits)
        return report

    def _write_eval_outputs(self, out: Path, report, queries, gallery, query_vectors,
                            gallery_vectors, class_column: str, grid_queries: int,
                            leave_one_out: bool) -> None:
        from lookalike.evaluate.report import write_result_grid_html
        from lookalike.evaluate.retrieval import neighbours

        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "eval.json", json.dumps(report.to_json(), indent=2))
        if grid_queries <= 0 or len(queries) == 0:
            return
        rng = np.random.default_rng(0)
        picks = np.sort(rng.choice(len(queries), size=min(grid_queries, len(queries)),
                                   replace=False))
        ids, scores = neighbours(query_vectors[picks], gallery_vectors, k=5,
                                 query_ids=[queries.index[p] for p in picks] if leave_one_out
                                 else None, gallery_ids=list(gallery.index))
        rows = []
        for row, p in enumerate(picks):
            query = queries.iloc[p]
            rows.append({
                "query": self._grid_cell(queries.index[p], query, class_column),
                "results": [dict(self._grid_cell(g, gallery.loc[g], class_column),
                                 score=float(s),
                                 match=str(gallery.loc[g][class_column]) == str(query[class_column]))
                            for g, s in zip(ids[row], scores[row])],
            })
        write_result_grid_html(out / "results.html", rows,
                               title=f"lookalike evaluation ({class_column})")

    def _grid_cell(self, item_id: str, row, class_column: str) -> dict[str, Any]:
        return {"id": str(item_id), "image": str(self.store.get(str(item_id)).image_path),
                "title": row.get("title") or str(item_id), "label": str(row[class_column])}

    # ---- updates for the service -------------------------------------------------------------
    def add_item(self, item_id: str, image: bytes, attributes: Mapping[str, Any] | None = None,
                 *, index: str | None = None) -> dict[str, Any]:
        """Add or replace one item (image bytes + attributes) and update the index in place.

        ``attributes`` may hold title, category, gender, colour, price, split and any other
        JSON-able values. A bad image raises :class:`~lookalike.errors.ImageRejected` and changes
        nothing. Returns the stored item's details.
        """
        self._require_writable("add items")
        from lookalike.catalogue.sources import SourceRecord

        attributes = dict(attributes or {})
        standard = {name: attributes.pop(name, None)
                    for name in ("title", "category", "gender", "colour", "split")}
        price = attributes.pop("price", None)
        try:
            price = None if price in (None, "") else float(price)
        except (TypeError, ValueError):
            raise LookalikeError(f"item {item_id!r}: price {price!r} is not a number") from None
        record = SourceRecord(id=str(item_id), image=bytes(image), price=price,
                              attributes=attributes, row=f"item {item_id}",
                              **{k: (None if v is None else str(v)) for k, v in standard.items()})
        with self.write_lock():
            report = self.ingest([record], progress=False)
            if report.rejected:
                reject = report.rejected[0]
                raise ImageRejected(reject.reason, reject.message)  # message names the item
            name = index or self.default_index_name()
            if name:
                self.refresh_index(name)
        return self.item(str(item_id))

    def remove_items(self, ids: Iterable[str], *, index: str | None = None) -> int:
        """Remove items from the catalogue and the index, persisting both."""
        self._require_writable("remove")
        ids = [str(i) for i in ids]
        with self.write_lock():
            removed = self.store.remove(ids)
            name = index or self.default_index_name()
            if name:
                self.refresh_index(name)
        return removed

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
            with open(self.path / ".write.lock", "a+") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                self._lock_depth = 1
                try:
                    yield
                finally:
                    self._lock_depth = 0
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def refresh_index(self, name: str | None = None, *, progress: bool = False) -> IndexSummary:
        """Bring index ``name`` up to date with the catalogue using its own embedder."""
        name = name or self.default_index_name()
        if not name:
            raise UnknownNameError("no index yet; run `lookalike index` first")
        folder = current_version(self.path / "indexes" / name)
        if folder is None:
            raise UnknownNameError(f"index {name!r} does not exist in {self.path}")
        entry = self.settings["indexes"][name]
        return self.index(str(folder / INDEX_EMBEDDER_DIR), kind=entry["kind"], name=name,
                          progress=progress)

    # ---- personalisation and shop the look (thin: the functions live in lookalike.recommend) ----
    def recommend(self, history: str | Sequence[str], k: int = 10, method: str = "centroid",
                  filters: Filters | None = None, diversity: float = 0.0, *,
                  index: str | None = None, **options: Any) -> list[Recommendation]:
        """Personalised picks from a viewing history (ids, or "id,id"); seen items excluded.
        ``method``: centroid, knn-vote or latent-svm. See :func:`lookalike.recommend.personal.recommend`."""
        from lookalike.recommend.personal import recommend

        return recommend(self, history, k=k, method=method, filters=filters,
                         diversity=diversity, index=index, **options)

    def look(self, scene: str | Path | bytes | Image.Image, *, history: Any = None,
             like: str | None = None, k: int = 5, **options: Any) -> dict[str, Any]:
        """Shop the look: the regions of a scene photo worth shopping, each with the most similar
        products. See :func:`lookalike.recommend.look.look` for the options."""
        from lookalike.recommend.look import look

        return look(self, _as_image(scene), history=history, like=like, k=k, **options)

    # ---- introspection -----------------------------------------------------------------------
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

    # ---- internals -----------------------------------------------------------------------------
    def index_name(self, name: str | None = None) -> str:
        """The index a query naming ``name`` uses (None: the project's default), checked to
        exist; a one-line UnknownNameError otherwise."""
        if not (name or self.default_index_name()):
            self._reload_settings()  # a writer process may have built the first index since
        name = name or self.default_index_name()
        if not name:
            raise UnknownNameError(f"{self.path}: no index yet; run `lookalike index` first")
        if current_version(self.path / "indexes" / name) is None:
            raise UnknownNameError(f"index {name!r} does not exist in {self.path}; "
                                   f"known: {', '.join(self.indexes()) or 'none'}")
        return name

    def _index(self, name: str | None) -> "_LoadedIndex":
        name = self.index_name(name)
        with self._lock:
            folder = current_version(self.path / "indexes" / name)
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
            loaded = _LoadedIndex.open(name, folder, self.path, embedder=reuse)
            self._loaded[name] = loaded
            return loaded

    def _require_writable(self, what: str) -> None:
        if self.read_only:
            raise StoreError(f"{self.path}: opened read-only; cannot {what}")

    def _reload_settings(self) -> None:
        self.settings = json.loads((self.path / PROJECT_FILE).read_text())

    def _write_settings(self, settings: dict[str, Any]) -> None:
        atomic_write_text(self.path / PROJECT_FILE, json.dumps(settings, indent=2, sort_keys=True))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


@dataclass
class _LoadedIndex:
    """An index version with the embedder that built it and the cache of its vectors."""

    name: str
    folder: Path
    index: VectorIndex
    embedder: Any
    hashes: dict[str, str]
    cache: Any
    journal_seen: int = 0  # journal entries of ``folder`` already applied to ``index``

    @classmethod
    def open(cls, name: str, folder: Path, project_path: Path,
             embedder: Any = None) -> "_LoadedIndex":
        """Load an index version; ``embedder`` (the one already loaded) is reused when the new
        version was built by the same model, which spares reloading weights on every update."""
        from lookalike.models import base as models
        from lookalike.models.cache import EmbeddingCache

        saved = json.loads((folder / INDEX_EMBEDDER_DIR / models.CONFIG_FILE).read_text())
        if embedder is None or embedder.embedder_id != saved.get("embedder_id"):
            embedder = models.load(folder / INDEX_EMBEDDER_DIR)
        index = load_index(folder / "index", expected_dim=embedder.dim)
        if index.embedder_id and index.embedder_id != embedder.embedder_id:
            was = saved.get("config", {}).get("precision")
            if was and was != embedder.config().get("precision"):
                raise ModelMismatchError(
                    f"index {name!r} holds {was} vectors, but {was} drifts from fp32 on this CPU "
                    f"(int8 self-check); rebuild it here with `lookalike index --precision "
                    f"{embedder.config().get('precision')} --name {name}`")
            raise ModelMismatchError(f"{folder}: index built with {index.embedder_id}, "
                                     f"model is {embedder.embedder_id}")
        hashes = json.loads((folder / INDEX_HASHES_FILE).read_text())
        entries = journal.read(folder)
        journal.replay(entries, index, hashes)
        cache = EmbeddingCache(project_path / "embeddings" / embedder.embedder_id,
                               embedder.embedder_id, embedder.dim)
        return cls(name, folder, index, embedder, hashes, cache, len(entries))

    def catch_up(self) -> int:
        """Apply journal entries another process appended since; returns how many."""
        entries = journal.read(self.folder, start=self.journal_seen)
        journal.replay(entries, self.index, self.hashes)
        self.journal_seen += len(entries)
        return len(entries)

    def vectors_of(self, ids: Sequence[str], store) -> np.ndarray:
        keys = []
        for item_id in ids:
            if item_id not in self.hashes:
                if item_id in store:
                    raise UnknownItemError(f"item {item_id!r} is not indexed yet; run "
                                           "`lookalike index` to add it")
                raise UnknownItemError(f"unknown item {item_id!r}")
            keys.append(self.hashes[item_id])
        vectors, found = self.cache.lookup(keys)
        if not found.all():
            missing = [ids[n] for n in np.flatnonzero(~found)[:3]]
            raise StoreError(f"embeddings missing from the cache for {missing}; re-run "
                             "`lookalike index`")
        return vectors

    def vector_of(self, item_id: str, store) -> np.ndarray:
        return self.vectors_of([item_id], store)[0]


def _as_image(image: str | Path | bytes | Image.Image) -> Image.Image:
    from lookalike.catalogue.images import as_image  # lazily: keeps `import lookalike` light

    return as_image(image)


def remove_project(path: str | Path) -> None:
    """Delete a project directory (used by tests and `lookalike demo --fresh`)."""
    path = Path(path)
    if (path / PROJECT_FILE).is_file():
        shutil.rmtree(path)
    elif path.exists():
        raise StoreError(f"{path}: not a lookalike project; refusing to delete it")


__all__ = ["Project", "IndexSummary", "Recommendation", "Filters", "remove_project",
           "DEFAULT_PROJECT_DIR", "DEFAULT_EMBEDDER"]
