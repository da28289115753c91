"""The products project the "beyond the photo" benchmarks share (text, category-first, clusters,
duplicates): the whole products catalogue ingested once into ``benchmarks/.cache/beyond-products``
and indexed once per embedder (index name = the embedder name), through the public API. Later
runs reuse the ingest, the embedding cache and the index, so only the first run embeds."""

from __future__ import annotations

import re
import time
from pathlib import Path

from lookalike.project import Project

CACHE = Path(__file__).resolve().parent / ".cache"
PROJECT_DIR = CACHE / "beyond-products"
N_PRODUCTS = 44_072


def index_name(embedder: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", embedder.lower()).strip("-")


def products_project(embedder: str, *, progress: bool = True) -> tuple[Project, str]:
    """The shared project with an up-to-date exact index built with ``embedder``."""
    project = Project(PROJECT_DIR)
    started = time.perf_counter()
    if len(project.store) < N_PRODUCTS:
        report = project.ingest("products", progress=progress)
        print(f"ingested products: {report.summary()} ({time.perf_counter() - started:.0f} s)")
    name = index_name(embedder)
    if name not in project.indexes():
        started = time.perf_counter()
        summary = project.index(embedder, kind="exact", name=name, progress=progress)
        print(f"indexed {summary.size} items with {embedder} "
              f"({time.perf_counter() - started:.0f} s)")
    return project, name


if __name__ == "__main__":  # prepare the project ahead of the benchmarks
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("embedders", nargs="*", default=["efficientnet-lite0", "hsv-histogram"])
    for embedder in parser.parse_args().embedders:
        products_project(embedder)
