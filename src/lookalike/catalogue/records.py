"""What every catalogue source yields: :class:`SourceRecord`, collected in a :class:`CatalogueSource`.

A source keeps the **first** record of each id. Later records with an id already seen are set
aside in :attr:`CatalogueSource.duplicates` (with the row of the record that was kept), so an
ingest can reject them by row and carry on, or refuse the whole source in strict mode
(:meth:`CatalogueSource.duplicate_error`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookalike.catalogue.images import read_image_bytes
from lookalike.errors import CatalogueError, ImageRejected

#: Reject reason of a record whose id an earlier record of the same source already uses.
DUPLICATE_ID = "duplicate-id"


@dataclass
class SourceRecord:
    """One catalogue item as a source describes it, before its image is checked.

    ``image`` is the raw bytes (inline sources), a path to read, or None when the source gave no
    image (ingest rejects it as ``missing``). ``row`` says where the record came from, for
    messages: ``"manifest.csv:12"``, ``"shoes/a.jpg"``.
    """

    id: str
    image: bytes | Path | None
    title: str | None = None
    category: str | None = None
    gender: str | None = None
    colour: str | None = None
    price: float | None = None
    split: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    row: str = ""

    def read_image(self) -> bytes:
        """The raw image bytes (reads the file for path images); raises ImageRejected."""
        if self.image is None:
            raise ImageRejected("missing", "no image given", self.row or self.id)
        return read_image_bytes(self.image, self.row or str(self.image))


@dataclass(frozen=True)
class DuplicateRecord:
    """A record set aside because an earlier record (at ``kept_row``) has the same id."""

    record: SourceRecord
    kept_row: str

    @property
    def where(self) -> str:
        """The duplicate's row (or its id when the source gives no rows)."""
        return self.record.row or self.record.id

    def message(self) -> str:
        """One line for the rejects list."""
        return (f"{self.where}: id {self.record.id!r} is already used by {self.kept_row}; "
                "the first row with an id is kept")


class CatalogueSource:
    """A sized, re-iterable collection of :class:`SourceRecord` with unique ids.

    ``records`` may repeat ids: the first record of each id is kept, the others are listed in
    :attr:`duplicates` (``len`` and iteration cover the kept records only).
    """

    def __init__(self, name: str, records: Sequence[SourceRecord] | None = None) -> None:
        self.name = name
        self._records, self.duplicates = split_duplicates(records or [])

    def __iter__(self) -> Iterator[SourceRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} records)"

    def duplicate_error(self) -> CatalogueError | None:
        """The one-line error strict mode raises when ids repeat (None when they do not):
        ``m.csv: 2 duplicate ids: 'a' (m.csv:2, m.csv:4); 'b' (m.csv:3, m.csv:6)``."""
        if not self.duplicates:
            return None
        rows: dict[str, list[str]] = {}
        for duplicate in self.duplicates:
            rows.setdefault(duplicate.record.id, [duplicate.kept_row]).append(duplicate.where)
        shown = [f"{item_id!r} ({', '.join(where)})" for item_id, where in list(rows.items())[:5]]
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        return CatalogueError(f"{self.name}: {len(rows)} duplicate id"
                              f"{'s' if len(rows) > 1 else ''}: {'; '.join(shown)}{more}")


def split_duplicates(records: Sequence[SourceRecord]
                     ) -> tuple[list[SourceRecord], list[DuplicateRecord]]:
    """``(first record of each id, the later ones)``, both in source order."""
    first_row: dict[str, str] = {}
    kept: list[SourceRecord] = []
    duplicates: list[DuplicateRecord] = []
    for record in records:
        if record.id in first_row:
            duplicates.append(DuplicateRecord(record, first_row[record.id]))
        else:
            first_row[record.id] = record.row or record.id
            kept.append(record)
    return kept, duplicates
