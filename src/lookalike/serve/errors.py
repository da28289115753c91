"""How the service answers errors, and the headers every response carries.

Every error is ``{"error": {"code": ..., "message": ...}}`` (``reason`` too for a rejected image);
unexpected failures are logged with their traceback and answered with a plain JSON 500.
:func:`add_error_handlers` installs the handlers on an app; :func:`error_responses` lists an
endpoint's error answers for the OpenAPI schema. Routers import this module, never ``app.py``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lookalike.api import (
    ImageRejected,
    LookalikeError,
    ModelMismatchError,
    StoreError,
    UnknownItemError,
    UnknownNameError,
)
from lookalike.serve.schemas import ErrorResponse
from lookalike.serve.security import ApiError
from lookalike.serve.service import FilterValueError
from lookalike.serve.uploads import UploadTooLarge

log = logging.getLogger("lookalike.serve")

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


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the errors an endpoint can answer with."""
    return {status: {"model": ErrorResponse, "description": _ERROR_TEXT[status]}
            for status in statuses}


def error_response(status: int, code: str, message: str, *, reason: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if reason:
        body["reason"] = reason
    return JSONResponse({"error": body}, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 413: "too_large",
               415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests"}


def add_error_handlers(app: FastAPI) -> None:

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and not isinstance(exc, ApiError):
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(exc.errors()))

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


def validation_message(errors: Any) -> str:
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




__all__ = ["error_responses", "error_response", "add_error_handlers", "validation_message",
           "SecurityHeaders", "SECURITY_HEADERS"]
