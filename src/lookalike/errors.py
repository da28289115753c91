"""Exceptions raised by lookalike.

Every error a user can cause carries a one-line message that says what went wrong and where, so the
CLI can print it as-is and the service can return it as a JSON error.
"""

from __future__ import annotations


class LookalikeError(Exception):
    """Base class for every error lookalike raises on purpose."""


class ImageRejected(LookalikeError):
    """An image could not be used: unreadable, truncated, not an image, too large, unsupported.

    ``reason`` is a short machine-friendly code (``empty``, ``not-an-image``, ``truncated``,
    ``too-large``, ``unsupported``, ``unreadable``) and the message says it in words.
    """

    def __init__(self, reason: str, message: str, source: str | None = None) -> None:
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{message}")


class CatalogueError(LookalikeError):
    """A catalogue source is malformed: missing columns, duplicate ids, unknown format."""


class UnknownItemError(LookalikeError, KeyError):
    """An item id is not in the catalogue."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown item"


class UnknownNameError(LookalikeError, KeyError):
    """A registry lookup (embedder, index type, catalogue name) found nothing."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown name"


class ModelMismatchError(LookalikeError):
    """An index, cache or model was built for a different embedder or dimension."""


class StoreError(LookalikeError):
    """The project directory is missing, of an unknown format version, or damaged."""
