"""``lookalike report`` as one plain function: compare embedders over named catalogues (quality,
speed, size, precision against catalogue size), optionally with the activation study, and write
the report's files (Markdown, JSON, plots, HTML).

The CLI (``lookalike report``) and Python callers (``lookalike.api.run_report``) both call
:func:`run_report`; the measuring is :func:`lookalike.evaluate.comparison.compare`, the pages
:func:`lookalike.evaluate.comparison_pages.write_report`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lookalike.errors import LookalikeError
from lookalike.evaluate.activation import load_activation_results, run_activation_study
from lookalike.evaluate.comparison import (
    ALL_CATALOGUES,
    CATALOGUES,
    DEFAULT_EMBEDDERS,
    Comparison,
    compare,
    parse_sizes,
)
from lookalike.evaluate.comparison_pages import write_report


def report_catalogues(catalogue: str) -> tuple[str, ...]:
    """The catalogues ``--catalogue`` names: one of :data:`CATALOGUES`, or ``all``."""
    if catalogue == "all":
        return ALL_CATALOGUES
    if catalogue in CATALOGUES:
        return (catalogue,)
    raise LookalikeError(f"--catalogue {catalogue!r}: choose from {', '.join(CATALOGUES)} "
                         "or all")


def run_report(catalogue: str = "all", embedders: Sequence[str] = (),
               models_dirs: Sequence[str | Path] = (), sizes: str | Sequence[int] = "1000,5000,10000,20000",
               out_dir: str | Path = "lookalike-report", *, quick: bool = False,
               cache_dir: str | Path | None = None, threads: int = 2, candidates: int = 100,
               products_path: str | Path | None = None, activation_study: bool = False,
               from_results: str | Path | None = None, progress: bool = True,
               log: Callable[[str], Any] | None = None) -> tuple[Comparison, dict[str, Path]]:
    """Compare ``embedders`` (names, ``NAME@SIZE``, ``NAME:key=value`` or saved-model folders;
    comma-separated entries are split; default :data:`DEFAULT_EMBEDDERS`) plus every saved model
    below ``models_dirs`` on ``catalogue``; write the report into ``out_dir``. The activation
    study is re-run (``activation_study``) or read from a results JSON (``from_results``), not
    both. Returns the comparison and the files written (``markdown``, ``json``, ``html``,
    plots)."""
    catalogues = report_catalogues(catalogue)
    if activation_study and from_results:
        raise LookalikeError("give either --activation-study (re-run) or --from-results FILE, "
                             "not both")
    specs = [part.strip() for item in embedders for part in item.split(",")
             if part.strip()] or list(DEFAULT_EMBEDDERS)
    # Fail on a bad results file before the long part of the run.
    activation = load_activation_results(from_results) if from_results else None
    comparison = compare(catalogues, specs, [Path(f) for f in models_dirs], parse_sizes(sizes),
                         cache_dir=cache_dir, quick=quick, threads=threads,
                         candidates=candidates, products_path=products_path, progress=progress)
    if activation_study:
        activation = run_activation_study(quick=quick, threads=threads, log=log)
    comparison.activation = activation
    return comparison, write_report(comparison, Path(out_dir))


__all__ = ["run_report", "report_catalogues"]
