"""What every router of the service shares: the running service, its read-only project, and the
URL of an item's photo.

``app.py`` builds the app and includes the routers (``routes_personal``, ``routes_beyond``);
the routers import this module, never ``app.py``, so the dependency points one way:
``app -> routes_* -> deps -> service``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import Request

from lookalike.serve.schemas import ItemDetails

if TYPE_CHECKING:
    from lookalike.api import Project
    from lookalike.serve.service import LookalikeService


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


def project_of(request: Request) -> Project:
    """The service's read-only :class:`~lookalike.project.Project`."""
    return service_of(request).project
