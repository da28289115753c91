"""The REST API (``/v1``) and the web page (``/``) of lookalike, as a FastAPI app.

Build it with :func:`create_app` (settings in code) or let uvicorn call
:func:`create_app_from_env` (settings from ``LOOKALIKE_*`` env vars / a config file). Building an
app never changes process-wide state: the torch threads of a worker (``torch_threads``) are set
by the process's owner, :mod:`lookalike.serve.run`, whose factory does both::

    uvicorn --factory lookalike.serve.run:create_worker_app --workers 2

Every error is ``{"error": {"code": ..., "message": ...}}``; unexpected failures are logged with
their traceback and answered with a plain JSON 500.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, FastAPI, File, Form, Path as PathParam, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

import lookalike
from lookalike.api import (
    Answer,
    ImageRejected,
    LookalikeError,
    ModelMismatchError,
    Recommendation,
    StoreError,
    TextModelMissing,
    UnknownItemError,
    UnknownNameError,
)
from lookalike.serve import routes_beyond, routes_personal
from lookalike.serve.deps import image_url, item_details
from lookalike.serve.schemas import (
    ITEM_ID_PATTERN,
    KEEP_TYPE_HELP,
    LITERAL_HELP,
    MAX_K,
    MAX_TEXT_CHARS,
    UNDERSTAND_HELP,
    CatalogueSummary,
    ErrorResponse,
    Health,
    ItemAttributes,
    ItemDetails,
    ItemList,
    Ready,
    Results,
    WriteResult,
)
from lookalike.serve.security import ApiError, require_api_key
from lookalike.serve.service import FilterValueError, LookalikeService
from lookalike.serve.settings import ServeSettings, load_settings
from lookalike.serve.uploads import BodySizeLimit, UploadTooLarge, decode_upload, read_upload

log = logging.getLogger("lookalike.serve")
T = TypeVar("T")
STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page needs nothing from elsewhere: no CDN, no fonts, no inline script.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
     b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
     b"frame-ancestors 'none'"),
]

_ERROR_TEXT = {
    401: "API key missing", 403: "Wrong API key, or the service is read-only",
    404: "Unknown item",
    409: "Words or per-cluster results asked for, but this catalogue has no text index / "
         "clusters yet (`lookalike text-index` / `lookalike clusters`)",
    413: "Upload above the byte cap, or image above the pixel cap",
    422: "Invalid parameter, filter value or image", 503: "No index yet",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the errors an endpoint can answer with."""
    return {status: {"model": ErrorResponse, "description": _ERROR_TEXT[status]}
            for status in statuses}


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``settings.project`` (settings from the environment if None)."""
    settings = settings or load_settings()
    settings.check_startable()
    service = LookalikeService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ready = await run_in_threadpool(service.warm_up)
        log.info("serving %s (%s, %s)", service.project_dir,
                 "read-only" if settings.read_only else "writable",
                 "index loaded" if ready else "no index yet")
        # One watcher per service: with several workers, the parent process runs it (run.py).
        from lookalike.serve.watching import start_watcher

        app.state.watcher = start_watcher(settings) if settings.workers == 1 else None
        yield
        if app.state.watcher is not None:
            await run_in_threadpool(app.state.watcher.stop)
        service.close()

    app = FastAPI(title="lookalike", version=lookalike.__version__, lifespan=lifespan,
                  description="Visual product recommendation: more like this and search by "
                  "photo over a catalogue of product photos.",
                  openapi_url="/v1/openapi.json", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.api_key = settings.resolved_api_key()
    app.state.service = service

    _add_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type"],
                           allow_credentials=False, max_age=600)
    app.add_middleware(BodySizeLimit, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(SecurityHeaders)
    _add_routes(app, service, settings)
    # Feature routers live in their own modules (they never import this one); they reach the
    # service via app.state (lookalike.serve.deps).
    app.include_router(routes_personal.router)
    app.include_router(routes_beyond.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def create_app_from_env() -> FastAPI:
    """The app with settings from the environment (leaves torch's threads alone; a worker
    process's factory is :func:`lookalike.serve.run.create_worker_app`)."""
    return create_app(load_settings())


# ---- routes ----------------------------------------------------------------------------------

ItemId = Annotated[str, PathParam(min_length=1, max_length=256, description="Catalogue item id.")]
KQuery = Annotated[int | None, Query(ge=1, le=MAX_K, description=(
    "How many results (default: the service's default_k, 5)."))]
CategoryQuery = Annotated[list[str] | None, Query(description="Keep only these categories.")]
GenderQuery = Annotated[list[str] | None, Query(description="Keep only these genders.")]
ColourQuery = Annotated[list[str] | None, Query(description="Keep only these colours.")]
PriceMinQuery = Annotated[float | None, Query(allow_inf_nan=False, description="Lowest price.")]
PriceMaxQuery = Annotated[float | None, Query(allow_inf_nan=False, description="Highest price.")]


def _add_routes(app: FastAPI, service: LookalikeService, settings: ServeSettings) -> None:

    def results(found: list[Recommendation] | Answer, k: int, query: dict[str, Any]) -> Results:
        meant: dict[str, Any] = {}
        if isinstance(found, Answer):
            meant = {key: value for key, value in found.to_json().items() if key != "results"}
            found = found.results
        return Results(k=k, query=query, **meant, results=[
            {"id": r.id, "title": r.title, "category": r.category, "score": r.score,
             "image_url": image_url(r.id), "attributes": r.attributes} for r in found])

    def filters_of(category, gender, colour, price_min, price_max):  # noqa: ANN001,ANN202
        return service.filters(category=category, gender=gender, colour=colour,
                               price_min=price_min, price_max=price_max)

    # -- the page --
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    # -- health --
    @app.get("/v1/health", response_model=Health, tags=["service"], summary="Liveness")
    def health() -> Health:
        """Liveness: the process answers."""
        return Health(version=lookalike.__version__)

    @app.get("/v1/ready", response_model=Ready, tags=["service"], summary="Readiness",
             responses={503: {"model": Ready, "description": "No index loaded yet"}})
    def ready() -> Any:
        """Readiness: the index and its embedder are loaded (503 until they are)."""
        ok = service.warm_up()
        body = Ready(ready=ok, index_version=service.index_version())
        return body if ok else JSONResponse(body.model_dump(), status_code=503)

    @app.get("/v1/catalogue", response_model=CatalogueSummary, tags=["catalogue"],
             summary="Catalogue summary and filter values")
    def catalogue() -> CatalogueSummary:
        """Catalogue size, the index (embedder and type) and the values each filter accepts."""
        return CatalogueSummary(**service.summary(), default_k=settings.default_k,
                                max_upload_bytes=settings.max_upload_bytes,
                                max_pixels=settings.max_pixels, read_only=settings.read_only)

    # -- queries --
    def guided(query: Callable[[], T]) -> T:
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

    @app.post("/v1/search", response_model=Results, tags=["queries"],
              summary="Search by photo, words, or a photo refined by words",
              responses=_errors(409, 413, 422, 503))
    async def search(
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
        search; blank words alone, or words the text model cannot read, are a 422."""
        words = text if text is not None and text.strip() else None
        if image is None and text is None:
            raise ApiError(422, "invalid_request", "give an image, text, or both")
        data = await read_upload(image, settings.max_upload_bytes) if image is not None else None
        k = k or settings.default_k
        filters = await run_in_threadpool(filters_of, category, gender, colour, price_min,
                                          price_max)
        if words is None and per_cluster is None and data is not None:
            found = await run_in_threadpool(service.search, data, k, filters)
        else:
            picture = (await run_in_threadpool(decode_upload, data, settings.max_pixels)
                       if data is not None else None)
            found = await run_in_threadpool(guided, lambda: service.project.answer(
                image=picture, text=text, k=k, filters=filters,
                text_weight=text_weight, fusion=fusion, per_cluster=per_cluster,
                index=service.index_name(), understand=understand, literal=literal or [],
                keep_type=keep_type))
        return results(found, k, query_echo(filters, text=words, text_weight=text_weight,
                                            per_cluster=per_cluster))

    @app.get("/v1/items/{item_id}/similar", response_model=Results, tags=["queries"],
             summary="More like this (optionally refined by words)",
             responses=_errors(404, 409, 422, 503))
    def similar(item_id: ItemId, k: KQuery = None,
                text: Annotated[str | None, Query(max_length=MAX_TEXT_CHARS, description=(
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
        k = k or settings.default_k
        filters = filters_of(category, gender, colour, price_min, price_max)
        words = text if text is not None and text.strip() else None
        if words is None and not with_title and per_cluster is None:
            found = service.similar(item_id, k, filters)
        else:
            if item_id not in service.project.store:
                raise UnknownItemError(f"unknown item {item_id!r}")
            found = guided(lambda: service.project.answer(
                item_id=item_id, text=text, k=k, filters=filters,
                text_weight=text_weight, fusion=fusion, with_title=with_title,
                per_cluster=per_cluster, index=service.index_name(), understand=understand,
                literal=literal or [], keep_type=keep_type))
        return results(found, k, {"item": item_id, **query_echo(
            filters, text=words, text_weight=text_weight, with_title=with_title,
            per_cluster=per_cluster)})

    # -- items --
    @app.get("/v1/items", response_model=ItemList, tags=["catalogue"],
             summary="Random or paged items", responses=_errors(422))
    def list_items(
            random: Annotated[int | None, Query(ge=1, le=MAX_K,
                                                description="Return this many random items.")] = None,
            offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
            limit: Annotated[int, Query(ge=1, le=MAX_K)] = 20) -> ItemList:
        """Browse: ``?random=n`` gives n random items to start from; otherwise a page in
        catalogue order."""
        if random is not None:
            items = service.random_items(random)
            total = service.count()
        else:
            total, items = service.list_items(offset, limit)
        return ItemList(total=total, items=[item_details(i) for i in items])

    @app.get("/v1/items/{item_id}", response_model=ItemDetails, tags=["catalogue"],
             summary="Item details", responses=_errors(404, 422))
    def get_item(item_id: ItemId) -> ItemDetails:
        """Catalogue details of one item."""
        return item_details(service.item(item_id))

    @app.get("/v1/items/{item_id}/image", tags=["catalogue"], response_class=FileResponse,
             summary="Item photo",
             responses={**_errors(404, 422), 200: {"content": {"image/jpeg": {}, "image/png": {}},
                                                   "description": "The stored product photo."}})
    def item_image(item_id: ItemId) -> FileResponse:
        """The stored photo of an item (only ever a file of the project's image store)."""
        path, media_type = service.image_file(item_id)
        return FileResponse(path, media_type=media_type,
                            headers={"Cache-Control": "public, max-age=300"})

    @app.put("/v1/items/{item_id}", response_model=WriteResult, tags=["writes"],
             summary="Add or replace an item", status_code=200,
             responses={**_errors(401, 403, 413, 422, 503),
                        201: {"model": WriteResult, "description": "Created"}},
             dependencies=[Depends(require_api_key)])
    async def put_item(
            item_id: Annotated[str, PathParam(pattern=ITEM_ID_PATTERN,
                                              description="Item id to create or replace.")],
            image: Annotated[UploadFile, File(description="The product photo.")],
            attributes: Annotated[str, Form(max_length=64 * 1024, description=(
                "JSON object: title, category, gender, colour, price, split and "
                "`attributes` (any other name -> value)."))] = "{}") -> Any:
        """Add or replace an item (API key needed). The index is updated incrementally and
        persisted atomically before the answer; 201 when the item is new, 200 when replaced."""
        try:
            parsed = ItemAttributes.model_validate_json(attributes)
        except ValidationError as error:
            raise ApiError(422, "invalid_request",
                           f"attributes: {_validation_message(error.errors())}") from None
        data = await read_upload(image, settings.max_upload_bytes)
        created = await run_in_threadpool(service.put_item, item_id, data, parsed.flat())
        body = WriteResult(id=item_id, status="created" if created else "replaced",
                           index_version=service.index_version())
        return JSONResponse(body.model_dump(), status_code=201 if created else 200)

    @app.delete("/v1/items/{item_id}", response_model=WriteResult, tags=["writes"],
                summary="Delete an item", responses=_errors(401, 403, 404, 422, 503),
                dependencies=[Depends(require_api_key)])
    def delete_item(item_id: ItemId) -> WriteResult:
        """Remove an item from the catalogue and the index (API key needed)."""
        service.delete_item(item_id)
        return WriteResult(id=item_id, status="deleted", index_version=service.index_version())


# ---- errors ----------------------------------------------------------------------------------

def error_response(status: int, code: str, message: str, *, reason: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if reason:
        body["reason"] = reason
    return JSONResponse({"error": body}, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 413: "too_large",
               415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests"}


def _add_error_handlers(app: FastAPI) -> None:

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and not isinstance(exc, ApiError):
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _validation_message(exc.errors()))

    @app.exception_handler(UploadTooLarge)
    async def too_large(request: Request, exc: UploadTooLarge) -> JSONResponse:
        return error_response(413, "too_large", str(exc))

    @app.exception_handler(ImageRejected)
    async def image_rejected(request: Request, exc: ImageRejected) -> JSONResponse:
        status = 413 if exc.reason == "too-large" else 422
        return error_response(status, "image_rejected", str(exc), reason=exc.reason)

    @app.exception_handler(LookalikeError)
    async def lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        if isinstance(exc, UnknownItemError):
            return error_response(404, "not_found", str(exc))
        if isinstance(exc, FilterValueError):
            return error_response(422, "invalid_filter", str(exc))
        if isinstance(exc, UnknownNameError):
            log.warning("not ready: %s", exc)
            return error_response(503, "not_ready", "the catalogue has no index yet; build "
                                  "one with `lookalike index`")
        if isinstance(exc, (StoreError, ModelMismatchError)):
            # About the server's files, not the request; the text may name server paths.
            log.error("%s %s: %s", request.method, request.url.path, exc)
            return error_response(500, "server_error", "the server could not complete the "
                                  "request; see the service log")
        # Anything else lookalike raises on purpose is about the request (e.g. bad attributes).
        return error_response(422, "invalid_request", str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return error_response(500, "internal_error", "internal server error; see the "
                              "service log")


def _validation_message(errors: Any) -> str:
    parts = []
    for entry in list(errors)[:5]:
        location = [str(p) for p in entry.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(location) or "request"
        parts.append(f"{where}: {entry.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class SecurityHeaders:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["create_app", "create_app_from_env"]
