"""lookalike: visual product recommendation from a catalogue of product photos.

The public API is :class:`Project` (one directory per shop; every verb is a method), gathered
with the plain functions, types and errors in :mod:`lookalike.api`, and the two plug-in
interfaces, :class:`lookalike.models.base.Embedder` and :class:`lookalike.index.base.VectorIndex`.
Importing this package is light: torch, FAISS and the models load on first use.
"""

from lookalike.errors import (
    CatalogueError,
    ImageRejected,
    LookalikeError,
    ModelMismatchError,
    StoreError,
    UnknownItemError,
    UnknownNameError,
)
from lookalike.index.base import Filters, Hits
from lookalike.project import IndexSummary, Project
from lookalike.recommend.results import Recommendation

__version__ = "0.1.0"

__all__ = [
    "Project", "IndexSummary", "Recommendation", "Filters", "Hits",
    "LookalikeError", "ImageRejected", "CatalogueError", "UnknownItemError", "UnknownNameError",
    "ModelMismatchError", "StoreError", "__version__",
]
