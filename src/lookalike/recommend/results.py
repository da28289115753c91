"""What a query returns: ranked products with their catalogue details."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Recommendation:
    """One recommended product.

    ``image`` is the path of the stored image relative to the project directory, so it can be
    served or shown without exposing anything outside the project.
    """

    id: str
    score: float
    title: str | None = None
    category: str | None = None
    image: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["score"] = round(float(self.score), 6)
        return data
