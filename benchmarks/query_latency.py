"""Photo -> top-10 end to end: decode, embed, search, attach catalogue details.

Builds (or reuses) a project of the real products catalogue's TRAIN split only, indexed with
the default embedder and the index kind the project picks by itself (``kind="auto"``), then times ``Project.search(jpeg_bytes, k=10)`` one query at a time on real test-split
photos (never in the gallery), the way a shop's server sees uploads. The baseline in the same run is the same pipeline
with a plain numpy brute-force scan instead of the index.

    python benchmarks/query_latency.py [--queries 300] [--project benchmarks/.work/products]

Target (DEVELOPERS brief): p50 < 50 ms on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike import Project  # noqa: E402
from lookalike.catalogue.sources import load_products_frame  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--project", type=Path,
                        default=Path(__file__).resolve().parent / ".work" / "products")
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    project = Project(args.project)
    project.ingest("products:train", progress=True)  # the gallery; queries come from test
    summary = project.index(args.embedder, progress=True)
    test = load_products_frame(split="test").sample(n=args.queries, random_state=0)
    photos = list(test["image_jpeg"])

    loaded = project.searcher(None)
    gallery_ids = list(loaded.hashes)
    gallery = np.ascontiguousarray(loaded.vectors_of(gallery_ids, project.store))

    def brute_force(photo: bytes) -> list[str]:
        vector = project.embed_query(photo)
        scores = gallery @ vector
        top = np.argpartition(-scores, 10)[:10]
        top = top[np.argsort(-scores[top])]
        return [r.id for r in project.recommendations([gallery_ids[i] for i in top],
                                                       scores[top].tolist())]

    def indexed(photo: bytes) -> list[str]:
        return [r.id for r in project.search(photo, k=10)]

    for warm in photos[:5]:  # first calls load models and pages
        indexed(warm)
        brute_force(warm)
    rows = []
    timings = {}
    for name, run in (("numpy brute force (baseline)", brute_force),
                      (f"Project.search ({summary.kind})", indexed)):
        times = []
        for photo in photos:
            start = time.perf_counter()
            run(photo)
            times.append((time.perf_counter() - start) * 1000)
        timings[name] = times
        rows.append({"pipeline": name, "queries": len(times),
                     "p50 ms": float(np.percentile(times, 50)),
                     "p95 ms": float(np.percentile(times, 95)),
                     "p99 ms": float(np.percentile(times, 99))})
    base = rows[0]["p50 ms"]
    for row in rows:
        row["p50 vs baseline"] = row["p50 ms"] / base
    agree = np.mean([indexed(p)[:10] == brute_force(p)[:10] for p in photos[:50]])
    print_table(f"photo -> top-10, {len(gallery_ids):,} items, {summary.embedder}", rows)
    print(f"top-10 identical to brute force on {agree:.0%} of 50 queries; "
          f"peak RSS {peak_rss_mb():.0f} MB")
    path = write_results("query_latency", {
        "gallery": len(gallery_ids), "gallery_split": "train", "query_split": "test",
        "embedder": summary.embedder_id, "index": summary.kind, "index_chosen_by": "auto",
        "rows": rows, "top10_identical_to_brute_force": float(agree),
        "peak_rss_mb": peak_rss_mb(), "target_p50_ms": 50}, quick=args.queries < 300, seeds=[0])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
