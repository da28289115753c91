"""The catalogue verbs of :class:`lookalike.project.Project`: ingest a source, read items, add or
remove one item (the service's writes), and the shopper event log.

A mixin (never imported the other way); the work is done in :mod:`lookalike.catalogue` and
:mod:`lookalike.recommend.events`, imported on first use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lookalike.errors import ImageRejected, LookalikeError


class CatalogueVerbs:
    """``ingest``, ``vocabulary``, ``item``, ``add_item``, ``remove_items``, ``rejects``,
    ``ingest_events`` and ``shopper_history`` of :class:`~lookalike.project.Project`."""

    def ingest(self, source: str | Path, *, progress: bool = True, **options: Any):
        """Add a folder, a manifest (CSV/JSONL/Parquet) or a named catalogue (``demo``,
        ``products``, ``fashion-mnist``) to the catalogue. Incremental and resumable; returns an
        :class:`~lookalike.catalogue.ingest.IngestReport` listing every rejected file."""
        self.require_writable("ingest")
        from lookalike.catalogue.ingest import ingest

        with self.write_lock():
            if options.get("on_duplicate_image", "keep") != "keep" \
                    and options.get("duplicate_method", "copies") == "copies":
                options.setdefault("duplicate_matcher", self._copy_matcher(
                    options.get("duplicate_threshold")))
            return ingest(source, self.store, progress=progress, **options)

    def _copy_matcher(self, threshold: float | None) -> Any:
        """The ``copies`` matcher ingest checks incoming photos with: copy descriptors and
        fingerprints (image-index neighbours where the package ships no descriptor)."""
        from lookalike.recommend.duplicates import DEFAULT_THRESHOLDS, DuplicateFinder

        threshold = DEFAULT_THRESHOLDS["copies"] if threshold is None else float(threshold)
        return DuplicateFinder(self).matcher("copies", threshold)

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

    def add_item(self, item_id: str, image: bytes, attributes: Mapping[str, Any] | None = None,
                 *, index: str | None = None) -> dict[str, Any]:
        """Add or replace one item (image bytes + attributes) and update the index in place.

        ``attributes`` may hold title, category, gender, colour, price, split and any other
        JSON-able values. A bad image raises :class:`~lookalike.errors.ImageRejected` and changes
        nothing. Returns the stored item's details.
        """
        self.require_writable("add items")
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
        self.require_writable("remove")
        ids = [str(i) for i in ids]
        with self.write_lock():
            removed = self.store.remove(ids)
            name = index or self.default_index_name()
            if name:
                self.refresh_index(name)
        return removed

    def rejects(self) -> list[Any]:
        """Every file an ingest rejected, with the reason
        (:class:`~lookalike.catalogue.store.Reject` rows)."""
        return self.store.rejects()

    # ---- shopper events ----------------------------------------------------------------------
    def ingest_events(self, path: str | Path):  # -> lookalike.recommend.events.EventIngestReport
        """Add a shopper event log (CSV or Parquet with shopper, item, timestamp[, event]);
        atomic, and re-ingesting adds nothing twice."""
        from lookalike.recommend.events import ingest_events

        return ingest_events(self, path)

    def shopper_history(self, shopper: str, last: int | None = None) -> list[str]:
        """The items a shopper viewed, oldest first, from the ingested event log (only the
        ``last`` N when given)."""
        from lookalike.recommend.events import shopper_history

        return shopper_history(self, shopper, last)


__all__ = ["CatalogueVerbs"]
