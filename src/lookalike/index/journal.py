"""An append-only change journal beside a saved index version, so small updates stay small.

A service that adds or removes one product should not rewrite a 44k-item index (tens of MB) and
its model on every request. Instead, each small update is appended to the current index version
as one journal entry; readers replay the entries they have not seen on top of the snapshot they
loaded. When the journal grows past a threshold the writer compacts: it saves a new full version
(with an empty journal) the usual atomic way.

Layout inside an index version folder ``indexes/<name>/v000042/``::

    journal/000001.npy    float32 [n, dim] vectors of the upserted items
    journal/000001.json   {"upsert": [ids], "attributes": [{...}], "hashes": {id: content hash},
                           "remove": [ids]}

An entry is complete once its JSON exists: the ``.npy`` is written (atomically) first, the JSON
last, so a crash mid-write leaves at most an orphan ``.npy`` that the next write replaces.
Entries are read in number order and only while the numbers are contiguous. Backend-neutral:
only ids, float32 rows and JSON attributes cross this module, through the VectorIndex interface.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import StoreError
from lookalike.index.base import VectorIndex
from lookalike.storage import atomic_write_bytes, atomic_write_text

JOURNAL_DIR = "journal"
#: Compact (write a new full version) once the journal holds this many entries or items:
#: replaying is cheap, but every reader that opens the version replays all of it.
MAX_ENTRIES = 256
MAX_ITEMS = 4096


@dataclass
class JournalEntry:
    """One applied update: upserted ids with their vectors, attributes and hashes; removed ids."""

    upsert: list[str] = field(default_factory=list)
    vectors: np.ndarray | None = None
    attributes: list[dict[str, Any]] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.upsert) + len(self.remove)


def _entry_numbers(folder: Path) -> list[int]:
    """Numbers of the complete entries, in order, stopping at the first gap."""
    journal = folder / JOURNAL_DIR
    try:
        names = [p.name for p in journal.iterdir() if p.suffix == ".json"]
    except FileNotFoundError:
        return []
    numbers = sorted(int(n[:-5]) for n in names if n[:-5].isdigit())
    contiguous = []
    for expected, number in enumerate(numbers, start=1):
        if number != expected:
            break
        contiguous.append(number)
    return contiguous


def entry_count(folder: str | Path) -> int:
    """How many complete entries the journal of an index version holds."""
    return len(_entry_numbers(Path(folder)))


def item_count(folder: str | Path) -> int:
    """How many item changes (upserts + removals) the journal holds (reads the JSON only)."""
    folder = Path(folder)
    total = 0
    for number in _entry_numbers(folder):
        meta = json.loads((folder / JOURNAL_DIR / f"{number:06d}.json").read_text())
        total += len(meta.get("upsert", ())) + len(meta.get("remove", ()))
    return total


def append(folder: str | Path, upsert: Sequence[str], vectors: np.ndarray,
           attributes: Sequence[Mapping[str, Any]], hashes: Mapping[str, str],
           remove: Sequence[str]) -> int:
    """Append one entry to the journal of index version ``folder``; returns its number.

    The caller holds the project's write lock (one writer at a time).
    """
    folder = Path(folder)
    number = entry_count(folder) + 1
    base = folder / JOURNAL_DIR / f"{number:06d}"
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) != len(upsert):
        raise StoreError(f"{base}: {len(upsert)} ids but {len(vectors)} vectors")
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    atomic_write_bytes(base.with_suffix(".npy"), buffer.getvalue())
    atomic_write_text(base.with_suffix(".json"), json.dumps({
        "upsert": list(upsert), "attributes": [dict(a) for a in attributes],
        "hashes": dict(hashes), "remove": list(remove)}))
    return number


def read(folder: str | Path, start: int = 0) -> list[JournalEntry]:
    """The complete entries after the first ``start`` ones (an empty list when none)."""
    folder = Path(folder)
    entries = []
    for number in _entry_numbers(folder)[start:]:
        base = folder / JOURNAL_DIR / f"{number:06d}"
        try:
            meta = json.loads(base.with_suffix(".json").read_text())
            vectors = np.load(base.with_suffix(".npy"), allow_pickle=False)
        except (OSError, ValueError) as error:
            raise StoreError(f"{base}: unreadable journal entry ({error})") from None
        entries.append(JournalEntry(upsert=list(meta["upsert"]), vectors=vectors,
                                    attributes=list(meta["attributes"]),
                                    hashes=dict(meta["hashes"]), remove=list(meta["remove"])))
    return entries


def replay(entries: Sequence[JournalEntry], index: VectorIndex,
           hashes: dict[str, str]) -> None:
    """Apply entries, in order, to a loaded index and its id -> content-hash map (in place).

    An index that ``holds_writes`` (Milvus) has every entry already: only the map is updated."""
    write = not index.holds_writes
    for entry in entries:
        if entry.upsert:
            if write:
                index.add(entry.upsert, entry.vectors, entry.attributes)
            hashes.update(entry.hashes)
        if entry.remove:
            if write:
                index.remove(entry.remove)
            for item_id in entry.remove:
                hashes.pop(item_id, None)
