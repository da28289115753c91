"""``lookalike train METHOD``: learn an embedder on the project's own catalogue.

A thin layer over :meth:`lookalike.project.Project.train`; ``lookalike.cli`` adds ``commands``
to the main Typer app (this module never imports it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from rich.table import Table
from typer.core import TyperCommand

from lookalike.commands.common import JsonOption, ProjectOption, out, parse_option, user_errors
from lookalike.api import (
    DEFAULT_PROJECT_DIR,
    LookalikeError,
    Project,
    format_value,
    ready_made_embedders,
    trainable_methods,
)

#: This module's commands; :mod:`lookalike.cli` adds them to the ``lookalike`` app.
commands = typer.Typer()


def parse_size(text: str) -> list[int]:
    """``60x80`` (width x height) or ``112`` (square)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or min(numbers, default=0) < 1:
        raise LookalikeError(f"--image-size {text!r}: expected WIDTHxHEIGHT (e.g. 60x80) or one "
                             "number")
    return numbers * 2 if len(numbers) == 1 else numbers


class _TrainHelp(TyperCommand):
    """``train --help`` ends with every trainable method, read from the registry when the help
    is shown (so plain commands never import the models)."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.epilog = methods_epilog()
        super().format_help(ctx, formatter)


def methods_epilog() -> str:
    """The help's list: one line per method with its named choices, then the pointer to
    ``--list`` (paragraphs separated by blank lines, as Typer's help expects)."""
    lines = []
    for method in trainable_methods():
        by_choices: dict[tuple[str, ...], list[str]] = {}
        for setting in method.group("model"):
            if setting.choices:
                by_choices.setdefault(setting.choices, []).append(setting.name)
        named = "; ".join(f"{', '.join(names)}: {' | '.join(choices)}"
                          for choices, names in by_choices.items())
        lines.append(f"[bold]{method.name}[/bold]: {method.summary}"
                     + (f" ({named})" if named else ""))
    return ("Methods:\n\n" + "\n\n".join(lines) + "\n\nEvery setting of every method, with "
            "defaults and allowed values: lookalike train --list (or: lookalike train METHOD "
            "--list, --list --json).")


@commands.command("train", cls=_TrainHelp)
@user_errors
def train_command(
        method: Annotated[Optional[str], typer.Argument(help="What to train: a method of the list below (lookalike train --list).", show_default=False)] = None,
        name: Annotated[Optional[str], typer.Option("--name", help="Model name (default: the method); saved in models/NAME.")] = None,
        label_column: Annotated[str, typer.Option("--label-column", help="Catalogue column with the class labels.")] = "article_type",
        epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Training epochs (stage 2 for finetune).")] = None,
        image_size: Annotated[Optional[str], typer.Option("--image-size", help="Training image size WIDTHxHEIGHT (default: the catalogue's).")] = None,
        option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="Model or training setting KEY=VALUE (repeatable).")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of models/NAME.")] = False,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed.")] = None,
        list_methods: Annotated[bool, typer.Option("--list", help="List the methods and the settings each takes (--option KEY=VALUE), then stop.")] = False,
        project: ProjectOption = Path(DEFAULT_PROJECT_DIR), as_json: JsonOption = False) -> None:
    """Learn an embedder on the catalogue's train split; then index it with --embedder models/NAME."""
    if list_methods:
        show_methods(method, as_json)
        return
    if method is None:
        raise LookalikeError("name a method to train (see lookalike train --list)")
    options: dict[str, Any] = dict(parse_option(text) for text in option or [])
    if epochs is not None:
        options["epochs"] = epochs
    if image_size is not None:
        options["image_size"] = parse_size(image_size)
    if seed is not None:
        options["seed"] = seed
    proj = Project(project, create=False)
    summary = proj.train(method, name=name, label_column=label_column, options=options,
                         resume=resume, progress=not as_json)
    if as_json:
        out.print_json(json.dumps(summary.to_json(), default=str))
        return
    table = Table(title=f"trained {summary.embedder} as models/{summary.name}",
                  title_justify="left", show_header=False)
    rows = [("model", summary.model_dir), ("embedder id", summary.embedder_id),
            ("dimensions", str(summary.dim)),
            ("training items", f"{summary.items} ({summary.classes} classes of "
                               f"{summary.label_column})" if summary.label_column else
             str(summary.items)),
            ("seconds", f"{summary.seconds:.1f}")]
    rows += _result_rows(summary.result)
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)
    out.print(f"index it with: {summary.index_command} --project {project}", highlight=False)


def show_methods(name: str | None, as_json: bool) -> None:
    """``train --list``: every trainable method (or only ``name``) and its settings."""
    chosen = trainable_methods()
    if name is not None:
        known = [m.name for m in chosen]
        if name not in known:
            raise LookalikeError(f"{name!r} is not a trainable method; methods: "
                                 f"{', '.join(known)}")
        chosen = [m for m in chosen if m.name == name]
    ready = ready_made_embedders()
    if as_json:
        out.print_json(json.dumps({"methods": [m.to_json() for m in chosen],
                                   "ready_made_embedders": ready}))
        return
    overview = Table(title="lookalike train METHOD", title_justify="left")
    for column in ("method", "learns from", "what it is"):
        overview.add_column(column, overflow="fold")
    for method in chosen:
        overview.add_row(method.name, method.learns_from, method.summary)
    out.print(overview)
    for method in chosen:
        table = Table(title=f"{method.name}: --option KEY=VALUE", title_justify="left")
        for column in ("setting", "default", "allowed values", "kind"):
            table.add_column(column, overflow="fold")
        for setting in method.settings:
            table.add_row(setting.name, format_value(setting.default),
                          ", ".join(setting.choices), setting.group)
        out.print(table)
    out.print("--epochs, --seed, --image-size and --label-column set those settings too. "
              f"Ready-made embedders (no training, lookalike index --embedder NAME): "
              f"{', '.join(ready)}.", highlight=False)


def _result_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Best epoch and validation numbers of the trainers' results (nested stages too)."""
    rows: list[tuple[str, str]] = []
    stages = {"": result}
    stages.update({f"{k} ": v for k, v in result.items()
                   if isinstance(v, dict) and "history" in v})
    for prefix, stage in stages.items():
        history = stage.get("history") or []
        if not history:
            continue
        best = stage.get("best_epoch") or len(history)
        row = history[min(len(history), max(1, best)) - 1]
        numbers = ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                            if k.startswith("val_") and isinstance(v, (int, float)))
        stopped = f", stopped: {stage['stopped']}" if stage.get("stopped") else ""
        rows.append((f"{prefix}best epoch".strip(),
                     f"{best} of {len(history)}{stopped}; {numbers}"))
    return rows
