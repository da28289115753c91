"""Ingest a catalogue source into a project's :class:`~lookalike.catalogue.store.CatalogueStore`.

* Every image is decoded once, with :func:`~lookalike.catalogue.images.decode`; a bad one becomes
  a :class:`~lookalike.catalogue.store.Reject` (in the report and in the store), never a crash.
* Incremental: an item whose id and raw image bytes (sha256) are unchanged costs no decode; if
  only its fields changed it is ``updated`` without a decode, otherwise it is ``unchanged``.
* Resumable: records are committed in batches of ``batch_size``, each batch in one transaction
  after its images are on disk, so an interrupted ingest keeps every finished batch and a re-run
  finds them unchanged and carries on.
* Duplicate ids: a folder's ids are unique by construction (:mod:`lookalike.catalogue.folders`);
  in a manifest or a list of records the first record of an id is ingested and every later one
  is a reject (reason ``duplicate-id``, by row). ``strict=True`` makes them a
  :class:`~lookalike.errors.CatalogueError` before anything is written instead.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any

from lookalike.catalogue.images import DEFAULT_MAX_PIXELS, decode, sha256_hex, storable_bytes
from lookalike.catalogue.folders import FolderSource
from lookalike.catalogue.records import DUPLICATE_ID, CatalogueSource, SourceRecord
from lookalike.catalogue.sources import open_source
from lookalike.catalogue.store import CatalogueStore, Item, Reject
from lookalike.errors import ImageRejected, LookalikeError

#: What to do with an incoming image that is a near-duplicate of one already in the catalogue (or
#: earlier in the same ingest): store it anyway, store it and list it in the report, or reject it.
DUPLICATE_IMAGE_POLICIES = ("keep", "warn", "skip")


@dataclass
class IngestReport:
    """What one ingest did. ``total`` = records in the source = added + updated + unchanged +
    rejected."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Reject] = field(default_factory=list)
    total: int = 0
    source: str = ""
    seconds: float = 0.0
    #: Near-duplicates found (``on_duplicate_image`` warn/skip): ``{"id", "duplicate_of",
    #: "distance", "skipped"}`` each (distance as the method measures it); skipped ones are also rejects with reason ``duplicate``.
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    #: Folder files sharing a stem (``photo.gif``, ``photo.tiff``): stem -> the ids they got.
    name_collisions: dict[str, list[str]] = field(default_factory=dict)

    def rejected_by_reason(self) -> dict[str, int]:
        """How many rejects of each reason, most common first."""
        return dict(Counter(r.reason for r in self.rejected).most_common())

    def summary(self) -> str:
        """One line for people: ``2000 items: 1990 added, 0 updated, 0 unchanged, 10 rejected
        (10 truncated) in 2.1 s``."""
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.rejected_by_reason().items())
        return (f"{self.total} items: {self.added} added, {self.updated} updated, "
                f"{self.unchanged} unchanged, {len(self.rejected)} rejected"
                + (f" ({reasons})" if reasons else "")
                + (f", {len(self.duplicates)} near-duplicates" if self.duplicates else "")
                + (f", {len(self.name_collisions)} shared file names kept their extension"
                   if self.name_collisions else "")
                + f" in {self.seconds:.1f} s")

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "total": self.total, "added": self.added,
                "updated": self.updated, "unchanged": self.unchanged,
                "rejected_count": len(self.rejected),
                "rejected_by_reason": self.rejected_by_reason(),
                "rejected": [r.to_json() for r in self.rejected],
                "duplicates": list(self.duplicates),
                "name_collisions": dict(self.name_collisions),
                "seconds": round(self.seconds, 3)}


def ingest(source: str | Path | CatalogueSource | Iterable[SourceRecord], store: CatalogueStore,
           *, progress: bool = True, batch_size: int = 256, on_duplicate_image: str = "keep",
           max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None,
           duplicate_threshold: float | None = None, duplicate_method: str = "copies",
           duplicate_neighbours: Any = None, duplicate_matcher: Any = None,
           strict: bool = False) -> IngestReport:
    """Add or update every record of ``source`` in ``store``; see the module docstring.

    ``source`` is anything :func:`~lookalike.catalogue.sources.open_source` accepts, or records.
    ``progress`` shows a Rich progress bar when stderr is a terminal. ``workers`` threads decode
    images (default: up to 4).

    ``on_duplicate_image``: ``"keep"`` stores near-duplicates as separate items without looking;
    ``"warn"`` stores them and lists them in ``report.duplicates``; ``"skip"`` rejects them
    (reason ``duplicate``). A near-duplicate is a copy of an item already in the catalogue or
    accepted earlier in this ingest, found with ``duplicate_method`` of
    :mod:`lookalike.recommend.duplicates`: ``copies`` (the default; ``duplicate_threshold`` is
    the smallest texture correlation, default 0.94; ``duplicate_neighbours(image)``, when given,
    adds the image's embedding neighbours to the hash candidates) or ``phash+colour``
    (``duplicate_threshold`` in bits, default 8 of 64). ``duplicate_matcher``, when given, is a
    ready matcher to use instead (the project's, which checks copy descriptors). Items that are
    unchanged are not checked.

    ``strict``: a source whose ids repeat is refused with a one-line CatalogueError before
    anything is written (default: the repeats are rejected by row and the rest is ingested).
    """
    if on_duplicate_image not in DUPLICATE_IMAGE_POLICIES:
        raise LookalikeError(f"on_duplicate_image={on_duplicate_image!r} is not supported; "
                             f"use one of {', '.join(DUPLICATE_IMAGE_POLICIES)}")
    if batch_size < 1:
        raise LookalikeError(f"batch_size must be at least 1, not {batch_size}")
    started = time.perf_counter()
    records = _as_source(source, store)
    if strict and (error := records.duplicate_error()) is not None:
        raise error
    report = IngestReport(total=len(records) + len(records.duplicates), source=records.name,
                          name_collisions=dict(getattr(records, "collisions", {})))
    _reject_duplicate_ids(records, store, report)
    workers = workers or min(4, os.cpu_count() or 1)
    matcher = None
    if on_duplicate_image != "keep":
        matcher = duplicate_matcher or _duplicate_matcher(store, duplicate_method,
                                                          duplicate_threshold)

    with _progress_bar(progress, f"ingest {records.name}", len(records)) as advance, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        for batch in _batches(iter(records), batch_size):
            existing = store.find([record.id for record in batch])
            outcomes = list(pool.map(
                lambda record, known=existing: _prepare(record, known.get(record.id), store,
                                                        max_pixels, matcher), batch))
            if matcher is not None:  # in source order, so the first of two copies is kept
                outcomes = [_check_duplicate(record, outcome, matcher, duplicate_neighbours,
                                             on_duplicate_image, report)
                            for record, outcome in zip(batch, outcomes)]
            to_write = [item for kind, item in outcomes if kind in ("added", "updated")]
            rejects = [reject for kind, reject in outcomes if kind == "rejected"]
            if any(kind != "unchanged" for kind, _ in outcomes):
                if to_write:
                    store.sync_images()  # images on disk before the rows that point at them
                store.write_batch(to_write, rejects)
            for kind, value in outcomes:
                if kind == "rejected":
                    report.rejected.append(value)
                else:
                    setattr(report, kind, getattr(report, kind) + 1)
            advance(len(batch))
    report.seconds = time.perf_counter() - started
    return report


def _duplicate_matcher(store: CatalogueStore, method: str, threshold: float | None) -> Any:
    from lookalike.catalogue.copies import CopyMatcher, CopySettings
    from lookalike.catalogue.copy_verify import MIN_TEXTURE
    from lookalike.catalogue.fingerprints import (MAX_COLOUR_DIFFERENCE, PHASH_THRESHOLD,
                                                  PHashMatcher)

    if method not in ("copies", "phash+colour", "phash"):
        raise LookalikeError(f"duplicate_method={method!r} is not supported at ingest; use "
                             "copies, phash+colour or phash")
    if threshold is None:  # the defaults of lookalike.recommend.duplicates.DEFAULT_THRESHOLDS
        threshold = MIN_TEXTURE if method == "copies" else PHASH_THRESHOLD
    if method == "copies":
        return CopyMatcher.for_store(store, CopySettings(min_texture=float(threshold)))
    if float(threshold) != int(threshold):
        raise LookalikeError(f"a {method} threshold is whole bits, not {threshold}")
    return PHashMatcher.for_store(store, int(threshold),
                                  None if method == "phash" else MAX_COLOUR_DIFFERENCE)


def _as_source(source: str | Path | CatalogueSource | Iterable[SourceRecord],
               store: CatalogueStore) -> CatalogueSource:
    """The source, with a folder's ids resolved against ``store`` (existing ids stay put)."""
    if isinstance(source, FolderSource):
        return source.for_catalogue(store.source_hashes)
    if isinstance(source, CatalogueSource):
        return source
    if isinstance(source, (str, Path)):
        return open_source(source, stored=store.source_hashes)
    return CatalogueSource("records", list(source))


def _reject_duplicate_ids(records: CatalogueSource, store: CatalogueStore,
                          report: IngestReport) -> None:
    """Record every set-aside duplicate row as a reject (keyed by its row, so it is not
    cleared when the item of the first row is stored, and a re-run replaces it)."""
    rejects = [Reject(source=d.where, reason=DUPLICATE_ID, message=d.message())
               for d in records.duplicates]
    if rejects:
        store.add_rejects(rejects)
        report.rejected.extend(rejects)


def _prepare(record: SourceRecord, existing: Item | None, store: CatalogueStore,
             max_pixels: int, matcher: Any = None) -> tuple[str, Any]:
    """Decide one record: ("unchanged" | "updated" | "added", Item) or ("rejected", Reject);
    with a near-duplicate ``matcher``, a new image's ``(item, (fingerprint, image,
    descriptor))`` replaces the Item (the per-image work of the check, done here in parallel).

    Runs in a worker thread; touches the store only through ``put_image`` (files, no SQL).
    """
    where = record.row or record.id
    try:
        raw = record.read_image()
        source_hash = sha256_hex(raw)
        if existing is not None and existing.source_hash == source_hash \
                and existing.image_path.is_file():
            # Same image bytes as stored: no decode, only the fields may have changed.
            item = replace(existing, **_fields(record))
            return ("unchanged" if _same_fields(existing, item) else "updated"), item
        decoded = decode(raw, source=where, max_pixels=max_pixels)
        data, ext = storable_bytes(raw, decoded)
        content_hash, path = store.put_image(data, ext, durable=False)
    except ImageRejected as error:
        return "rejected", Reject(source=where, reason=error.reason, message=str(error),
                                  item_id=record.id)
    item = Item(id=record.id, content_hash=content_hash, image_path=path,
                width=decoded.image.width, height=decoded.image.height,
                source_hash=source_hash, **_fields(record))
    if matcher is not None:
        from lookalike.catalogue.fingerprints import fingerprint

        image = decoded.image
        check = (fingerprint(image), image, matcher.descriptor_of(image))
        return ("added" if existing is None else "updated"), (item, check)
    return ("added" if existing is None else "updated"), item


def _check_duplicate(record: SourceRecord, outcome: tuple[str, Any], matcher: Any,
                     neighbours: Any, policy: str, report: IngestReport) -> tuple[str, Any]:
    """Apply the near-duplicate policy to one prepared record (main thread, source order)."""
    kind, value = outcome
    if not isinstance(value, tuple):
        return outcome  # unchanged or rejected: nothing new to check
    item, (print_, image, descriptor) = value
    near = neighbours(image) if neighbours is not None and descriptor is None else ()
    matches = [m for m in matcher.find_fingerprint(print_, near, descriptor) if m[0] != item.id]
    if matches:
        original, distance = matches[0]
        report.duplicates.append({"id": item.id, "duplicate_of": original,
                                  "distance": round(float(distance), 4),
                                  "skipped": policy == "skip"})
        if policy == "skip":
            return "rejected", Reject(
                source=record.row or record.id, reason="duplicate", item_id=record.id,
                message=f"near-duplicate of catalogue item {original!r} "
                        f"(distance {distance:.3g})")
    matcher.add_fingerprint(item.id, print_, descriptor)
    return kind, item


def _fields(record: SourceRecord) -> dict[str, Any]:
    return {"title": record.title, "category": record.category, "gender": record.gender,
            "colour": record.colour, "price": record.price, "split": record.split,
            "attributes": dict(record.attributes)}


def _same_fields(old: Item, new: Item) -> bool:
    def key(item: Item) -> tuple[Any, ...]:
        # Attributes compared as stored (JSON), so a tuple and a list of the same values match.
        return (item.title, item.category, item.gender, item.colour,
                None if item.price is None else float(item.price), item.split,
                json.dumps(item.attributes, sort_keys=True, ensure_ascii=False))

    return key(old) == key(new)


def _batches(records: Iterator[SourceRecord], size: int) -> Iterator[list[SourceRecord]]:
    while batch := list(islice(records, size)):
        yield batch


class _progress_bar:
    """A Rich progress bar on stderr when asked for and stderr is a terminal; else a no-op."""

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self.enabled, self.label, self.total = enabled, label, total
        self._bar: Any = None

    def __enter__(self):  # returns advance(n)
        if self.enabled:
            from rich.console import Console

            console = Console(stderr=True)
            if console.is_terminal:
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                           TimeElapsedColumn, TimeRemainingColumn)

                self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=console)
                self._bar.__enter__()
                task = self._bar.add_task(self.label, total=self.total)
                return lambda n: self._bar.advance(task, n)
        return lambda n: None

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)


def summarise_rejects(rejects: Sequence[Reject]) -> dict[str, list[str]]:
    """Rejected sources grouped by reason (for reports and the CLI)."""
    grouped: dict[str, list[str]] = {}
    for reject in rejects:
        grouped.setdefault(reject.reason, []).append(reject.source)
    return grouped
