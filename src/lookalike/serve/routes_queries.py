"""The query routes: ``POST /v1/search`` (photo, words, or a photo refined by words) and
``GET /v1/items/{item_id}/similar`` (more like this, optionally refined by words).

``router`` is an :class:`fastapi.APIRouter` included by ``app.py``; every query goes through the
service's read-only :class:`~lookalike.api.Project` (``Project.answer`` for words).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from lookalike.api import (
    Answer,
    Recommendation,
    TextModelMissing,
    UnknownItemError,
    UnknownNameError,
)
from lookalike.serve.deps import (
    CategoryQuery,
    ColourQuery,
    GenderQuery,
    ItemId,
    KQuery,
    PriceMaxQuery,
    PriceMinQuery,
    image_url,
    service_of,
    settings_of,
)
from lookalike.serve.errors import error_responses
from lookalike.serve.schemas import (
    EXACT_HELP,
    KEEP_TYPE_HELP,
    LITERAL_HELP,
    MAX_K,
    MAX_TEXT_CHARS,
    UNDERSTAND_HELP,
    Results,
)
from lookalike.serve.security import ApiError
from lookalike.serve.service import LookalikeService
from lookalike.serve.uploads import decode_upload, read_upload

router = APIRouter()
T = TypeVar("T")


def results(found: list[Recommendation] | Answer, k: int, query: dict[str, Any]) -> Results:
    meant: dict[str, Any] = {}
    if isinstance(found, Answer):
        meant = {key: value for key, value in found.to_json().items() if key != "results"}
        found = found.results
    return Results(k=k, query=query, **meant, results=[
        {"id": r.id, "title": r.title, "category": r.category, "score": r.score,
         "image_url": image_url(r.id), "attributes": r.attributes} for r in found])


def filters_of(service: LookalikeService, category, gender, colour, price_min,  # noqa: ANN001
               price_max) -> Any:
    return service.filters(category=category, gender=gender, colour=colour,
                           price_min=price_min, price_max=price_max)


def guided(service: LookalikeService, query: Callable[[], T]) -> T:
    """Run a words / diversified query (CPU-bound: holds an embedding slot), turning 'not
    prepared for this catalogue' into a clear 409 instead of 'no index yet'."""
    try:
        with service.embed_slots:
            return service.read(query)
    except TextModelMissing as error:
        raise ApiError(503, "not_ready", f"text search is not available: {error}") from None
    except UnknownNameError as error:
        if service.index_version() is None:
            raise  # no image index at all: the usual 503
        # The catalogue is served, but the words index or the clusters were never built:
        # a state the operator fixes with one command, not a server failure.
        raise ApiError(409, "not_prepared", str(error)) from None


def query_echo(filters: Any, **asked: Any) -> dict[str, Any]:
    echo = {key: value for key, value in asked.items() if value not in (None, False)}
    return {**echo, "filters": filters.to_json() if filters else None}


@router.post("/v1/search", response_model=Results, tags=["queries"],
          summary="Search by photo, words, or a photo refined by words",
          responses=error_responses(409, 413, 422, 503))
async def search(
        request: Request,
        image: Annotated[UploadFile | None, File(description="The photo (JPEG, PNG, WebP, "
                                                             "GIF, BMP or TIFF; sniffed, not "
                                                             "trusted). Optional with `text`.")] = None,
        text: Annotated[str | None, Form(max_length=MAX_TEXT_CHARS, description=(
            "Words: alone (`red running shoes`) or refining the photo (`in red`).")
        )] = None,
        text_weight: Annotated[float | None, Form(ge=0.0, le=1.0, description=(
            "Weight w of the words in (1 - w) * image + w * text (default 0.5)."))] = None,
        fusion: Annotated[Literal["weighted", "rrf"], Form(description=(
            "Weighted score fusion or reciprocal rank fusion."))] = "weighted",
        per_cluster: Annotated[int | None, Form(ge=1, le=MAX_K, description=(
            "Diversify: at most this many results from any one catalogue cluster."))] = None,
        understand: Annotated[bool, Form(description=UNDERSTAND_HELP)] = True,
        literal: Annotated[list[str] | None, Form(description=LITERAL_HELP)] = None,
        keep_type: Annotated[bool, Form(description=KEEP_TYPE_HELP)] = True,
        exact: Annotated[bool, Form(description=EXACT_HELP)] = False,
        k: Annotated[int | None, Form(ge=1, le=MAX_K, description=(
            "How many results (default: the service's default_k, 5)."))] = None,
        category: Annotated[list[str] | None, Form(
            description="Keep only these categories (repeat the field for several).")] = None,
        gender: Annotated[list[str] | None, Form(
            description="Keep only these genders.")] = None,
        colour: Annotated[list[str] | None, Form(
            description="Keep only these colours.")] = None,
        price_min: Annotated[float | None, Form(allow_inf_nan=False,
                                                description="Lowest price.")] = None,
        price_max: Annotated[float | None, Form(allow_inf_nan=False,
                                                description="Highest price.")] = None
) -> Results:
    """Search by photo (the products that look most like an uploaded image), by words
    alone, or by a photo refined by words. Blank words with a photo are a plain photo
    search; blank words alone, or words the text model cannot read, are a 422. `exact`
    looks for the very product in the photo (an image and no words, else a 422)."""
    service, settings = service_of(request), settings_of(request)
    words = text if text is not None and text.strip() else None
    if image is None and text is None:
        raise ApiError(422, "invalid_request", "give an image, text, or both")
    if exact and (image is None or words is not None):
        raise ApiError(422, "invalid_request",
                       "exact looks for the product in a photo; give an image and no words")
    data = await read_upload(image, settings.max_upload_bytes) if image is not None else None
    k = k or settings.default_k
    filters = await run_in_threadpool(filters_of, service, category, gender, colour, price_min,
                                      price_max)
    if words is None and per_cluster is None and data is not None and not exact:
        found = await run_in_threadpool(service.search, data, k, filters)
    else:
        picture = (await run_in_threadpool(decode_upload, data, settings.max_pixels)
                   if data is not None else None)
        found = await run_in_threadpool(guided, service, lambda: service.project.answer(
            image=picture, text=text, k=k, filters=filters,
            text_weight=text_weight, fusion=fusion, per_cluster=per_cluster,
            index=service.index_name(), understand=understand, literal=literal or [],
            keep_type=keep_type, exact=exact))
    return results(found, k, query_echo(filters, text=words, text_weight=text_weight,
                                        per_cluster=per_cluster, exact=exact))


@router.get("/v1/items/{item_id}/similar", response_model=Results, tags=["queries"],
            summary="More like this (optionally refined by words)",
            responses=error_responses(404, 409, 422, 503))
def similar(request: Request, item_id: ItemId, k: KQuery = None,            text: Annotated[str | None, Query(max_length=MAX_TEXT_CHARS, description=(
                "Words refining the item, e.g. `in red`."))] = None,
            text_weight: Annotated[float | None, Query(ge=0.0, le=1.0, description=(
                "Weight w of the words in (1 - w) * image + w * text."))] = None,
            with_title: Annotated[bool, Query(description=(
                "Also match the item's own title (fused item embeddings)."))] = False,
            fusion: Annotated[Literal["weighted", "rrf"], Query()] = "weighted",
            per_cluster: Annotated[int | None, Query(ge=1, le=MAX_K, description=(
                "Diversify: at most this many results from any one cluster."))] = None,
            understand: Annotated[bool, Query(description=UNDERSTAND_HELP)] = True,
            literal: Annotated[list[str] | None, Query(description=LITERAL_HELP)] = None,
            keep_type: Annotated[bool, Query(description=KEEP_TYPE_HELP)] = True,
            category: CategoryQuery = None,
            gender: GenderQuery = None, colour: ColourQuery = None,
            price_min: PriceMinQuery = None, price_max: PriceMaxQuery = None) -> Results:
    """More like this: the products that look most like a catalogue item (not itself),
    optionally refined by words or the item's own title, or diversified over clusters."""
    service, settings = service_of(request), settings_of(request)
    k = k or settings.default_k
    filters = filters_of(service, category, gender, colour, price_min, price_max)
    words = text if text is not None and text.strip() else None
    if words is None and not with_title and per_cluster is None:
        found = service.similar(item_id, k, filters)
    else:
        if item_id not in service.project.store:
            raise UnknownItemError(f"unknown item {item_id!r}")
        found = guided(service, lambda: service.project.answer(
            item_id=item_id, text=text, k=k, filters=filters,
            text_weight=text_weight, fusion=fusion, with_title=with_title,
            per_cluster=per_cluster, index=service.index_name(), understand=understand,
            literal=literal or [], keep_type=keep_type))
    return results(found, k, {"item": item_id, **query_echo(
        filters, text=words, text_weight=text_weight, with_title=with_title,
        per_cluster=per_cluster)})


__all__ = ["router"]
