"""What the catalogue store holds, as plain values: an :class:`Item` (one product with its stored
image) and a :class:`Reject` (a file an ingest could not use, with the reason).

Imported by :mod:`lookalike.catalogue.store`, which re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def now_iso() -> str:
    """The current UTC time as ISO 8601 (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Item:
    """One catalogue item as stored. ``image_path`` is the absolute path of the stored copy."""

    id: str
    content_hash: str
    image_path: Path
    title: str | None = None
    category: str | None = None
    gender: str | None = None
    colour: str | None = None
    price: float | None = None
    split: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    #: sha256 of the bytes the source gave (defaults to content_hash: stored as given).
    source_hash: str | None = None

    def __post_init__(self) -> None:
        self.image_path = Path(self.image_path)
        if self.source_hash is None:
            self.source_hash = self.content_hash

    def filter_attributes(self) -> dict[str, Any]:
        """What the index filters on: the attributes plus category, gender, colour, price and
        split (standard fields win over attributes of the same name; None values dropped)."""
        merged = dict(self.attributes)
        for name in ("category", "gender", "colour", "price", "split"):
            merged[name] = getattr(self, name)
        return {k: v for k, v in merged.items() if v is not None}

    def to_json(self, project_dir: str | Path | None = None) -> dict[str, Any]:
        """JSON-able view; ``image`` is relative to ``project_dir`` when given (else as stored:
        the ``images/ab/<sha>.<ext>`` path inside the project)."""
        image = self.image_path
        if project_dir is not None:
            try:
                image = image.relative_to(Path(project_dir))
            except ValueError:
                pass
        else:
            image = Path(*image.parts[-3:])  # images/ab/<sha>.<ext>
        return {"id": self.id, "title": self.title, "category": self.category,
                "gender": self.gender, "colour": self.colour, "price": self.price,
                "split": self.split, "attributes": dict(self.attributes),
                "content_hash": self.content_hash, "width": self.width, "height": self.height,
                "image": image.as_posix()}


@dataclass
class Reject:
    """An item an ingest could not use, with the reason code and a one-line message."""

    source: str
    reason: str
    message: str
    at: str = field(default_factory=now_iso)
    item_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason, "message": self.message,
                "at": self.at, "item_id": self.item_id}


__all__ = ["Item", "Reject", "now_iso"]
