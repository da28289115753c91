"""Writing a :class:`~lookalike.evaluate.comparison.Comparison` out: Markdown, JSON, PNG plots and
one self-contained HTML page (the plots are files beside it, linked by relative path).

Files in the output folder::

    report.md / report.json / index.html
    quality-vs-speed.png             P@10 against images/s at batch 64, one point per row
    catalogue-size-<catalogue>.png   P@10 against gallery size (log scale), one line per embedder
    activation-<dataset>.png         validation accuracy per epoch, one line per activation
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lookalike.evaluate.comparison import Comparison
from lookalike.evaluate.report import plot_lines
from lookalike.storage import atomic_write_bytes, atomic_write_text

NA = "n/a"


# ---- formatting ---------------------------------------------------------------------------------
def _num(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:,.{digits}f}"


def comparison_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells of the embedder comparison (``n/a`` where it does not fit)."""
    catalogues = [c["name"] for c in comparison.catalogues]
    header = ["embedder", "search", "size MB", "ms/img b1", "img/s b64", "load", "dim",
              "bytes/item"]
    for name in catalogues:
        header += [f"{name} P@10", f"{name} mAP@100"]
    cells = []
    for row in comparison.rows:
        bytes_cell = str(row["bytes_per_item"])
        if row.get("disk_bytes_per_item"):
            bytes_cell += f" (+{row['disk_bytes_per_item']} disk)"
        size = "<0.01" if row["size_mb"] < 0.005 else _num(row["size_mb"], 2)
        line = [row["embedder"], row["search"], size,
                _num(row.get("ms_per_image_batch1"), 1), _num(row.get("images_per_s_batch64"), 0),
                _num(row.get("load_1m"), 1), str(row["dim"]), bytes_cell]
        for name in catalogues:
            if name in row["not_applicable"]:
                line += [NA, NA]
            else:
                line += [_num(row[f"{name} P@10"], 3), _num(row[f"{name} mAP@100"], 3)]
        cells.append(line)
    return header, cells


def size_table(comparison: Comparison, catalogue: str) -> tuple[list[str], list[list[str]]]:
    """P@10 per embedder (rows) and gallery size (columns) for one catalogue."""
    rows = [r for r in comparison.size_rows if r["catalogue"] == catalogue]
    sizes = sorted({r["gallery"] for r in rows})
    header = ["embedder", *[f"{s:,}" for s in sizes]]
    cells = []
    for embedder in dict.fromkeys(r["embedder"] for r in rows):
        values = {r["gallery"]: r["P@10"] for r in rows if r["embedder"] == embedder}
        cells.append([embedder, *[_num(values.get(s), 3) for s in sizes]])
    return header, cells


def activation_table(activation: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    epochs = sorted({int(k.split()[1]) for row in activation["table"] for k in row
                     if k.startswith("epoch ")})
    header = ["dataset", "activation", *[f"epoch {e}" for e in epochs], "best", "seconds"]
    cells = [[row["dataset"], row["activation"],
              *[_num(row.get(f"epoch {e}"), 3) for e in epochs], _num(row["best"], 3),
              _num(row.get("seconds"), 0)] for row in activation["table"]]
    return header, cells


def _markdown(header: Sequence[str], cells: Sequence[Sequence[str]], left: int = 2) -> str:
    """A Markdown table; the first ``left`` columns are text, the rest right-aligned."""
    def clean(text: str) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(map(clean, header)) + " |",
             "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(map(clean, row)) + " |" for row in cells]
    return "\n".join(lines) + "\n"


# ---- plots --------------------------------------------------------------------------------------
def plot_quality_vs_speed(path: str | Path, comparison: Comparison) -> Path | None:
    """P@10 (y) against images/s at batch 64 (x, log), a marker per catalogue, each point named."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    markers = ["o", "s", "^", "D"]
    figure = Figure(figsize=(8.0, 5.0), layout="constrained")
    axes = figure.add_subplot()
    drawn = False
    for i, catalogue in enumerate(c["name"] for c in comparison.catalogues):
        points = [(r["images_per_s_batch64"], r[f"{catalogue} P@10"], r) for r in comparison.rows
                  if r.get("images_per_s_batch64") and r.get(f"{catalogue} P@10") is not None]
        if not points:
            continue
        drawn = True
        axes.scatter([p[0] for p in points], [p[1] for p in points],
                     marker=markers[i % len(markers)], label=catalogue, alpha=0.8)
        for speed, quality, row in points:
            name = row["embedder"] + ("" if row["search"] == "exact" else
                                      " +rr" if "re-rank" in row["search"] else " ham")
            axes.annotate(name, (speed, quality), fontsize=6, xytext=(3, 2),
                          textcoords="offset points")
    if not drawn:
        return None
    axes.set_xscale("log")
    axes.set_xlabel("images/s at batch 64 (CPU, decoded images)")
    axes.set_ylabel("P@10 (test vs train, same class)")
    load = comparison.settings.get("load_average_range")
    title = f"Quality against speed ({comparison.settings['threads']} threads"
    title += f", load {load[0]:.1f}-{load[1]:.1f})" if load else ")"
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


# ---- the report ---------------------------------------------------------------------------------
def write_report(comparison: Comparison, out: str | Path) -> dict[str, Path]:
    """Write every file of the report into ``out`` (created); returns them by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    speed = plot_quality_vs_speed(out / "quality-vs-speed.png", comparison)
    if speed is not None:
        files["quality-vs-speed"] = speed
    size_plots = {}
    for catalogue in (c["name"] for c in comparison.catalogues):
        rows = [r for r in comparison.size_rows if r["catalogue"] == catalogue]
        if rows:
            size_plots[catalogue] = plot_lines(
                out / f"catalogue-size-{catalogue}.png", rows, x="gallery", y="P@10",
                hue="embedder", logx=True, xlabel="gallery size (train items)", ylabel="P@10",
                title=f"P@10 against catalogue size: {catalogue}")
            files[f"catalogue-size-{catalogue}"] = size_plots[catalogue]
    activation_plots = {}
    if comparison.activation:
        curves = comparison.activation["curves"]
        for dataset in dict.fromkeys(c["dataset"] for c in curves):
            activation_plots[dataset] = plot_lines(
                out / f"activation-{dataset}.png", [c for c in curves if c["dataset"] == dataset],
                x="epoch", y="val_accuracy", hue="activation", ylabel="validation accuracy",
                title=f"Validation accuracy per epoch: {dataset}")
            files[f"activation-{dataset}"] = activation_plots[dataset]
    plots = {"speed": speed.name if speed else None,
             "sizes": {k: v.name for k, v in size_plots.items()},
             "activation": {k: v.name for k, v in activation_plots.items()}}

    atomic_write_text(out / "report.json",
                      json.dumps({**comparison.to_json(), "plots": plots}, indent=2,
                                 default=_json_default) + "\n")
    files["json"] = out / "report.json"
    atomic_write_text(out / "report.md", markdown_report(comparison, plots))
    files["markdown"] = out / "report.md"
    atomic_write_text(out / "index.html", html_report(comparison, plots))
    files["html"] = out / "index.html"
    return files


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _setting_lines(comparison: Comparison) -> list[str]:
    s = comparison.settings
    load = s.get("load_average_range")
    lines = [f"Measured {s['when']} on {s['cpus']} CPUs with {s['threads']} threads"
             + (f"; 1-minute load average {load[0]:.1f}-{load[1]:.1f} during the timings"
                + (" (under load: other jobs shared the cores, so times are pessimistic)"
                   if load[1] > s["threads"] + 0.5 else "") if load else "") + "."]
    for c in comparison.catalogues:
        lines.append(f"{c['name']}: {c['queries']:,} test queries vs {c['gallery']:,} train "
                     f"gallery, relevant = same {c['class_column']}"
                     + (" (quick subsample)" if s["quick"] and c["name"] != "demo" else "") + ".")
    return lines


def markdown_report(comparison: Comparison, plots: dict[str, Any]) -> str:
    header, cells = comparison_table(comparison)
    parts = ["# Embedder comparison\n", *[f"- {line}" for line in _setting_lines(comparison)],
             "", _markdown(header, cells),
             "Speed: CPU ms per image at batch 1 and images/s at batch 64 on decoded images "
             "(JPEG decoding not included), `load` = 1-minute load average while timing. "
             "bytes/item: float32 rows cost 4 x dim; codes bits/8 in RAM (re-ranking also reads "
             f"the floats from disk). {NA}: the model's input (channels, size) is not the "
             "catalogue's.\n"]
    if plots["speed"]:
        parts.append(f"![quality against speed]({plots['speed']})\n")
    if comparison.size_rows:
        parts.append("## Precision against catalogue size\n")
        parts.append(f"P@10 with seeded random gallery subsets (seed "
                     f"{comparison.settings['seed']}, the same subset for every embedder); the "
                     "last column is the full train split.\n")
        for catalogue, image in plots["sizes"].items():
            header, cells = size_table(comparison, catalogue)
            parts += [f"### {catalogue}\n", _markdown(header, cells, left=1),
                      f"![P@10 against catalogue size: {catalogue}]({image})\n"]
    if comparison.activation:
        activation = comparison.activation
        header, cells = activation_table(activation)
        parts += ["## Activation study (paper 000, Table 2 / Fig. 5)\n",
                  f"Source: {activation['source']}"
                  + (f" ({activation['when']})" if activation.get("when") else "") + "; "
                  + ", ".join(f"{k}={v}" for k, v in activation["settings"].items()) + ".\n",
                  _markdown(header, cells),
                  "".join(f"Best on {d}: **{a}**. " for d, a in activation["winners"].items())
                  + "\n"]
        parts += [f"![activation study: {d}]({image})\n"
                  for d, image in plots["activation"].items()]
    if comparison.notes:
        parts += ["## Notes\n", *[f"- {note}" for note in comparison.notes], ""]
    return "\n".join(parts)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="lookalike">
<title>lookalike: embedder comparison</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5rem;
         color: #1f2328; background: #fff; line-height: 1.4; max-width: 1200px; }
  h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
  table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .85rem; }
  th, td { border: 1px solid #d0d7de; padding: .2rem .5rem; }
  th { background: #f6f8fa; }
  td { text-align: right; font-variant-numeric: tabular-nums; }
  td.text { text-align: left; }
  td.na { color: #8c959f; }
  p.note { color: #57606a; font-size: .9rem; }
  img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
</style>
</head>
<body>
<h1>Embedder comparison</h1>
<ul>{% for line in settings %}<li>{{ line }}</li>{% endfor %}</ul>
{% macro table(header, cells, left) -%}
<table><thead><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row in cells %}<tr>{% for cell in row -%}
<td class="{{ 'text' if loop.index0 < left else ('na' if cell == na else '') }}">{{ cell }}</td>
{%- endfor %}</tr>
{% endfor %}</tbody></table>
{%- endmacro %}
{{ table(comparison[0], comparison[1], 2) }}
<p class="note">Speed: CPU ms per image at batch 1 and images/s at batch 64 on decoded images;
load = 1-minute load average while timing. bytes/item: float32 rows cost 4 &times; dim; codes
bits/8 in RAM (re-ranking also reads the floats from disk). {{ na }}: the model's input
(channels, size) is not the catalogue's.</p>
{% if plots.speed %}<img src="{{ plots.speed }}" alt="P@10 against images per second">{% endif %}
{% if sizes %}<h2>Precision against catalogue size</h2>
<p class="note">P@10 with seeded random gallery subsets (the same subset for every embedder);
the last column is the full train split.</p>
{% for name, header, cells, image in sizes %}<h3>{{ name }}</h3>
{{ table(header, cells, 1) }}
<img src="{{ image }}" alt="P@10 against gallery size on {{ name }}">
{% endfor %}{% endif %}
{% if activation %}<h2>Activation study (paper 000, Table 2 / Fig. 5)</h2>
<p class="note">Source: {{ activation.source }}. {{ activation.settings_text }}</p>
{{ table(activation.header, activation.cells, 2) }}
<p>{% for d, a in activation.winners.items() -%}
Best on {{ d }}: <strong>{{ a }}</strong>. {% endfor %}</p>
{% for d, image in activation.images -%}
<img src="{{ image }}" alt="validation accuracy per epoch on {{ d }}">
{% endfor %}{% endif %}
{% if notes %}<h2>Notes</h2><ul>{% for n in notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
</body>
</html>
"""


def html_report(comparison: Comparison, plots: dict[str, Any]) -> str:
    """The report as one HTML page (jinja2 with autoescape; no scripts, no external assets)."""
    from jinja2 import Environment

    sizes = [(name, *size_table(comparison, name), image)
             for name, image in plots["sizes"].items()]
    activation = None
    if comparison.activation:
        header, cells = activation_table(comparison.activation)
        activation = {"source": comparison.activation["source"], "header": header,
                      "cells": cells, "winners": comparison.activation["winners"],
                      "images": list(plots["activation"].items()),
                      "settings_text": ", ".join(f"{k}={v}" for k, v in
                                                 comparison.activation["settings"].items())}
    template = Environment(autoescape=True).from_string(_PAGE)
    return template.render(settings=_setting_lines(comparison),
                           comparison=comparison_table(comparison), plots=plots, sizes=sizes,
                           activation=activation, notes=comparison.notes, na=NA)
