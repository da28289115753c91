"""Uploads: a request-size cap enforced while the body streams in, and a safe decode.

FastAPI parses a multipart form before the endpoint runs, so a size check inside the endpoint
would come after the whole body had been read (and spooled to disk). :class:`BodySizeLimit`
sits in front of the app instead: it refuses a declared ``Content-Length`` above the cap at once
and stops reading a streamed body as soon as it passes the cap, answering 413 either way.
The bytes that do arrive are decoded only by :func:`lookalike.catalogue.images.decode_image`,
which sniffs the content (the file name and content type are never trusted) and checks the
pixel count from the header before decoding anything.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import UploadFile
from PIL import Image

from lookalike.api import ImageRejected, decode_image

# Room for the multipart framing and the small form fields that travel with the image.
FORM_OVERHEAD_BYTES = 64 * 1024
_READ_CHUNK = 256 * 1024


class UploadTooLarge(Exception):
    """Raised inside the app when an upload passes the cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload is larger than the limit of {limit:,} bytes")
        self.limit = limit


def too_large_body(limit: int) -> bytes:
    return json.dumps({"error": {"code": "too_large", "message":
                                 f"upload is larger than the limit of {limit:,} bytes"}},
                      separators=(",", ":")).encode()


class BodySizeLimit:
    """Pure ASGI middleware: 413 for request bodies larger than an upload of ``max_upload_bytes``
    (plus :data:`FORM_OVERHEAD_BYTES` of form framing), without reading them.

    Whatever the app does when the body is cut short (FastAPI turns a failed form parse into a
    400), the response is replaced with the 413: the flag set while counting decides.
    """

    def __init__(self, app: Any, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.limit = max_upload_bytes + FORM_OVERHEAD_BYTES

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._send_413(send)
            return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> dict:
            nonlocal received, exceeded
            if exceeded:  # never hand the app more bytes once over the cap
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    raise UploadTooLarge(self.max_upload_bytes)
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal response_started
            if exceeded:
                return  # the app's own answer to the broken body is replaced by the 413
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except UploadTooLarge:
            exceeded = True
        if exceeded and not response_started:
            await self._send_413(send)

    async def _send_413(self, send: Any) -> None:
        body = too_large_body(self.max_upload_bytes)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes, reading in chunks and stopping as soon as ``limit`` is passed."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await upload.read(_READ_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise UploadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def decode_upload(data: bytes, max_pixels: int, name: str = "uploaded image") -> Image.Image:
    """An RGB image from uploaded bytes; :class:`ImageRejected` (with a reason) otherwise."""
    if not data:
        raise ImageRejected("empty", "the uploaded file is empty (0 bytes)", name)
    return decode_image(data, source=name, max_pixels=max_pixels)
