"""CLI commands for personalised picks and shop-the-look.

``lookalike.cli`` adds ``commands`` to the main Typer app (this module never imports it)::

    lookalike recommend --history 15970,39386 -k 10 --method latent-svm --json
    lookalike recommend --shopper u42              # history from the ingested event log
    lookalike look scene.jpg --like 15970 --top-regions 3 --windows 40,60,80 --stride 10
    lookalike train-boxes --scenes 600               # the box regressor, on this catalogue
    lookalike ingest-events events.csv
    lookalike eval-recs --method knn-vote --holdout 1
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

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

def _id_list(values: list[str]) -> list[str]:
    """Ids given as repeated options and/or comma-separated (``--history 1,2 --history 3``)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _sizes(values: list[str]) -> tuple[int, ...]:
    """Window sizes from ``--windows 20,30,40`` and/or repeated options; a clear error if not
    whole numbers."""
    sizes = []
    for part in _id_list(values):
        if not part.isdigit():
            raise LookalikeError(f"window sizes must be whole numbers of pixels, got {part!r}")
        sizes.append(int(part))
    return tuple(sizes)


MethodOption = Annotated[str, typer.Option(
    "--method", "-m", help="centroid, knn-vote or latent-svm (paper 000's latent SVM).")]


@commands.command()
@user_errors
def recommend(
        items: Annotated[Optional[list[str]], typer.Argument(help="Item ids the shopper viewed, oldest first.", show_default=False)] = None,
        history: Annotated[Optional[list[str]], typer.Option("--history", help="Item ids the shopper viewed, comma-separated, oldest first (repeatable; same as the arguments).")] = None,
        shopper: Annotated[Optional[str], typer.Option("--shopper", help="Use this shopper's history from the ingested event log.")] = None,
        last: Annotated[Optional[int], typer.Option("--last", min=1, help="Only the shopper's last N events.")] = None,
        method: MethodOption = "centroid", k: KOption = 10,
        diversity: Annotated[float, typer.Option("--diversity", min=0.0, max=1.0, help="0 = most relevant, 1 = most varied (MMR).")] = 0.0,
        category: CategoryOption = None, gender: GenderOption = None, colour: ColourOption = None,
        price_min: PriceMinOption = None, price_max: PriceMaxOption = None,
        where: WhereOption = None, index: IndexOption = None,
        project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Personalised picks from a history of viewed items (seen items are never returned)."""
    given = _id_list([*(items or []), *(history or [])])
    proj = Project(project, create=False, read_only=True)
    if shopper is not None:
        if given:
            raise LookalikeError("give item ids or --shopper, not both")
        given = proj.shopper_history(shopper, last)
    filters = filters_of(category, gender, colour, price_min, price_max, where)
    results = proj.recommend(given, k=k, method=method, filters=filters,
                             diversity=diversity, index=index)
    print_results(results, as_json, f"picked for {shopper or 'this history'} ({method})")


@commands.command()
@user_errors
def look(
        photo: Annotated[Path, typer.Argument(help="A scene photo.")],
        history: Annotated[Optional[list[str]], typer.Option("--history", help="Items the shopper viewed, comma-separated (repeatable).")] = None,
        like: Annotated[Optional[str], typer.Option("--like", help="Rank regions by similarity to this item.")] = None,
        method: MethodOption = "centroid", k: KOption = 5,
        top_regions: Annotated[int, typer.Option("--top-regions", min=1, max=50, help="Regions to return.")] = 5,
        windows: Annotated[Optional[list[str]], typer.Option("--windows", "--window", help="Window sizes in px, comma-separated (default 20,30,...,100).")] = None,
        stride: Annotated[Optional[int], typer.Option("--stride", min=1, help="Window step in px (default: smallest window / 4).")] = None,
        aspect: Annotated[float, typer.Option("--aspect", min=0.25, max=4.0, help="Window height / width (default 4/3, the catalogue photos' shape; 1 = paper 000's squares).")] = 4 / 3,
        features: Annotated[str, typer.Option("--features", help="Embedder of the fast pass over every window; 'index' = the index's own.")] = "phog+hsv-histogram",
        rerank: Annotated[int, typer.Option("--rerank", min=0, max=1000, help="How many of the best windows the index's embedder re-scores from their crops (0: none).")] = 50,
        refine: Annotated[bool, typer.Option("--refine/--no-refine", help="Move the boxes onto the products with the learned box regressor (`lookalike train-boxes`, else the packaged one).")] = True,
        localiser: Annotated[str, typer.Option("--localiser", help="How products are found: 'segmenter' (the packaged product-vs-background net) or 'windows' (sliding windows only).")] = "segmenter",
        look_head: Annotated[bool, typer.Option("--look-head/--no-look-head", help="With --like: compare regions and the liked product under the packaged look head (same kind of product; the default), or by the index's plain cosine (this exact photo).")] = True,
        look_ranker: Annotated[bool, typer.Option("--look-ranker/--no-look-ranker", help="With --like and the look head: rank the boxes by the packaged look ranker (the default), or by head cosine + category vote + objectness.")] = True,
        index: IndexOption = None,
        project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Shop the look: regions of a scene photo with the most similar products for each."""
    sizes = _sizes(windows or [])
    proj = Project(project, create=False, read_only=True)
    chosen = {"windows": sizes} if sizes else {}  # else look's own default sizes
    found = proj.look(photo, history=_id_list(history or []) or None, like=like, k=k,
                      stride=stride, top_regions=top_regions,
                      features=None if features == "index" else features, method=method,
                      index=index, aspect=aspect, rerank=rerank, refine=refine,
                      localiser=localiser, look_head=look_head, look_ranker=look_ranker,
                      **chosen)
    if as_json:
        out.print_json(json.dumps(found))
        return
    out.print(f"{photo}: found by {found['localiser']} ({found['windows']['count']} windows, "
              f"{found['features']}), ranked by {found['mode']} in {found['seconds']:.2f} s")
    table = Table(title_justify="left")
    for column in ("#", "box [x0, y0, x1, y1]", "score", "products"):
        table.add_column(column, overflow="fold")
    for rank, region in enumerate(found["regions"], 1):
        products = ", ".join(f"{i['id']} {i.get('category') or ''}".strip()
                             for i in region["items"])
        table.add_row(str(rank), str(region["box"]), f"{region['score']:.3f}", products)
    out.print(table)


@commands.command("train-boxes")
@user_errors
def train_boxes(
        scenes: Annotated[int, typer.Option("--scenes", min=10, help="Generated training scenes (5 products each).")] = 600,
        per_product: Annotated[int, typer.Option("--per-product", min=1, help="Jittered boxes per placed product.")] = 6,
        epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 10,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the scenes and the training.")] = 0,
        resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")] = False,
        project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Train shop-the-look's box regressor on scenes generated from this catalogue's photos."""
    summary = Project(project, create=False).train_boxes(
        scenes=scenes, per_product=per_product, epochs=epochs, seed=seed, resume=resume)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(f"box regressor: {summary['samples']} boxes from {scenes} scenes; validation IoU "
              f"{summary['val_iou_before']:.3f} -> {summary['val_iou']:.3f} after "
              f"{summary['epochs']} epochs ({summary['seconds']:.0f} s); saved to "
              f"{summary['folder']}")


@commands.command("ingest-events")
@user_errors
def ingest_events_command(
        log: Annotated[Path, typer.Argument(help="CSV or Parquet with shopper, item, timestamp[, event].")],
        project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Add a shopper event log to the project (atomic; re-ingesting adds nothing twice)."""
    report = Project(project, create=False).ingest_events(log)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    out.print(f"{log}: {report.added} events added, {report.duplicates} already present, "
              f"{report.unknown_items} skipped (item not in the catalogue"
              f"{': ' + ', '.join(report.unknown_examples) if report.unknown_examples else ''}); "
              f"{report.total_events} events from {report.shoppers} shoppers in total")


@commands.command("eval-recs")
@user_errors
def eval_recs_command(
        method: MethodOption = "centroid",
        k: Annotated[int, typer.Option("-k", min=1, max=1000, help="Cut-off for HR@k and NDCG@k.")] = 10,
        holdout: Annotated[int, typer.Option("--holdout", min=1, help="Last events per shopper held out.")] = 1,
        min_history: Annotated[int, typer.Option("--min-history", min=1, help="Skip shoppers with a shorter history.")] = 1,
        max_shoppers: Annotated[Optional[int], typer.Option("--max-shoppers", min=1, help="Evaluate a seeded sample of shoppers.")] = None,
        event: Annotated[Optional[list[str]], typer.Option("--event", help="Only these event types (repeatable).")] = None,
        diversity: Annotated[float, typer.Option("--diversity", min=0.0, max=1.0)] = 0.0,
        index: IndexOption = None,
        project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Replay the event log: hide each shopper's last events, report HR@k, NDCG@k, coverage."""
    report = Project(project, create=False, read_only=True).evaluate_recs(
        method, k=k, holdout=holdout, min_history=min_history, max_shoppers=max_shoppers,
        event_types=event, index=index, diversity=diversity)
    if as_json:
        out.print_json(json.dumps(report.to_json()))
        return
    table = Table(title=f"{method}: {report.n_shoppers} shoppers, last {holdout} held out",
                  title_justify="left")
    for name in report.metrics:
        table.add_column(name)
    table.add_row(*[f"{v:.4f}" for v in report.metrics.values()])
    out.print(table)
    skipped = {k_: v for k_, v in report.skipped.items() if v}
    if skipped:
        out.print(f"skipped shoppers: {skipped}")
