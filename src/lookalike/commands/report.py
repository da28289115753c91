"""``lookalike report``: embedders side by side (quality, speed, size), precision against
catalogue size and the activation study, written as Markdown + JSON + PNG + HTML into a folder.

Added to the main Typer app by ``lookalike.cli`` (this module never imports it); a thin layer over
:func:`lookalike.api.run_report` (:mod:`lookalike.evaluate.experiment`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lookalike.api import comparison_table, run_report
from lookalike.commands.common import JsonOption, err, out, user_errors

#: This module's commands; :mod:`lookalike.cli` adds them to the ``lookalike`` app.
commands = typer.Typer()


@commands.command("report")
@user_errors
def report_command(
        catalogue: Annotated[str, typer.Option("--catalogue", help="products, fashion-mnist, demo, or all (= products + fashion-mnist).")] = "all",
        embedder: Annotated[Optional[list[str]], typer.Option("--embedder", "-e", help="Registry name (NAME, NAME@SIZE, NAME:key=value) or saved-model folder (repeatable; default: pixels, hsv-histogram, efficientnet-lite0@224 and @112). Raw pixels is always included.")] = None,
        models_dir: Annotated[Optional[list[Path]], typer.Option("--models-dir", help="Add every saved model found below this folder (repeatable).")] = None,
        sizes: Annotated[str, typer.Option("--sizes", help="Gallery sizes for precision against catalogue size (the full train split is always added).")] = "1000,5000,10000,20000",
        out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the report into.")] = Path("lookalike-report"),
        quick: Annotated[bool, typer.Option("--quick", help="Subsample: products 500 vs 5,000, Fashion-MNIST 1,000 vs 10,000; activation study 2 epochs x 600 images.")] = False,
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Where embeddings and metrics are cached (default: $LOOKALIKE_CACHE_DIR/report or ~/.cache/lookalike/report).")] = None,
        threads: Annotated[int, typer.Option("--threads", min=1, max=256, help="CPU threads for embedding, timing and search.")] = 2,
        candidates: Annotated[int, typer.Option("--candidates", min=1, help="Hamming candidates re-ranked per query for binary codes.")] = 100,
        products: Annotated[Optional[Path], typer.Option("--products-parquet", help="The products Parquet (default: $LOOKALIKE_PRODUCTS_PARQUET or ../shared/data/).")] = None,
        activation_study: Annotated[bool, typer.Option("--activation-study", help="Re-run the activation study (bounded: 5 epochs x 3,000 images per dataset, 3 min cap per training; --quick: 2 x 600).")] = False,
        from_results: Annotated[Optional[Path], typer.Option("--from-results", help="Include the activation study from this JSON (benchmarks/results/activation_study.json).")] = None,
        as_json: JsonOption = False) -> None:
    """Compare embedders (quality, speed, size), precision against catalogue size, activations."""
    progress = None if as_json else (lambda line: err.log(line, highlight=False))
    comparison, files = run_report(
        catalogue, embedder or (), models_dir or (), sizes, out_dir, quick=quick,
        cache_dir=cache_dir, threads=threads, candidates=candidates, products_path=products,
        activation_study=activation_study, from_results=from_results, progress=not as_json,
        log=progress)
    if as_json:
        out.print_json(json.dumps({"files": {k: str(v) for k, v in files.items()},
                                   "rows": comparison.rows}, default=float))
        return
    from rich.console import Console
    from rich.table import Table

    # Off a terminal Rich would wrap the wide table at 80 columns.
    console = out if out.is_terminal else Console(width=240)
    header, cells = comparison_table(comparison)
    table = Table(title="Embedder comparison", title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < 2 else "right", overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    for note in comparison.notes:
        out.print(f"note: {note}", highlight=False, soft_wrap=True)
    out.print(f"wrote {files['markdown']}, {files['json']}, {files['html']} and "
              f"{len(files) - 3} plot(s)", highlight=False, soft_wrap=True)
