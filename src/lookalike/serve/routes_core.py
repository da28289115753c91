"""The service's own routes: the web page (``/``), liveness, readiness and the catalogue summary.

``router`` is an :class:`fastapi.APIRouter`; ``app.py`` includes it first. Like every router it
reaches the service through ``request.app.state`` (:mod:`lookalike.serve.deps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

import lookalike
from lookalike.serve.deps import service_of, settings_of
from lookalike.serve.schemas import CatalogueSummary, Health, Ready

router = APIRouter()
STATIC_DIR = Path(__file__).resolve().parent / "static"


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


@router.get("/v1/health", response_model=Health, tags=["service"], summary="Liveness")
def health() -> Health:
    """Liveness: the process answers."""
    return Health(version=lookalike.__version__)


@router.get("/v1/ready", response_model=Ready, tags=["service"], summary="Readiness",
            responses={503: {"model": Ready, "description": "No index loaded yet"}})
def ready(request: Request) -> Any:
    """Readiness: the index and its embedder are loaded (503 until they are)."""
    service = service_of(request)
    ok = service.warm_up()
    body = Ready(ready=ok, index_version=service.index_version())
    return body if ok else JSONResponse(body.model_dump(), status_code=503)


@router.get("/v1/catalogue", response_model=CatalogueSummary, tags=["catalogue"],
            summary="Catalogue summary and filter values")
def catalogue(request: Request) -> CatalogueSummary:
    """Catalogue size, the index (embedder and type) and the values each filter accepts."""
    service, settings = service_of(request), settings_of(request)
    return CatalogueSummary(**service.summary(), default_k=settings.default_k,
                            max_upload_bytes=settings.max_upload_bytes,
                            max_pixels=settings.max_pixels, read_only=settings.read_only)


__all__ = ["router", "STATIC_DIR"]
