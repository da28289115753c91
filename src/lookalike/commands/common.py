"""What the ``lookalike`` commands share: the two consoles, the common Typer options, one-line
user errors, ``KEY=VALUE`` options, filters from options and the results table.

A leaf of the CLI: :mod:`lookalike.cli` (which assembles the app) and the command modules of
:mod:`lookalike.commands` import it; it imports neither, so the dependency points one way:
``cli -> commands.* -> commands.common -> lookalike (public API)``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from lookalike.api import Filters, LookalikeError

out = Console()
err = Console(stderr=True)

ProjectOption = Annotated[Path, typer.Option("--project", "-p", help="Project directory.",
                                             envvar="LOOKALIKE_PROJECT")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
KOption = Annotated[int, typer.Option("-k", "--k", min=1, max=1000, help="How many results.")]
IndexOption = Annotated[Optional[str], typer.Option("--index", help="Index name (default: the project's).")]
CategoryOption = Annotated[Optional[list[str]], typer.Option("--category", help="Keep only this category (repeatable).")]
GenderOption = Annotated[Optional[list[str]], typer.Option("--gender", help="Keep only this gender (repeatable).")]
ColourOption = Annotated[Optional[list[str]], typer.Option("--colour", help="Keep only this colour (repeatable).")]
PriceMinOption = Annotated[Optional[float], typer.Option("--price-min", help="Lowest price.")]
PriceMaxOption = Annotated[Optional[float], typer.Option("--price-max", help="Highest price.")]
WhereOption = Annotated[Optional[list[str]], typer.Option(
    "--where", help="Attribute filter COLUMN=VALUE (repeatable; values of one column are OR-ed).")]

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Turn lookalike's own errors into one red line and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LookalikeError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted; completed work is kept, re-run to resume")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def filters_of(category, gender, colour, price_min, price_max, where) -> Filters | None:
    """The filters the ``--category/--gender/--colour/--price-*/--where`` options ask for
    (None when they ask for nothing)."""
    extra: dict[str, list[str]] = {}
    for clause in where or []:
        column, sep, value = clause.partition("=")
        if not sep or not column.strip():
            raise LookalikeError(f"--where {clause!r}: expected COLUMN=VALUE")
        extra.setdefault(column.strip(), []).append(value.strip())
    filters = Filters.of(category=category or None, gender=gender or None, colour=colour or None,
                         price_min=price_min, price_max=price_max, **extra)
    return None if filters.is_empty() else filters


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as JSON when it parses (numbers, lists, true/false),
    else kept as text: ``epochs=3``, ``hidden=[256,64]``, ``precision=fp32``."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise LookalikeError(f"--option {text!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value.strip()


def print_results(results, as_json: bool, heading: str) -> None:
    """Query results as a table under ``heading``, or as ``{"results": [...]}`` JSON."""
    if as_json:
        out.print_json(json.dumps({"results": [r.to_json() for r in results]}))
        return
    table = Table(title=heading, title_justify="left")
    for column in ("#", "id", "score", "category", "title"):
        table.add_column(column, overflow="fold")
    for rank, r in enumerate(results, 1):
        table.add_row(str(rank), r.id, f"{r.score:.3f}", r.category or "", r.title or "")
    out.print(table)


def print_answer(found, as_json: bool, heading: str) -> None:
    """An :class:`~lookalike.api.Answer` (``Project.answer``), with what the words meant."""
    if as_json:
        out.print_json(json.dumps(found.to_json()))
        return
    print_results(found.results, False, heading)
    if found.understood:
        meant = "; ".join(f"{c}: {' or '.join(v)}" for c, v in found.understood.items())
        kept = "".join(f"; kept from the photo: {c}: {' or '.join(v)}"
                       for c, v in found.kept.items())
        out.print(f"understood {meant}{kept}; free text: {found.free_text or '-'} "
                  "(--no-understand: all words to the text model)", highlight=False, soft_wrap=True)
