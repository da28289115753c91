"""The project's catalogue: item metadata in SQLite, images in a content-addressed folder.

Layout inside the project directory::

    catalogue.sqlite          items, rejects, meta(format_version) -- SQLite in WAL mode
    images/ab/<sha256>.jpg    one file per distinct image content (sha256 of the stored bytes)

Every write is one SQLite transaction, so a crash never leaves half a batch, and WAL lets any
number of reader processes (the REST workers) read while one process writes. Image files are
written to a temporary name and renamed, and are flushed to disk before the rows that point at
them are committed, so a committed row never points at a missing or partial image.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from lookalike.catalogue.entries import Item, Reject, now_iso  # noqa: F401  (re-exported)
from lookalike.catalogue.images import decode_image, sha256_hex
from lookalike.errors import StoreError, UnknownItemError
from lookalike.layout import CATALOGUE_FILE, IMAGES_DIR
from lookalike.storage import atomic_write_bytes

#: Item fields that are columns of their own (and filter columns for the index).
ITEM_COLUMNS = ("title", "category", "gender", "colour", "price", "split")
_CHUNK = 500  # ids per SQL "IN (...)" query, well under SQLite's parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order, kept by updates
    id           TEXT NOT NULL UNIQUE,
    content_hash TEXT NOT NULL,      -- sha256 of the stored image bytes (names the file)
    source_hash  TEXT NOT NULL,      -- sha256 of the bytes the source gave (incremental ingest)
    image_path   TEXT NOT NULL,      -- relative to the project directory
    title TEXT, category TEXT, gender TEXT, colour TEXT, price REAL, split TEXT,
    attributes   TEXT NOT NULL DEFAULT '{}',
    width INTEGER NOT NULL, height INTEGER NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_split ON items(split);
CREATE TABLE IF NOT EXISTS rejects (
    key TEXT PRIMARY KEY,            -- item id (or source) so a re-run replaces, not repeats
    item_id TEXT, source TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
    at TEXT NOT NULL
);
"""


class CatalogueStore:
    """Items and rejects in ``<project>/catalogue.sqlite``, images under ``<project>/images/``.

    Safe to share between threads (one connection behind a lock) and between processes (each
    opens its own store; SQLite WAL serialises writers and never blocks readers).
    """

    FORMAT_VERSION: ClassVar[int] = 1

    def __init__(self, project_dir: str | Path, create: bool = True) -> None:
        self.project_dir = Path(project_dir).resolve()
        self.images_dir = self.project_dir / IMAGES_DIR
        self.path = self.project_dir / CATALOGUE_FILE
        if not self.path.is_file():
            if not create:
                raise StoreError(f"{self.project_dir}: no catalogue here ({CATALOGUE_FILE} is "
                                 "missing); ingest a catalogue first")
            self.project_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 60000")
            self._open_schema(create)
        except sqlite3.DatabaseError as error:
            raise StoreError(f"{self.path}: not a lookalike catalogue or damaged ({error})") \
                from None
        if create:
            self.images_dir.mkdir(parents=True, exist_ok=True)

    def _open_schema(self, create: bool) -> None:
        version = self._format_version()
        if version is None:
            if not create:
                raise StoreError(f"{self.path}: empty catalogue database")
            self._db.execute("PRAGMA journal_mode = WAL")  # persistent; set once at creation
            with self._transaction():  # IF NOT EXISTS: two processes may race to create it
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES "
                                 "('format_version', ?)", (str(self.FORMAT_VERSION),))
            version = self._format_version()
        if version is not None and version > self.FORMAT_VERSION:
            raise StoreError(f"{self.path}: catalogue format version {version} is newer than "
                             f"this lookalike understands ({self.FORMAT_VERSION}); upgrade "
                             "lookalike")
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: atomic, fast commits

    def _format_version(self) -> int | None:
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if not exists:
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key = 'format_version'").fetchone()
        return int(row[0]) if row else None

    # ---- transactions ----------------------------------------------------------------------
    class _Transaction:
        def __init__(self, store: CatalogueStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            self.store._db.execute("BEGIN IMMEDIATE")  # take the write lock up front
            return self.store._db

        def __exit__(self, kind: object, *rest: object) -> None:
            try:
                self.store._db.execute("ROLLBACK" if kind else "COMMIT")
            finally:
                self.store._lock.release()

    def _transaction(self) -> CatalogueStore._Transaction:
        return CatalogueStore._Transaction(self)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # ---- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM items")[0][0])

    def __contains__(self, item_id: object) -> bool:
        return bool(self._query("SELECT 1 FROM items WHERE id = ?", (str(item_id),)))

    def ids(self, split: str | None = None) -> list[str]:
        """Every item id in insertion order (optionally only one split)."""
        if split is None:
            rows = self._query("SELECT id FROM items ORDER BY seq")
        else:
            rows = self._query("SELECT id FROM items WHERE split = ? ORDER BY seq", (split,))
        return [row[0] for row in rows]

    def get(self, item_id: str) -> Item:
        """One item; :class:`UnknownItemError` when it is not in the catalogue."""
        rows = self._query(f"SELECT {_ITEM_FIELDS} FROM items WHERE id = ?", (str(item_id),))
        if not rows:
            raise UnknownItemError(f"unknown item {item_id!r}")
        return self._item(rows[0])

    def items(self, ids: Sequence[str] | None = None) -> Iterator[Item]:
        """Items in insertion order, or in the order of ``ids`` (unknown ids raise)."""
        if ids is None:
            with self._lock:
                rows = self._db.execute(f"SELECT {_ITEM_FIELDS} FROM items ORDER BY seq")
                batch = rows.fetchall()
            for row in batch:
                yield self._item(row)
            return
        for start in range(0, len(ids), _CHUNK):
            chunk = [str(i) for i in ids[start:start + _CHUNK]]
            found = {row[0]: row for row in self._query(
                f"SELECT {_ITEM_FIELDS} FROM items WHERE id IN ({_marks(chunk)})", chunk)}
            for item_id in chunk:
                if item_id not in found:
                    raise UnknownItemError(f"unknown item {item_id!r}")
                yield self._item(found[item_id])

    def find(self, ids: Sequence[str]) -> dict[str, Item]:
        """The items among ``ids`` that exist, by id (unknown ids are simply absent)."""
        found: dict[str, Item] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = [str(i) for i in ids[start:start + _CHUNK]]
            for row in self._query(
                    f"SELECT {_ITEM_FIELDS} FROM items WHERE id IN ({_marks(chunk)})", chunk):
                found[row[0]] = self._item(row)
        return found

    def content_hashes(self, ids: Sequence[str] | None = None) -> dict[str, str]:
        """id -> sha256 of the stored image bytes (all items, or those of ``ids`` that exist)."""
        if ids is None:
            return dict(self._query("SELECT id, content_hash FROM items ORDER BY seq"))
        out: dict[str, str] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = [str(i) for i in ids[start:start + _CHUNK]]
            out.update(self._query(
                f"SELECT id, content_hash FROM items WHERE id IN ({_marks(chunk)})", chunk))
        return out

    def image_path(self, item_id: str) -> Path:
        """Absolute path of an item's stored image."""
        rows = self._query("SELECT image_path FROM items WHERE id = ?", (str(item_id),))
        if not rows:
            raise UnknownItemError(f"unknown item {item_id!r}")
        return self.project_dir / rows[0][0]

    def open_image(self, item_id: str) -> Image.Image:
        """An item's image as RGB, decoded with :func:`lookalike.catalogue.images.decode_image`."""
        return decode_image(self.image_path(item_id), source=f"item {item_id!r}")

    def frame(self):  # -> pandas.DataFrame
        """One row per item (index = id, insertion order): the item fields, ``image_path``
        (absolute), ``content_hash``, ``width``, ``height`` and every attribute as a column."""
        import pandas as pd

        records = []
        for item in self.items():
            records.append({**item.attributes, "content_hash": item.content_hash,
                            "image_path": str(item.image_path), "title": item.title,
                            "category": item.category, "gender": item.gender,
                            "colour": item.colour, "price": item.price, "split": item.split,
                            "width": item.width, "height": item.height, "id": item.id})
        columns = ["id", "title", "category", "gender", "colour", "price", "split",
                   "content_hash", "image_path", "width", "height"]
        frame = pd.DataFrame.from_records(records, columns=None if records else columns)
        extra = [c for c in frame.columns if c not in columns]
        return frame[columns + extra].set_index("id")

    def values(self, column: str) -> list[str]:
        """Distinct non-empty values of a filter column (``category``, ``gender``, ``colour``,
        ``split`` or any attribute), sorted, as strings."""
        if column in ITEM_COLUMNS:
            rows = self._query(f"SELECT DISTINCT {column} FROM items WHERE {column} IS NOT NULL")
        else:
            path = '$."' + column.replace('"', '') + '"'
            rows = self._query("SELECT DISTINCT json_extract(attributes, ?) FROM items "
                               "WHERE json_extract(attributes, ?) IS NOT NULL", (path, path))
        return sorted({_plain(row[0]) for row in rows})

    def value_counts(self, column: str) -> dict[str, int]:
        """Item count of each distinct non-empty value of a standard column (``category``,
        ``gender``, ``colour``, ``split``)."""
        if column not in ITEM_COLUMNS:
            raise StoreError(f"{column!r} is not a standard item column")
        rows = self._query(f"SELECT {column}, COUNT(*) FROM items WHERE {column} IS NOT NULL "
                           f"AND TRIM({column}) != '' GROUP BY {column}")
        return {_plain(value): int(n) for value, n in rows}

    def state(self) -> tuple[int, int, str]:
        """A cheap signature of the catalogue's content: (items, last row number, last update);
        it changes whenever an item is added, replaced or removed."""
        count, last, updated = self._query("SELECT COUNT(*), MAX(seq), MAX(updated_at) "
                                           "FROM items")[0]
        return int(count), int(last or 0), str(updated or "")

    def source_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        """id -> sha256 of the bytes the source gave, for the ids that exist."""
        out: dict[str, str] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = [str(i) for i in ids[start:start + _CHUNK]]
            out.update(self._query(
                f"SELECT id, source_hash FROM items WHERE id IN ({_marks(chunk)})", chunk))
        return out

    # ---- images ----------------------------------------------------------------------------
    def put_image(self, data: bytes, ext: str, *, durable: bool = True) -> tuple[str, Path]:
        """Store image bytes content-addressed; returns ``(sha256, absolute path)``.

        Idempotent: bytes already stored are not written again. The write is atomic (temporary
        file + rename). ``durable=False`` skips the per-file fsync; the caller then calls
        :meth:`sync_images` once before committing rows that point at the files (much faster
        for batches: one flush instead of one per file).
        """
        digest = sha256_hex(data)
        path = self.images_dir / digest[:2] / f"{digest}.{ext.lower().lstrip('.')}"
        if not path.is_file():
            if durable:
                atomic_write_bytes(path, data)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        return digest, path

    @staticmethod
    def sync_images() -> None:
        """Flush written image files to disk (see :meth:`put_image` with ``durable=False``)."""
        if hasattr(os, "sync"):
            os.sync()

    # ---- writing ---------------------------------------------------------------------------
    def upsert(self, items: Sequence[Item]) -> None:
        """Insert or replace items in one transaction (an update keeps the item's position)."""
        self.write_batch(items, ())

    def write_batch(self, items: Sequence[Item], rejects: Sequence[Reject]) -> None:
        """Upsert ``items`` and record ``rejects`` in ONE transaction; a stored item's earlier
        reject is cleared (it is fine now)."""
        stamp = now_iso()
        rows = [(item.id, item.content_hash, item.source_hash,
                 self._relative(item.image_path), item.title, item.category, item.gender,
                 item.colour, item.price, item.split,
                 json.dumps(item.attributes, sort_keys=True, ensure_ascii=False),
                 int(item.width), int(item.height), stamp) for item in items]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO items (id, content_hash, source_hash, image_path, title, category, "
                "gender, colour, price, split, attributes, width, height, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "content_hash = excluded.content_hash, source_hash = excluded.source_hash, "
                "image_path = excluded.image_path, title = excluded.title, "
                "category = excluded.category, gender = excluded.gender, "
                "colour = excluded.colour, price = excluded.price, split = excluded.split, "
                "attributes = excluded.attributes, width = excluded.width, "
                "height = excluded.height, updated_at = excluded.updated_at", rows)
            db.executemany("DELETE FROM rejects WHERE key = ?", [(item.id,) for item in items])
            db.executemany(
                "INSERT OR REPLACE INTO rejects (key, item_id, source, reason, message, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(r.item_id or r.source, r.item_id, r.source, r.reason, r.message, r.at)
                 for r in rejects])

    def remove(self, ids: Iterable[str]) -> int:
        """Delete items (one transaction); returns how many existed. Image files are kept
        (another item may share them)."""
        keys = [(str(i),) for i in ids]
        with self._transaction() as db:
            before = db.total_changes
            db.executemany("DELETE FROM items WHERE id = ?", keys)
            return db.total_changes - before

    def add_rejects(self, rejects: Sequence[Reject]) -> None:
        """Record rejects (one per item id / source: a newer reject replaces an older one)."""
        self.write_batch((), rejects)

    def rejects(self) -> list[Reject]:
        """The current rejects, oldest first."""
        rows = self._query("SELECT source, reason, message, at, item_id FROM rejects "
                           "ORDER BY at, rowid")
        return [Reject(*row) for row in rows]

    def clear_rejects(self) -> int:
        """Forget all recorded rejects; returns how many there were."""
        with self._transaction() as db:
            return db.execute("DELETE FROM rejects").rowcount

    def close(self) -> None:
        """Close the database connection (the store is unusable afterwards)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> CatalogueStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CatalogueStore({str(self.project_dir)!r})"

    # ---- helpers ---------------------------------------------------------------------------
    def _relative(self, path: Path) -> str:
        path = Path(path)
        try:
            return path.resolve().relative_to(self.project_dir).as_posix()
        except ValueError:
            raise StoreError(f"{path}: image is not inside the project's images folder "
                             f"({self.images_dir}); store it with put_image first") from None

    def _item(self, row: Sequence[Any]) -> Item:
        (item_id, content_hash, source_hash, image_path, title, category, gender, colour, price,
         split, attributes, width, height) = row
        return Item(id=item_id, content_hash=content_hash, image_path=self.project_dir / image_path,
                    title=title, category=category, gender=gender, colour=colour, price=price,
                    split=split, attributes=json.loads(attributes), width=width, height=height,
                    source_hash=source_hash)


_ITEM_FIELDS = ("id, content_hash, source_hash, image_path, title, category, gender, colour, "
                "price, split, attributes, width, height")


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def _plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
