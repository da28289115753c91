"""What the HTTP layer calls: queries, item details and writes over one project directory.

Reads and writes go through two separate :class:`~lookalike.project.Project` objects. Readers use
a read-only project whose loaded index is only ever *replaced* (when the index's ``CURRENT``
pointer moves to a new version), never changed in place, so a query running during an update
sees either the old version or the new one. Writes go through a writable project, one at a time
(:meth:`Project.write_lock <lookalike.project.Project.write_lock>`: a thread lock plus an
``fcntl`` lock on ``<project>/.write.lock``, so writers in other processes wait too), and each
write persists a new index version atomically; every reader -- in this process or another
worker -- switches to it on its next query."""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from lookalike.api import (
    Filters,
    LookalikeError,
    Project,
    Recommendation,
    StoreError,
    UnknownItemError,
)
from lookalike.serve.settings import ServeSettings
from lookalike.serve.uploads import decode_upload

log = logging.getLogger("lookalike.serve")
T = TypeVar("T")
_READ_ATTEMPTS = 3

#: Columns whose values a filter may name; values are checked against the catalogue.
EQUALITY_FILTERS = ("category", "gender", "colour")
IMAGE_MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png",
                     ".webp": "image/webp", ".gif": "image/gif", ".bmp": "image/bmp",
                     ".tif": "image/tiff", ".tiff": "image/tiff"}


class FilterValueError(LookalikeError):
    """A filter names a value the catalogue does not have, or an empty price range."""


@dataclass
class _CatalogueView:
    """Facts about the catalogue that only change when the index version changes."""

    version: str | None
    ids: list[str]
    values: dict[str, list[str]]
    price_range: tuple[float, float] | None


class LookalikeService:
    """The service's state and operations for one project directory (thread-safe)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.project_dir = Path(settings.project).expanduser().resolve()
        self._reader = Project(self.project_dir, create=False, read_only=True)
        self._writer: Project | None = None
        self._state_lock = threading.Lock()
        self._view: _CatalogueView | None = None
        self._view_lock = threading.Lock()
        slots = settings.max_concurrent_embeddings or (os.cpu_count() or 1)
        # Embedding a photo is CPU-bound; more at once than there are cores only adds latency.
        self._embed_slots = threading.BoundedSemaphore(slots)
        self._warm_version: str | None = None

    @property
    def project(self) -> Project:
        """The read-only project queries use (other routers read through it too)."""
        return self._reader

    @property
    def embed_slots(self) -> threading.BoundedSemaphore:
        """Hold one while doing CPU-heavy work per request (embedding a photo, say)."""
        return self._embed_slots

    # ---- readiness -------------------------------------------------------------------------
    def index_version(self) -> str | None:
        """The served index's current version folder, with ``+N`` when N small updates were
        appended to it since (see lookalike.index.journal); None before the first index."""
        name = self.index_name()
        if not name:
            # The first index may have been built since we opened the project.
            name = self._default_index_on_disk()
            if not name:
                return None
            with self._state_lock:
                self._reader = Project(self.project_dir, create=False, read_only=True)
        return self._reader.index_version(name)

    def index_name(self) -> str | None:
        """The index queries use: ``settings.index``, else the project's default index."""
        return self.settings.index or self._reader.default_index_name()

    def _default_index_on_disk(self) -> str | None:
        try:
            return Project(self.project_dir, create=False, read_only=True).default_index_name()
        except (LookalikeError, OSError, ValueError, AttributeError):
            return None

    def warm_up(self) -> bool:
        """Load the index and embedder and run one tiny query; True when ready to serve."""
        version = self.index_version()
        if version is None:
            return False
        if version == self._warm_version:
            return True
        try:
            self._reader.embed_query(Image.new("RGB", (32, 32), (200, 200, 200)),
                                     index=self.index_name())
        except LookalikeError as error:
            log.warning("index not ready: %s", error)
            return False
        self._warm_version = version
        return True

    # ---- queries ---------------------------------------------------------------------------
    def search(self, data: bytes, k: int, filters: Filters | None) -> list[Recommendation]:
        """Products most like an uploaded photo (bytes are sniffed and size-checked)."""
        image = decode_upload(data, self.settings.max_pixels)
        with self._embed_slots:
            return self.read(lambda: self._reader.search(image, k=k, filters=filters,
                                                          index=self.index_name()))

    def similar(self, item_id: str, k: int, filters: Filters | None) -> list[Recommendation]:
        """More like catalogue item ``item_id``."""
        return self.read(lambda: self._reader.similar(item_id, k=k, filters=filters,
                                                       index=self.index_name()))

    def read(self, query: Callable[[], T]) -> T:
        """Run a query; if the index version it was loading has been replaced meanwhile (a writer
        swapped ``CURRENT`` and pruned the old folder while we read it), load the new one."""
        for attempt in range(_READ_ATTEMPTS):
            version = self.index_version()
            try:
                return query()
            except StoreError:
                if attempt + 1 == _READ_ATTEMPTS or self.index_version() == version:
                    raise  # really damaged, not just replaced
                log.info("index version %s was replaced while loading; retrying", version)
        raise AssertionError("unreachable")

    def item(self, item_id: str) -> dict[str, Any]:
        """Catalogue details of one item."""
        return self._reader.item(item_id)

    def image_file(self, item_id: str) -> tuple[Path, str]:
        """The stored image of an item and its media type, only from ``<project>/images/``."""
        path = self._reader.store.get(item_id).image_path.resolve()
        root = self._reader.layout.images.resolve()
        if not path.is_relative_to(root) or not path.is_file():
            # A row pointing outside the image store is never followed.
            log.warning("item %r: image path outside the image store refused", item_id)
            raise UnknownItemError(f"no stored image for item {item_id!r}")
        return path, IMAGE_MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")

    def random_items(self, n: int, seed: int | None = None) -> list[dict[str, Any]]:
        """``n`` random catalogue items (details), to start browsing from."""
        ids = self._catalogue_view().ids
        picks = random.Random(seed).sample(ids, min(n, len(ids)))
        found = self._reader.store.find(picks)
        return [found[i].to_json() for i in picks if i in found]

    def count(self) -> int:
        """Items in the catalogue (as of the current index version)."""
        return len(self._catalogue_view().ids)

    def list_items(self, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
        """A page of items in catalogue order, and the total count."""
        ids = self._catalogue_view().ids
        page = ids[offset:offset + limit]
        found = self._reader.store.find(page)
        return len(ids), [found[i].to_json() for i in page if i in found]

    def summary(self) -> dict[str, Any]:
        """Size, embedder, index type and filter values."""
        view = self._catalogue_view()
        name = self.index_name()
        entry = self._reader.indexes().get(name or "", {})
        index = None
        if name:
            index = {"name": name, "kind": entry.get("kind"), "embedder": entry.get("embedder"),
                     "embedder_id": entry.get("embedder_id"), "version": view.version}
        filters: dict[str, Any] = dict(view.values)
        filters["price"] = list(view.price_range) if view.price_range else None
        return {"items": len(view.ids), "index": index, "filters": filters}

    def filters(self, *, category: Sequence[str] | None = None,
                gender: Sequence[str] | None = None, colour: Sequence[str] | None = None,
                price_min: float | None = None, price_max: float | None = None) -> Filters | None:
        """Validated :class:`Filters` (None when no filter is set); unknown values raise."""
        given = {"category": category, "gender": gender, "colour": colour}
        view = self._catalogue_view()
        for column, values in given.items():
            for value in values or ():
                if value not in view.values.get(column, ()):
                    known = view.values.get(column, [])
                    shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
                    raise FilterValueError(f"{column} {value!r} is not in the catalogue; "
                                           f"known values: {shown or 'none'}")
        try:
            built = Filters.of(category=category or None, gender=gender or None,
                               colour=colour or None, price_min=price_min, price_max=price_max)
        except LookalikeError as error:
            raise FilterValueError(str(error)) from None
        return None if built.is_empty() else built

    def _catalogue_view(self) -> _CatalogueView:
        version = self.index_version()
        view = self._view
        if view is not None and view.version == version:
            return view
        # One thread rebuilds; the others wait for it instead of all rebuilding at once (after
        # an update, every concurrent request would otherwise redo the same queries).
        with self._view_lock:
            view = self._view
            if view is not None and view.version == version:
                return view
            store = self._reader.store
            values = {column: store.values(column) for column in EQUALITY_FILTERS}
            prices = [float(v) for v in store.values("price")]
            view = _CatalogueView(version=version, ids=store.ids(), values=values,
                                  price_range=(min(prices), max(prices)) if prices else None)
            self._view = view
            return view

    # ---- writes ----------------------------------------------------------------------------
    def put_item(self, item_id: str, data: bytes, attributes: Mapping[str, Any]) -> bool:
        """Add or replace an item and update the index; True when the item is new."""
        decode_upload(data, self.settings.max_pixels)  # reject bad uploads before locking
        writer = self._writable()
        with writer.write_lock():  # so "created" and the write are one step
            created = item_id not in writer.store
            writer.add_item(item_id, data, dict(attributes), index=self.index_name())
        self._view = None
        return created

    def delete_item(self, item_id: str) -> None:
        """Remove an item from the catalogue and the index (404 when unknown)."""
        writer = self._writable()
        with writer.write_lock():
            if item_id not in writer.store:
                raise UnknownItemError(f"unknown item {item_id!r}")
            writer.remove_items([item_id], index=self.index_name())
        self._view = None

    def _writable(self) -> Project:
        # Opened on the first write only: a read-mostly service holds one copy of the index.
        with self._state_lock:
            if self._writer is None:
                self._writer = Project(self.project_dir, create=False, read_only=False)
            return self._writer

    def close(self) -> None:
        for project in (self._reader, self._writer):
            if project is not None:
                project.close()
