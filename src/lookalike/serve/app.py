"""The REST API (``/v1``) and the web page (``/``) of lookalike, as a FastAPI app.

Build it with :func:`create_app` (settings in code) or let uvicorn call
:func:`create_app_from_env` (settings from ``LOOKALIKE_*`` env vars / a config file). Building an
app never changes process-wide state: the torch threads of a worker (``torch_threads``) are set
by the process's owner, :mod:`lookalike.serve.run`, whose factory does both::

    uvicorn --factory lookalike.serve.run:create_worker_app --workers 2

The routes live in routers (``routes_core``, ``routes_queries``, ``routes_items``,
``routes_personal``, ``routes_beyond``); errors and security headers in
:mod:`lookalike.serve.errors`. Every error is ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

import lookalike
from lookalike.serve import (
    routes_beyond,
    routes_core,
    routes_items,
    routes_personal,
    routes_queries,
)
from lookalike.serve.errors import SecurityHeaders, add_error_handlers
from lookalike.serve.routes_core import STATIC_DIR
from lookalike.serve.service import LookalikeService
from lookalike.serve.settings import ServeSettings, load_settings
from lookalike.serve.uploads import BodySizeLimit

log = logging.getLogger("lookalike.serve")


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

    add_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["X-API-Key", "Authorization", "Content-Type"],
                           allow_credentials=False, max_age=600)
    app.add_middleware(BodySizeLimit, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(SecurityHeaders)
    # Every route lives in a router of its own module (they never import this one); they reach
    # the service via app.state (lookalike.serve.deps). The order is the OpenAPI schema's.
    for routes in (routes_core, routes_queries, routes_items, routes_personal, routes_beyond):
        app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def create_app_from_env() -> FastAPI:
    """The app with settings from the environment (leaves torch's threads alone; a worker
    process's factory is :func:`lookalike.serve.run.create_worker_app`)."""
    return create_app(load_settings())


__all__ = ["create_app", "create_app_from_env"]
