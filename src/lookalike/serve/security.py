"""API keys for the write endpoints.

The key is compared with :func:`hmac.compare_digest` (constant time) and is never logged, echoed
in an error or put in a URL. (Writes themselves are serialised by
:meth:`lookalike.project.Project.write_lock`: a thread lock plus an ``fcntl`` lock on
``<project>/.write.lock``, shared by every process working on the project.)
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

# auto_error=False: we answer with our own JSON errors, and both schemes are optional on their
# own (either one is enough). They still appear in the OpenAPI schema for clients and docs.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="The service's API key (or use Authorization: Bearer).")
bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`.")


class ApiError(HTTPException):
    """An HTTP error with a machine-readable ``code``, rendered as ``{"error": {...}}``."""

    def __init__(self, status_code: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code


def keys_match(given: str, expected: str) -> bool:
    """Constant-time comparison of two keys (as UTF-8 bytes, so any text is safe to compare)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def require_api_key(request: Request,
                    header_key: str | None = Security(api_key_header),
                    credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """FastAPI dependency guarding write endpoints.

    Read-only services refuse writes outright (403 ``read_only``); otherwise a missing key is
    401 ``unauthorized`` and a wrong one 403 ``forbidden``.
    """
    state = request.app.state
    if state.settings.read_only:
        raise ApiError(403, "read_only", "this service is read-only; writes are disabled")
    expected: str | None = state.api_key
    given = header_key or (credentials.credentials if credentials else None)
    if not given:
        raise ApiError(401, "unauthorized", "this endpoint needs an API key: send it in the "
                       "X-API-Key header or as Authorization: Bearer <key>",
                       headers={"WWW-Authenticate": "Bearer"})
    if expected is None or not keys_match(given, expected):
        raise ApiError(403, "forbidden", "the API key is not valid")
