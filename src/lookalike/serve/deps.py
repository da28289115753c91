"""What every router of the service shares: the running service, its read-only project, and the
URL of an item's photo.

``app.py`` builds the app and includes the routers (``routes_personal``, ``routes_beyond``);
the routers import this module, never ``app.py``, so the dependency points one way:
``app -> routes_* -> deps -> service``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import Path as PathParam, Query, Request

from lookalike.serve.schemas import MAX_K, ItemDetails

if TYPE_CHECKING:
    from lookalike.api import Project
    from lookalike.serve.service import LookalikeService
    from lookalike.serve.settings import ServeSettings

ItemId = Annotated[str, PathParam(min_length=1, max_length=256, description="Catalogue item id.")]
KQuery = Annotated[int | None, Query(ge=1, le=MAX_K, description=(
    "How many results (default: the service's default_k, 5)."))]
CategoryQuery = Annotated[list[str] | None, Query(description="Keep only these categories.")]
GenderQuery = Annotated[list[str] | None, Query(description="Keep only these genders.")]
ColourQuery = Annotated[list[str] | None, Query(description="Keep only these colours.")]
PriceMinQuery = Annotated[float | None, Query(allow_inf_nan=False, description="Lowest price.")]
PriceMaxQuery = Annotated[float | None, Query(allow_inf_nan=False, description="Highest price.")]


def image_url(item_id: str) -> str:
    """The service path of an item's stored photo."""
    return f"/v1/items/{quote(item_id, safe='')}/image"


def item_details(item: dict[str, Any]) -> ItemDetails:
    """An item's catalogue record (without the raw image) as the API shows it."""
    fields = {key: value for key, value in item.items() if key != "image"}
    return ItemDetails(**fields, image_url=image_url(item["id"]))


def service_of(request: Request) -> LookalikeService:
    """The service the app was built over (``create_app`` puts it on ``app.state``)."""
    return request.app.state.service


def settings_of(request: Request) -> ServeSettings:
    """The settings the app was built with."""
    return request.app.state.settings


def project_of(request: Request) -> Project:
    """The service's read-only :class:`~lookalike.project.Project`."""
    return service_of(request).project
