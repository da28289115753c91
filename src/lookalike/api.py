"""The public Python API in one module: what the CLI (``lookalike.cli``, ``lookalike.commands``)
and the service (``lookalike.serve``) are allowed to call, and all a Python user needs.

* :class:`Project` -- every verb over one project folder: ``ingest``, ``index``, ``similar``,
  ``search`` (photo and/or words, with filters), ``answer``, ``recommend``, ``look``,
  ``clusters``, ``duplicates``, ``find_duplicates``, ``train``, ``evaluate`` and more
  (docs/architecture.md lists where each lives).
* plain functions that need no project: :func:`run_report` (``lookalike report``: embedders side
  by side), :func:`trainable_methods` / :func:`ready_made_embedders` (``lookalike train
  --list``), :func:`decode_image` (a safe decode of untrusted bytes), :func:`parse_history`,
  :func:`add_shards` (load Parquet vector shards, e.g. from ``--engine ray --shards``, into an
  index such as a Milvus collection).
* the types those return or take: :class:`Filters`, :class:`Recommendation`, :class:`Answer`,
  :class:`IndexSummary`, and the errors of :mod:`lookalike.errors`.

``tests/test_house.py`` fails when the CLI or the service imports any other lookalike module
(their own rooms, :mod:`lookalike.errors`, :mod:`lookalike.threads`, :mod:`lookalike.watch` and
:mod:`lookalike.demo` excepted) or touches a private member.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lookalike.catalogue.images import decode_image
from lookalike.errors import (  # noqa: F401  (re-exported)
    CatalogueError,
    ImageRejected,
    LookalikeError,
    ModelMismatchError,
    StoreError,
    UnknownItemError,
    UnknownNameError,
)
from lookalike.index.base import Filters, Hits
from lookalike.models.methods import format_value, ready_made_embedders, trainable_methods
from lookalike.models.vector_shards import add_shards
from lookalike.models.text import TextModelMissing
from lookalike.project import (
    DEFAULT_EMBEDDER,
    DEFAULT_INDEX_NAME,
    DEFAULT_PROJECT_DIR,
    IndexSummary,
    Project,
    remove_project,
)
from lookalike.recommend.personal import METHODS as RECOMMEND_METHODS
from lookalike.recommend.personal import parse_history
from lookalike.recommend.results import Recommendation
from lookalike.recommend.understood import Answer


def run_report(catalogue: str = "all", embedders: Any = (), models_dirs: Any = (),
               sizes: Any = "1000,5000,10000,20000",
               out_dir: str | Path = "lookalike-report", **options: Any):
    """``lookalike report``: embedders side by side (quality, speed, size), precision against
    catalogue size and the activation study, written into ``out_dir``; returns
    ``(comparison, files)``. See :func:`lookalike.evaluate.experiment.run_report`."""
    from lookalike.evaluate.experiment import run_report as run

    return run(catalogue, embedders, models_dirs, sizes, out_dir, **options)


def comparison_table(comparison: Any) -> tuple[list[str], list[list[str]]]:
    """The header and cells of a report's embedder comparison table, formatted."""
    from lookalike.evaluate.comparison_pages import comparison_table as table

    return table(comparison)


__all__ = [
    "Project", "IndexSummary", "Filters", "Hits", "Recommendation", "Answer", "remove_project",
    "DEFAULT_PROJECT_DIR", "DEFAULT_EMBEDDER", "DEFAULT_INDEX_NAME", "RECOMMEND_METHODS",
    "run_report", "comparison_table", "trainable_methods", "ready_made_embedders",
    "format_value", "decode_image", "parse_history", "TextModelMissing", "add_shards",
    "LookalikeError", "ImageRejected", "CatalogueError", "UnknownItemError", "UnknownNameError",
    "ModelMismatchError", "StoreError",
]
