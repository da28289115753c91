"""PNG plots of result rows (bars and lines) with matplotlib, written atomically.

Part of :mod:`lookalike.evaluate.report` (which re-exports these names).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lookalike.evaluate.metrics import EvaluationError
from lookalike.storage import atomic_write_bytes

# ---- plots --------------------------------------------------------------------------------------
def plot_bars(path: str | Path, rows: Sequence[Mapping[str, Any]], *, x: str,
              y: str | Sequence[str], hue: str | None = None, title: str = "",
              ylabel: str | None = None, ylim: tuple[float, float] | None = None,
              reference: Mapping[str, float] | None = None, annotate: bool = True) -> Path:
    """Grouped bar chart: one group per distinct ``x`` value, one bar per series.

    Series are the ``y`` columns (when ``y`` is a list), or the distinct ``hue`` values (one
    ``y`` column). ``reference`` draws labelled horizontal lines (e.g. a published baseline).
    """
    from matplotlib.figure import Figure

    y_columns = [y] if isinstance(y, str) else list(y)
    if hue is not None and len(y_columns) != 1:
        raise EvaluationError("plot_bars: give one y column when hue is set")
    groups = list(dict.fromkeys(str(row[x]) for row in rows))
    if hue is not None:
        series = {str(h): {str(r[x]): r.get(y_columns[0]) for r in rows if str(r[hue]) == str(h)}
                  for h in dict.fromkeys(str(row[hue]) for row in rows)}
    else:
        series = {col: {str(r[x]): r.get(col) for r in rows} for col in y_columns}
    figure = Figure(figsize=(max(6.0, 0.9 * len(groups) * max(1, len(series)) ** 0.5 + 2), 4.2),
                    layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        positions = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [_number(values.get(group)) for group in groups]
        bars = axes.bar(positions, heights, width=width * 0.95, label=name)
        if annotate:
            axes.bar_label(bars, labels=["" if math.isnan(h) else f"{h:.2f}" for h in heights],
                           fontsize=7, padding=1)
    for name, value in (reference or {}).items():
        axes.axhline(value, linestyle="--", linewidth=1, color="grey")
        axes.annotate(name, (1.0, value), xycoords=("axes fraction", "data"), ha="right",
                      va="bottom", fontsize=7, color="dimgrey")
    crowded = len(groups) > 4 or max((len(g) for g in groups), default=0) > 12
    axes.set_xticks(range(len(groups)), groups, rotation=20 if crowded else 0,
                    ha="right" if crowded else "center")
    _finish(axes, ylabel or ", ".join(y_columns), ylim, title,
            legend=len(series) > 1 or hue is not None)
    axes.grid(axis="y", alpha=0.3)
    return _save_figure(figure, path)


def plot_lines(path: str | Path, rows: Sequence[Mapping[str, Any]], *, x: str,
               y: str | Sequence[str], hue: str | None = None, title: str = "",
               xlabel: str | None = None, ylabel: str | None = None, logx: bool = False,
               ylim: tuple[float, float] | None = None) -> Path:
    """Line plot of ``y`` against ``x``: one line per ``y`` column, or per distinct ``hue``
    value (one ``y`` column). Points are drawn in ``x`` order."""
    from matplotlib.figure import Figure

    y_columns = [y] if isinstance(y, str) else list(y)
    if hue is not None and len(y_columns) != 1:
        raise EvaluationError("plot_lines: give one y column when hue is set")
    if hue is not None:
        lines = {str(h): [(r[x], r.get(y_columns[0])) for r in rows if str(r[hue]) == str(h)]
                 for h in dict.fromkeys(str(row[hue]) for row in rows)}
    else:
        lines = {col: [(r[x], r.get(col)) for r in rows] for col in y_columns}
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.add_subplot()
    for name, points in lines.items():
        points = sorted(points, key=lambda p: p[0])
        axes.plot([p[0] for p in points], [_number(p[1]) for p in points], marker="o",
                  markersize=3, label=name)
    if logx:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel or x)
    _finish(axes, ylabel or ", ".join(y_columns), ylim, title,
            legend=len(lines) > 1 or hue is not None)
    axes.grid(alpha=0.3)
    return _save_figure(figure, path)


def _finish(axes: Any, ylabel: str, ylim: tuple[float, float] | None, title: str,
            legend: bool) -> None:
    """The y label, limits, title and legend both plots share."""
    axes.set_ylabel(ylabel)
    if ylim:
        axes.set_ylim(*ylim)
    if title:
        axes.set_title(title)
    if legend:
        # Beside the axes, so it never hides a bar or a line (constrained layout makes room).
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _save_figure(figure: Any, path: str | Path) -> Path:
    """Render with the Agg canvas (no pyplot, no global backend) and write atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path
