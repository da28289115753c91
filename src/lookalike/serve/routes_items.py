"""The catalogue's item routes: browse (``GET /v1/items``), details, photo, and the writes
(``PUT`` / ``DELETE /v1/items/{item_id}``, API key needed).

``router`` is an :class:`fastapi.APIRouter` included by ``app.py``; writes go through the
service (one writer at a time, each persisted atomically before the answer).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path as PathParam, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError

from lookalike.serve.deps import ItemId, item_details, service_of, settings_of
from lookalike.serve.errors import error_responses, validation_message
from lookalike.serve.schemas import (
    ITEM_ID_PATTERN,
    MAX_K,
    ItemAttributes,
    ItemDetails,
    ItemList,
    WriteResult,
)
from lookalike.serve.security import ApiError, require_api_key
from lookalike.serve.uploads import read_upload

router = APIRouter()


@router.get("/v1/items", response_model=ItemList, tags=["catalogue"],
            summary="Random or paged items", responses=error_responses(422))
def list_items(
        request: Request,
        random: Annotated[int | None, Query(ge=1, le=MAX_K,
                                            description="Return this many random items.")] = None,
        offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_K)] = 20) -> ItemList:
    """Browse: ``?random=n`` gives n random items to start from; otherwise a page in
    catalogue order."""
    service = service_of(request)
    if random is not None:
        items = service.random_items(random)
        total = service.count()
    else:
        total, items = service.list_items(offset, limit)
    return ItemList(total=total, items=[item_details(i) for i in items])


@router.get("/v1/items/{item_id}", response_model=ItemDetails, tags=["catalogue"],
            summary="Item details", responses=error_responses(404, 422))
def get_item(request: Request, item_id: ItemId) -> ItemDetails:
    """Catalogue details of one item."""
    service = service_of(request)
    return item_details(service.item(item_id))


@router.get("/v1/items/{item_id}/image", tags=["catalogue"], response_class=FileResponse,
            summary="Item photo",
            responses={**error_responses(404, 422), 200: {"content": {"image/jpeg": {}, "image/png": {}},
                                               "description": "The stored product photo."}})
def item_image(request: Request, item_id: ItemId) -> FileResponse:
    """The stored photo of an item (only ever a file of the project's image store)."""
    service = service_of(request)
    path, media_type = service.image_file(item_id)
    return FileResponse(path, media_type=media_type,
                        headers={"Cache-Control": "public, max-age=300"})


@router.put("/v1/items/{item_id}", response_model=WriteResult, tags=["writes"],
            summary="Add or replace an item", status_code=200,
            responses={**error_responses(401, 403, 413, 422, 503),
                    201: {"model": WriteResult, "description": "Created"}},
            dependencies=[Depends(require_api_key)])
async def put_item(
        request: Request,
        item_id: Annotated[str, PathParam(pattern=ITEM_ID_PATTERN,
                                          description="Item id to create or replace.")],
        image: Annotated[UploadFile, File(description="The product photo.")],
        attributes: Annotated[str, Form(max_length=64 * 1024, description=(
            "JSON object: title, category, gender, colour, price, split and "
            "`attributes` (any other name -> value)."))] = "{}") -> Any:
    """Add or replace an item (API key needed). The index is updated incrementally and
    persisted atomically before the answer; 201 when the item is new, 200 when replaced."""
    service, settings = service_of(request), settings_of(request)
    try:
        parsed = ItemAttributes.model_validate_json(attributes)
    except ValidationError as error:
        raise ApiError(422, "invalid_request",
                       f"attributes: {validation_message(error.errors())}") from None
    data = await read_upload(image, settings.max_upload_bytes)
    created = await run_in_threadpool(service.put_item, item_id, data, parsed.flat())
    body = WriteResult(id=item_id, status="created" if created else "replaced",
                       index_version=service.index_version())
    return JSONResponse(body.model_dump(), status_code=201 if created else 200)


@router.delete("/v1/items/{item_id}", response_model=WriteResult, tags=["writes"],
            summary="Delete an item", responses=error_responses(401, 403, 404, 422, 503),
            dependencies=[Depends(require_api_key)])
def delete_item(request: Request, item_id: ItemId) -> WriteResult:
    """Remove an item from the catalogue and the index (API key needed)."""
    service = service_of(request)
    service.delete_item(item_id)
    return WriteResult(id=item_id, status="deleted", index_version=service.index_version())


__all__ = ["router"]
