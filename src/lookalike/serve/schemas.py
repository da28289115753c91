"""Request and response bodies of the REST API (they also make the OpenAPI schema)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Ids a client may create with PUT: no slashes, no leading dot, printable ASCII.
ITEM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
MAX_K = 100
#: Longest words query the API accepts (the text model reads about 64 word pieces anyway).
MAX_TEXT_CHARS = 1000

AttributeValue = str | int | float | bool
UNDERSTAND_HELP = ("Understand words naming the catalogue's colours, genders and categories "
                   "(`in red`, `for women`, `sandals`) as filters; false sends all words to the "
                   "text model.")
LITERAL_HELP = ("Columns whose words stay words for the text model, e.g. `colour` (repeat for "
                "several): what removing an understood chip on the web page sends.")
EXACT_HELP = ("Find this very product in a shopper's photo (cropped, turned, padded, re-lit): "
              "the nearest products are re-ranked so those whose photo lines up with the "
              "uploaded one come first. Needs an image and no words.")
KEEP_TYPE_HELP = ("With a photo or item and understood words that name no category, keep its "
                  "category (the photo's: most common among its nearest products).")


class ErrorBody(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. `not_found`.")
    message: str = Field(description="One line saying what went wrong.")
    reason: str | None = Field(None, description="For rejected images: `not-an-image`, "
                               "`truncated`, `too-large`, `unsupported`, `empty`, `unreadable`.")


class ErrorResponse(BaseModel):
    """Every error the API returns has this shape."""

    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class Ready(BaseModel):
    ready: bool
    index_version: str | None = Field(None, description="Index version folder being served.")


class IndexInfo(BaseModel):
    name: str
    kind: str | None = Field(None, description="Index type, e.g. `exact` or `hnsw`.")
    embedder: str | None = Field(None, description="Embedder name, e.g. `efficientnet-lite0`.")
    embedder_id: str | None = None
    version: str | None = None


class CatalogueFilters(BaseModel):
    category: list[str] = Field(default_factory=list)
    gender: list[str] = Field(default_factory=list)
    colour: list[str] = Field(default_factory=list)
    price: list[float] | None = Field(None, description="[lowest, highest] price, if any.")


class CatalogueSummary(BaseModel):
    items: int = Field(description="Items in the catalogue.")
    index: IndexInfo | None = Field(None, description="The index queries use (None: not built).")
    filters: CatalogueFilters
    default_k: int
    max_k: int = MAX_K
    max_upload_bytes: int
    max_pixels: int
    read_only: bool


class Result(BaseModel):
    id: str
    title: str | None = None
    category: str | None = None
    score: float = Field(description="Cosine similarity to the query; higher is more similar.")
    image_url: str = Field(description="URL of the product photo on this service.")
    attributes: dict[str, Any] = Field(default_factory=dict)


class Results(BaseModel):
    results: list[Result]
    k: int
    query: dict[str, Any] = Field(default_factory=dict, description=(
        "What was asked: item id, words (`text`), `text_weight`, `per_cluster`, `exact` and the "
        "filters."))
    understood: dict[str, list[str]] | None = Field(None, description=(
        "Words understood as the catalogue's own values, column -> values (several values of "
        "one column are alternatives), e.g. `{\"colour\": [\"Red\"]}`; they filter the "
        "results. Absent when there were no words or understanding was off."))
    free_text: str | None = Field(None, description=(
        "The words left for the text model after understanding (`\"\"`: none, no text fusion)."))
    kept: dict[str, list[str]] | None = Field(None, description=(
        "Attributes kept from the photo or item, e.g. its `category` when the words named a "
        "colour but no category (`keep_type=false` turns this off)."))


class ItemDetails(BaseModel):
    id: str
    title: str | None = None
    category: str | None = None
    gender: str | None = None
    colour: str | None = None
    price: float | None = None
    split: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    content_hash: str | None = None
    image_url: str


class ItemList(BaseModel):
    items: list[ItemDetails]
    total: int = Field(description="Items in the catalogue.")


class ItemAttributes(BaseModel):
    """The JSON ``attributes`` form field of ``PUT /v1/items/{id}``."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=500)
    category: str | None = Field(None, min_length=1, max_length=200)
    gender: str | None = Field(None, min_length=1, max_length=200)
    colour: str | None = Field(None, min_length=1, max_length=200)
    price: float | None = Field(None, ge=0)
    split: str | None = Field(None, max_length=50)
    attributes: dict[str, AttributeValue] = Field(
        default_factory=dict, description="Any other attributes (filterable by name).")

    @field_validator("price")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("price must be a finite number")
        return value

    @field_validator("attributes")
    @classmethod
    def _small(cls, value: dict[str, AttributeValue]) -> dict[str, AttributeValue]:
        if len(value) > 50:
            raise ValueError("at most 50 extra attributes")
        for key, item in value.items():
            if not key or len(key) > 100:
                raise ValueError("attribute names must be 1-100 characters")
            if isinstance(item, str) and len(item) > 1000:
                raise ValueError(f"attribute {key!r} is longer than 1000 characters")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"attribute {key!r} must be a finite number")
        return value

    def flat(self) -> dict[str, Any]:
        """The attributes as one flat dict (standard fields first), without unset ones."""
        fields = self.model_dump(exclude={"attributes"}, exclude_none=True)
        return {**self.attributes, **fields}


class WriteResult(BaseModel):
    id: str
    status: Literal["created", "replaced", "deleted"]
    index_version: str | None = None
