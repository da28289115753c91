"""``lookalike demo``: the whole pipeline on the bundled real catalogue, end to end.

Ingest the ~2,000 bundled product photos, index them with the default embedder, evaluate
class-match retrieval (test split against train split), and write an HTML page of "more like
this" results that a person can open.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from lookalike.project import DEFAULT_EMBEDDER, Project


def run_demo(project_dir: str | Path, *, embedder: str = DEFAULT_EMBEDDER,
             console: Console | None = None, n_queries: int = 12, k: int = 5) -> dict[str, Any]:
    """Run the demo into ``project_dir``; returns paths and metrics (printed when ``console``)."""
    say = console.print if console else (lambda *a, **kw: None)
    started = time.perf_counter()
    project = Project(project_dir)
    say(f"[bold]lookalike demo[/] in {project.path}")

    report = project.ingest("demo", progress=console is not None)
    say(f"1. catalogue: {len(project.store)} real product photos "
        f"({report.added} new, {report.unchanged} already there, {len(report.rejected)} rejected)")

    summary = project.index(embedder, progress=console is not None)
    say(f"2. index: {summary.kind} over {summary.size} items with {summary.embedder} "
        f"({summary.dim}-d; {summary.added} embedded now, {summary.unchanged} from the cache)")

    evaluation = project.evaluate(class_column="category")
    say("3. evaluation, test photos against the train photos (a match = same article type):")
    if console:
        console.print(evaluation.table())

    page = write_demo_page(project, n_queries=n_queries, k=k)
    elapsed = time.perf_counter() - started
    say(f"4. more-like-this page: [link=file://{page}]{page}[/link]")
    say(f"   evaluation result grid: {project.path / 'reports' / 'eval-default' / 'results.html'}")
    say(f"done in {elapsed:.0f} s. Next: `lookalike similar ID -k 5`, "
        "`lookalike search PHOTO -k 5`, `lookalike eval`.")
    return {"project": str(project.path), "page": str(page), "items": len(project.store),
            "index": summary.to_json(), "evaluation": evaluation.to_json(),
            "seconds": round(elapsed, 1)}


def write_demo_page(project: Project, *, n_queries: int = 12, k: int = 5) -> Path:
    """A page of query products from the test split, each with its top-``k`` more-like-this."""
    from lookalike.evaluate.report import write_result_grid_html

    test_ids = project.store.ids(split="test") or project.store.ids()
    rng = np.random.default_rng(7)
    picks = sorted(rng.choice(len(test_ids), size=min(n_queries, len(test_ids)), replace=False))
    rows = []
    for position in picks:
        query = project.store.get(test_ids[position])
        results = project.similar(query.id, k=k)
        rows.append({
            "query": {"id": query.id, "image": str(query.image_path),
                      "title": query.title or query.id, "label": query.category or ""},
            "results": [{"id": r.id, "image": str(project.path / r.image) if r.image else "",
                         "title": r.title or r.id, "label": r.category or "", "score": r.score,
                         "match": (r.category or "") == (query.category or "")}
                        for r in results],
        })
    page = project.layout.report("demo.html")
    write_result_grid_html(page, rows, title="lookalike demo: more like this")
    return page
