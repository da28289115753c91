"""Reports people would rather look at: result grids (HTML and PNG), metric tables and plots.

Everything here takes plain data -- rows of dicts, or :class:`GridRow` -- so comparisons, curves
and the demo page reuse the same helpers. Files are written atomically. Plots use
``matplotlib.figure.Figure`` with the Agg canvas directly, leaving pyplot and the process-wide
backend alone.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lookalike.evaluate.metrics import EvaluationError
from lookalike.evaluate.plots import plot_bars, plot_lines  # noqa: F401  (re-exported)
from lookalike.storage import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from PIL import Image

    from lookalike.evaluate.retrieval import RetrievalReport

#: Encoded images up to this size are inlined as they are; bigger ones become thumbnails.
MAX_INLINE_BYTES = 48_000
#: Longest side of an inlined thumbnail, in pixels.
THUMBNAIL_PX = 256
_BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif",
                    "WEBP": "image/webp"}


# ---- grid rows --------------------------------------------------------------------------------
@dataclass
class GridImage:
    """One picture in a result grid: the query or one of its results.

    ``image`` is a file path, encoded image bytes, a PIL image, or None/"" for "no image".
    ``match`` says whether a result has the query's label (None for the query itself).
    """

    image: str | Path | bytes | Image.Image | None
    title: str = ""
    label: str = ""
    score: float | None = None
    match: bool | None = None
    id: str = ""


@dataclass
class GridRow:
    """A query and its results, best first."""

    query: GridImage
    results: list[GridImage] = field(default_factory=list)


def as_grid_rows(rows: Iterable[GridRow | Mapping[str, Any]]) -> list[GridRow]:
    """Accept :class:`GridRow` objects or dicts ``{"query": {...}, "results": [{...}, ...]}``."""
    return [row if isinstance(row, GridRow) else
            GridRow(_as_cell(row.get("query"), f"row {n}: query"),
                    [_as_cell(cell, f"row {n}: result {i}")
                     for i, cell in enumerate(row.get("results") or [])])
            for n, row in enumerate(rows)]


def _as_cell(cell: Any, where: str) -> GridImage:
    if isinstance(cell, GridImage):
        return cell
    if not isinstance(cell, Mapping):
        raise EvaluationError(f"{where}: expected a GridImage or a dict, got {type(cell).__name__}")
    known = {f.name for f in fields(GridImage)}
    unknown = set(cell) - known
    if unknown:
        raise EvaluationError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return GridImage(**{"image": None, **cell})


# ---- HTML result grid -------------------------------------------------------------------------
def write_result_grid_html(path: str | Path, rows: Iterable[GridRow | Mapping[str, Any]],
                           title: str = "lookalike results", *, note: str = "",
                           summary: Mapping[str, float] | None = None, cell_px: int = 140,
                           max_inline_bytes: int = MAX_INLINE_BYTES) -> Path:
    """Write a self-contained HTML page of queries and their results.

    Images under the page's folder are linked by relative path; all others are inlined as
    ``data:`` URIs (as they are when small and browser-readable, else as a thumbnail of at most
    ``THUMBNAIL_PX`` pixels). The page loads nothing from the network. Each result carries a
    green (same label) or red (other label) frame plus a tick or cross, so the flag does not
    depend on colour alone; every image has alt text. ``summary`` (e.g. the report metrics) is
    shown as a small table. Returns the page path.
    """
    import jinja2

    path = Path(path)
    page_dir = path.parent.resolve()
    grid_rows = as_grid_rows(rows)
    view = [{"query": _cell_view(row.query, page_dir, max_inline_bytes, rank=0),
             "results": [_cell_view(cell, page_dir, max_inline_bytes, rank=i + 1)
                         for i, cell in enumerate(row.results)]}
            for row in grid_rows]
    env = jinja2.Environment(loader=jinja2.PackageLoader("lookalike.evaluate", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True)
    html = env.get_template("result_grid.html.j2").render(
        title=title, note=note, rows=view, cell_px=int(cell_px),
        summary={k: _format_value(v) for k, v in (summary or {}).items()})
    atomic_write_text(path, html)
    return path


def _cell_view(cell: GridImage, page_dir: Path, max_inline_bytes: int,
               rank: int) -> dict[str, Any]:
    """What the template needs for one picture (the template escapes every string)."""
    title = str(cell.title or cell.id or "")
    label = str(cell.label or "")
    if rank == 0:
        css, flag = "query", "query"
    else:
        score = "" if cell.score is None else f" · {cell.score:.3f}"
        if cell.match is None:
            css, flag = "result", f"#{rank}{score}"
        elif cell.match:
            css, flag = "match", f"#{rank} \u2713{score}"
        else:
            css, flag = "miss", f"#{rank} \u2717{score}"
    src = _image_src(cell.image, page_dir, max_inline_bytes)
    role = "query" if rank == 0 else f"result {rank}" + (
        "" if cell.match is None else (", same label" if cell.match else ", other label"))
    alt = f"{role}: {title}" + (f" ({label})" if label else "") + ("" if src else ", no image")
    return {"src": src, "alt": alt, "title": title, "label": label, "css": css, "flag": flag}


def _image_src(image: Any, page_dir: Path, max_inline_bytes: int) -> str | None:
    """A relative URL for files under the page's folder, else a data URI; None if unusable."""
    if image is None or (isinstance(image, (str, Path)) and str(image) == ""):
        return None
    if isinstance(image, (str, Path)):
        file = Path(image)
        if not file.is_file():
            return None
        resolved = file.resolve()
        if resolved.is_relative_to(page_dir):
            return quote(resolved.relative_to(page_dir).as_posix())
        data: bytes | Image.Image = resolved.read_bytes()
    else:
        data = image
    return _data_uri(data, max_inline_bytes)


def _data_uri(data: bytes | Image.Image, max_inline_bytes: int) -> str | None:
    from PIL import Image

    from lookalike.errors import LookalikeError

    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
            with Image.open(io.BytesIO(raw)) as probe:  # reads the header only
                mime = _BROWSER_FORMATS.get(str(probe.format))
            if mime and len(raw) <= max_inline_bytes:
                return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"
            image = _decode(raw)
        else:
            image = data
        thumbnail = image.copy()
        thumbnail.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        encoded, mime = _encode_thumbnail(thumbnail)
        return f"data:{mime};base64,{base64.b64encode(encoded).decode('ascii')}"
    except (LookalikeError, OSError, ValueError, Image.DecompressionBombError):
        return None  # a broken image must not break the report: the page says "no image"


def _encode_thumbnail(image: Image.Image) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if image.mode in ("RGBA", "LA", "P", "L", "1"):
        image.save(buffer, format="PNG", optimize=True)
        return buffer.getvalue(), "image/png"
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue(), "image/jpeg"


def _decode(data: bytes | str | Path) -> Image.Image:
    """Decode through lookalike's safe decoder (size limits, EXIF rotation, RGB)."""
    from lookalike.catalogue.images import decode_image

    return decode_image(data)


def _load_rgb(image: Any) -> Image.Image | None:
    """A cell's image as RGB, or None when it has none or it cannot be read."""
    from PIL import Image

    from lookalike.errors import LookalikeError

    if image is None or (isinstance(image, (str, Path)) and str(image) == ""):
        return None
    try:
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        return _decode(bytes(image) if isinstance(image, (bytearray, memoryview)) else image)
    except (LookalikeError, OSError, ValueError):
        return None


# ---- PNG result grid ----------------------------------------------------------------------------
def write_result_grid_png(path: str | Path, rows: Iterable[GridRow | Mapping[str, Any]], *,
                          thumb: int = 96, title: str | None = None) -> Path:
    """Write the result grid as one PNG: a line per query, query first (blue frame), then the
    results with a green (same label) or red (other label) frame, label and score under each."""
    from PIL import Image, ImageDraw, ImageFont

    grid_rows = as_grid_rows(rows)
    if not grid_rows:
        raise EvaluationError(f"{path}: no rows to draw")
    border, gap, text_h = 4, 8, 30
    cell_w, cell_h = thumb + 2 * border, thumb + 2 * border + text_h
    columns = 1 + max(len(row.results) for row in grid_rows)
    header = 28 if title else 0
    width = gap + columns * (cell_w + gap) + gap  # an extra gap after the query column
    height = header + gap + len(grid_rows) * (cell_h + gap)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(ImageFont, 11)
    if title:
        draw.text((gap, 6), title, fill="black", font=_font(ImageFont, 15))
    colours = {None: (208, 215, 222), True: (26, 127, 55), False: (207, 34, 46)}
    for r, row in enumerate(grid_rows):
        top = header + gap + r * (cell_h + gap)
        for c, cell in enumerate([row.query, *row.results]):
            left = gap + c * (cell_w + gap) + (gap if c > 0 else 0)
            colour = (9, 105, 218) if c == 0 else colours[cell.match]
            draw.rectangle([left, top, left + cell_w - 1, top + thumb + 2 * border - 1],
                           fill=colour)
            draw.rectangle([left + border, top + border, left + border + thumb - 1,
                            top + border + thumb - 1], fill=(246, 248, 250))
            picture = _load_rgb(cell.image)
            if picture is not None:
                picture.thumbnail((thumb, thumb))
                canvas.paste(picture, (left + border + (thumb - picture.width) // 2,
                                       top + border + (thumb - picture.height) // 2))
            else:
                draw.text((left + border + 4, top + border + thumb // 2 - 6), "no image",
                          fill=(87, 96, 106), font=font)
            caption_top = top + thumb + 2 * border + 2
            first = "query" if c == 0 else (f"#{c}" + (
                "" if cell.score is None else f"  {cell.score:.3f}"))
            draw.text((left, caption_top), first, fill="black", font=font)
            draw.text((left, caption_top + 13), _clip(draw, str(cell.label or cell.title), font,
                                                      cell_w), fill=(87, 96, 106), font=font)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _font(image_font: Any, size: int) -> Any:
    try:
        return image_font.load_default(size=size)  # scalable default font (Pillow >= 10.1)
    except TypeError:
        return image_font.load_default()


def _clip(draw: Any, text: str, font: Any, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "\u2026", font=font) > width:
        text = text[:-1]
    return text + "\u2026"


# ---- tables -------------------------------------------------------------------------------------
def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   digits: int = 3) -> str:
    """A GitHub Markdown table of ``rows`` (columns: the union of keys in first-seen order).

    Floats are rounded to ``digits``; missing values are blank; ``|`` in text is escaped.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    if not columns:
        return ""
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows)
               for c in columns]
    lines = ["| " + " | ".join(_md_cell(c) for c in columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(_format_value(row.get(c), digits))
                                       for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _format_value(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value)


def report_rows(report: RetrievalReport) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A retrieval report as table rows: one overall row, and one row per class (most queries
    first)."""
    overall = [{"protocol": report.protocol, "class": report.class_column,
                "queries": report.n_queries, "gallery": report.n_gallery, **report.metrics}]
    classes = [{report.class_column: label, **values} for label, values in
               sorted(report.per_class.items(), key=lambda kv: (-kv[1]["queries"], kv[0]))]
    return overall, classes


def write_metrics_table(path_md: str | Path | None, path_json: str | Path | None,
                        report_or_rows: RetrievalReport | Sequence[Mapping[str, Any]], *,
                        title: str = "", columns: Sequence[str] | None = None) -> str:
    """Write a metrics table as Markdown and/or JSON; returns the Markdown.

    ``report_or_rows`` is a :class:`~lookalike.evaluate.retrieval.RetrievalReport` (JSON: its
    ``to_json()``; Markdown: the overall metrics, then per class) or any rows of dicts (JSON:
    ``{"title": ..., "rows": [...]}``). Either path may be None to skip that file.
    """
    from lookalike.evaluate.retrieval import RetrievalReport

    heading = f"## {title}\n\n" if title else ""
    if isinstance(report_or_rows, RetrievalReport):
        overall, classes = report_rows(report_or_rows)
        markdown = (heading + markdown_table(overall, columns) + "\n"
                    + f"Per {report_or_rows.class_column}:\n\n" + markdown_table(classes))
        if report_or_rows.queries_without_relevant:
            missing = ", ".join(report_or_rows.classes_without_gallery)
            markdown += (f"\n{report_or_rows.queries_without_relevant} queries have no item of "
                         f"their class in the gallery ({missing}); they count with every metric "
                         "at 0.\n")
        payload: Any = report_or_rows.to_json()
    else:
        rows = [dict(row) for row in report_or_rows]
        markdown = heading + markdown_table(rows, columns)
        payload = {"title": title, "rows": rows}
    if path_md is not None:
        atomic_write_text(path_md, markdown)
    if path_json is not None:
        atomic_write_text(path_json, json.dumps(payload, indent=2, default=_json_default) + "\n")
    return markdown


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
