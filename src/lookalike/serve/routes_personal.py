"""REST endpoints for personalised picks and shop-the-look (mounted by ``create_app``)::

    app.include_router(lookalike.serve.routes_personal.router)

``POST /v1/recommend`` (JSON)
    ``{"history": ["15970", "39386"], "k": 10, "method": "centroid", "diversity": 0.2,
    "category": ["Tshirts"], ...}`` -> the same ``Results`` body as ``/v1/search``. The history
    comes from the client (the web page keeps it in the browser's localStorage); the server
    stores nothing about shoppers.
``POST /v1/look`` (multipart)
    ``image`` (the scene photo) plus optional form fields ``history`` (ids separated by commas),
    ``like`` (one item id), ``k``, ``top_regions``, ``method``, ``windows`` ("20,40,60"),
    ``stride``, ``aspect``, ``refine`` ->
    ``{"regions": [{"box": [x0, y0, x1, y1], "score": s, "items": [...]}], ...}``.

Errors use the app's handlers: unknown history ids are a 404 naming them, bad parameters a 422,
an image above the caps a 413.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from lookalike.api import LookalikeError, parse_history
from lookalike.serve.deps import image_url, service_of
from lookalike.serve.schemas import MAX_K, ErrorResponse, Result, Results

router = APIRouter(tags=["personal"])
#: The longest history a request may carry (a browser keeps the last few dozen views).
MAX_HISTORY = 200
#: The service caps scenes at this longer side before sliding windows over them.
LOOK_MAX_SIDE = 1024

Method = Literal["centroid", "knn-vote", "latent-svm"]  # = lookalike.recommend.personal.METHODS


class RecommendRequest(BaseModel):
    """Body of ``POST /v1/recommend``."""

    history: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=MAX_HISTORY, description="Item ids the shopper viewed, oldest first.")
    k: int = Field(10, ge=1, le=MAX_K, description="How many picks.")
    method: Method = Field("centroid", description="centroid, knn-vote or latent-svm.")
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="0 = most relevant, 1 = most varied.")
    category: list[str] | None = None
    gender: list[str] | None = None
    colour: list[str] | None = None
    price_min: float | None = Field(None, allow_inf_nan=False)
    price_max: float | None = Field(None, allow_inf_nan=False)


class Region(BaseModel):
    box: list[int] = Field(description="[x0, y0, x1, y1] in the uploaded photo's pixels.")
    score: float = Field(description="How strongly the region matches the query (higher first).")
    items: list[Result]


class LookResponse(BaseModel):
    regions: list[Region]
    mode: str = Field(description="history, like or product-likeness.")
    features: str
    scene: dict[str, Any]
    windows: dict[str, Any]
    seconds: float


def _result(recommendation: Any) -> Result:
    data = recommendation if isinstance(recommendation, dict) else recommendation.to_json()
    return Result(id=data["id"], title=data.get("title"), category=data.get("category"),
                  score=data["score"], image_url=image_url(data["id"]),
                  attributes=data.get("attributes") or {})


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "An item id in the history is unknown"},
    413: {"model": ErrorResponse, "description": "Upload or image above the caps"},
    422: {"model": ErrorResponse, "description": "Invalid parameter or image"},
    503: {"model": ErrorResponse, "description": "No index yet"},
}


@router.post("/v1/recommend", response_model=Results, summary="Personalised picks",
             responses=_ERRORS)
def recommend_endpoint(body: RecommendRequest, request: Request) -> Results:
    """Picks for a shopper from the items they viewed (never one of those items)."""
    service = service_of(request)
    filters = service.filters(category=body.category, gender=body.gender, colour=body.colour,
                              price_min=body.price_min, price_max=body.price_max)
    with service.embed_slots:  # CPU-heavy: shares the embedding slots
        found = service.project.recommend(body.history, k=body.k, method=body.method,
                                          filters=filters, diversity=body.diversity)
    return Results(k=body.k, results=[_result(r) for r in found],
                   query={"history": list(dict.fromkeys(body.history)), "method": body.method,
                          "diversity": body.diversity,
                          "filters": filters.to_json() if filters else None})


def _windows(text: str | None) -> tuple[int, ...] | None:
    """Window sizes from ``"20,40,60"``; None (shop-the-look's own default) when not given."""
    if not text:
        return None
    try:
        sizes = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise LookalikeError(f"windows must be sizes in px separated by commas, got {text!r}") \
            from None
    if not sizes or len(sizes) > 20 or min(sizes) < 8 or max(sizes) > LOOK_MAX_SIDE:
        raise LookalikeError(f"windows must be 1-20 sizes between 8 and {LOOK_MAX_SIDE} px")
    return sizes


@router.post("/v1/look", response_model=LookResponse, summary="Shop the look",
             responses=_ERRORS)
async def look_endpoint(
        request: Request,
        image: Annotated[UploadFile, File(description="The scene photo.")],
        history: Annotated[str | None, Form(max_length=64 * 1024, description=(
            "Item ids the shopper viewed, separated by commas (optional)."))] = None,
        like: Annotated[str | None, Form(max_length=256, description=(
            "Rank regions by similarity to this catalogue item (optional)."))] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K, description="Products per region.")] = 5,
        top_regions: Annotated[int, Form(ge=1, le=20, description="Regions to return.")] = 5,
        method: Annotated[Method, Form(description="Shopper model for a history.")] = "centroid",
        windows: Annotated[str | None, Form(max_length=200, description=(
            "Window sizes in px, e.g. 20,40,60 (default 20..100 by 10)."))] = None,
        stride: Annotated[int | None, Form(ge=2, le=256, description=(
            "Window step in px (default: a quarter of the smallest window)."))] = None,
        aspect: Annotated[float, Form(ge=0.25, le=4.0, allow_inf_nan=False, description=(
            "Window height / width (default 4/3, the catalogue photos' shape)."))] = 4 / 3,
        refine: Annotated[bool, Form(description=(
            "Move the boxes onto the products with the learned box regressor."))] = True,
        look_head: Annotated[bool, Form(description=(
            "With `like`: compare under the packaged look head (same kind of product), else by "
            "the index's plain cosine."))] = True,
        look_ranker: Annotated[bool, Form(description=(
            "With `like` and the look head: rank the boxes by the packaged look ranker, else "
            "by head cosine + category vote + objectness."))] = True,
) -> LookResponse:
    """Regions of a scene photo worth shopping, each with the most similar products."""
    from lookalike.serve.uploads import decode_upload, read_upload

    service = service_of(request)
    settings = request.app.state.settings
    data = await read_upload(image, settings.max_upload_bytes)
    ids = parse_history(history) if history and history.strip() else None
    if ids is not None and len(ids) > MAX_HISTORY:
        raise LookalikeError(f"history has {len(ids)} items; at most {MAX_HISTORY}")
    chosen = {"windows": sizes} if (sizes := _windows(windows)) else {}

    def run() -> dict[str, Any]:
        scene = decode_upload(data, settings.max_pixels, name="scene photo")
        with service.embed_slots:  # CPU-heavy: shares the embedding slots
            return service.project.look(
                scene, history=ids, like=like.strip() if like and like.strip() else None, k=k,
                stride=stride, top_regions=top_regions, method=method, aspect=aspect,
                max_side=LOOK_MAX_SIDE, refine=refine, look_head=look_head,
                look_ranker=look_ranker, **chosen)

    found = await run_in_threadpool(run)
    return LookResponse(
        regions=[Region(box=r["box"], score=r["score"], items=[_result(i) for i in r["items"]])
                 for r in found["regions"]],
        mode=found["mode"], features=found["features"], scene=found["scene"],
        windows=found["windows"], seconds=found["seconds"])
