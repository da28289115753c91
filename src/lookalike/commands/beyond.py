"""CLI commands beyond the photo: the words index, category-first search, clusters, duplicates.

Words queries themselves are options of the main commands (``lookalike search --text``,
``lookalike similar ID --text``); ``text-index`` builds or updates the fused index they use.

``lookalike.cli`` adds ``commands`` to the main Typer app (this module never imports it). Each
command is a thin layer over one :class:`~lookalike.project.Project` method (the same ones the
REST routes and the tests call).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lookalike.commands.common import (
    CategoryOption,
    ColourOption,
    GenderOption,
    IndexOption,
    JsonOption,
    KOption,
    PriceMaxOption,
    PriceMinOption,
    ProjectOption,
    WhereOption,
    filters_of,
    print_results,
    out,
    user_errors,
)
from lookalike.api import DEFAULT_PROJECT_DIR, LookalikeError, Project

#: This module's commands; :mod:`lookalike.cli` adds them to the ``lookalike`` app.
commands = typer.Typer()

ItemOption = Annotated[Optional[str], typer.Option("--item", help="Start from this catalogue item (more like this).")]


@commands.command("text-index")
@user_errors
def text_index_command(
        column: Annotated[Optional[list[str]], typer.Option("--column", help="Text column(s) to embed (repeatable; default: title).")] = None,
        index: IndexOption = None, project: ProjectOption = Path(DEFAULT_PROJECT_DIR),
        as_json: JsonOption = False) -> None:
    """Embed the items' titles and build the words+photo (fused) index."""
    summary = Project(project, create=False).text_index(index, columns=column,
                                                        progress=not as_json)
    if as_json:
        out.print_json(json.dumps(summary.to_json()))
        return
    out.print(f"text index over {summary.image_index!r}: {summary.size} items "
              f"({', '.join(summary.columns)}), {summary.added} added/updated, "
              f"{summary.removed} removed, {summary.texts_embedded} texts embedded")


@commands.command("category-probe")
@user_errors
def category_probe_command(
        column: Annotated[str, typer.Option("--column", help="Attribute to classify.")] = "category",
        c: Annotated[float, typer.Option("--C", help="Inverse regularisation strength.")] = 1.0,
        max_iter: Annotated[int, typer.Option("--max-iter")] = 300,
        index: IndexOption = None, project: ProjectOption = Path(DEFAULT_PROJECT_DIR),
        as_json: JsonOption = False) -> None:
    """Train the linear probe category-first search uses (on the train split)."""
    probe = Project(project, create=False).category_probe(column=column, index=index, C=c,
                                                          max_iter=max_iter)
    info = {"column": probe.column, "classes": len(probe.classes), **probe.info}
    if as_json:
        out.print_json(json.dumps(info))
        return
    out.print(f"probe for {column!r}: {len(probe.classes)} classes, {info['n_train']} training "
              f"items, train accuracy {info['train_accuracy']:.3f} ({info['fit_seconds']} s)")


@commands.command("category-search")
@user_errors
def category_search_command(
        photo: Annotated[Optional[Path], typer.Argument(help="A photo (or use --item).")] = None,
        item: ItemOption = None, k: KOption = 5,
        column: Annotated[str, typer.Option("--column")] = "category",
        category: CategoryOption = None, gender: GenderOption = None, colour: ColourOption = None,
        price_min: PriceMinOption = None, price_max: PriceMaxOption = None,
        where: WhereOption = None, index: IndexOption = None,
        project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Classify the query's category first, then search inside it (paper 001)."""
    filters = filters_of(category, gender, colour, price_min, price_max, where)
    result = Project(project, create=False, read_only=True).category_search(
        photo, item_id=item, k=k, filters=filters, index=index, column=column)
    if as_json:
        out.print_json(json.dumps(result.to_json()))
        return
    decision = result.decision
    scope = ", ".join(decision.categories) or "the whole catalogue"
    out.print(f"searched {scope} ({decision.scope}, confidence {decision.confidence:.2f})",
              highlight=False)
    print_results(result.results, False, f"most like {photo or item}")


@commands.command("clusters")
@user_errors
def clusters_command(
        k: Annotated[int, typer.Option("-k", "--k", min=2, max=100_000, help="Number of clusters.")] = 50,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        method: Annotated[str, typer.Option("--method", help="faiss or minibatch.")] = "faiss",
        index: IndexOption = None, project: ProjectOption = Path(DEFAULT_PROJECT_DIR),
        as_json: JsonOption = False) -> None:
    """K-means over the catalogue's embeddings: purity, NMI and a picture grid per cluster."""
    report = Project(project, create=False).clusters(k=k, seed=seed, method=method,
                                                     index=index)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    scores = ", ".join(f"{c}: purity {report.purity[c]:.3f} NMI {report.nmi[c]:.3f}"
                       for c in report.purity)
    out.print(f"{report.k} clusters over {len(report.ids)} items ({report.seconds:.1f} s); "
              f"{scores}", highlight=False)
    if report.folder:
        out.print(f"saved: {report.folder}  picture grid: {report.folder / 'clusters.html'}")


@commands.command("duplicates")
@user_errors
def duplicates_command(
        method: Annotated[str, typer.Option("--method", help="copies (default: robust to combined edits), phash+colour, phash or embedding.")] = "copies",
        threshold: Annotated[Optional[float], typer.Option("--threshold", help="Min texture correlation (copies), max Hamming bits (phash) or min cosine (embedding).")] = None,
        photo: Annotated[Optional[Path], typer.Option("--photo", help="Only check this photo against the catalogue.")] = None,
        index: IndexOption = None, project: ProjectOption = Path(DEFAULT_PROJECT_DIR),
        as_json: JsonOption = False) -> None:
    """Groups of near-duplicate products (or the duplicates of one --photo)."""
    proj = Project(project, create=False)
    if photo is not None:
        matches = proj.find_duplicates(photo, method=method, threshold=threshold, index=index)
        if as_json:
            out.print_json(json.dumps({"duplicates": [{"id": i, "distance": d}
                                                      for i, d in matches]}))
            return
        if not matches:
            out.print(f"{photo}: no near-duplicate in the catalogue")
        for item_id, distance in matches:
            out.print(f"{item_id}\t{distance:g}", highlight=False)
        return
    if threshold is not None and method.startswith("phash") and not float(threshold).is_integer():
        raise LookalikeError(f"--threshold {threshold}: phash thresholds are whole bits")
    report = proj.duplicates(method=method, threshold=threshold, index=index)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    out.print(f"{method} (threshold {report.threshold:g}): {len(report.groups)} groups, "
              f"{report.n_duplicate_items} of {report.n_items} items, {report.n_pairs} pairs "
              f"({report.seconds:.1f} s)")
    for group in report.groups[:10]:
        out.print(f"  {len(group.ids)}: {' '.join(group.ids[:8])}"
                  + (" ..." if len(group.ids) > 8 else ""), highlight=False)
    if report.folder:
        out.print(f"report: {report.folder / 'groups.json'}  picture grid: "
                  f"{report.folder / 'groups.html'}")
