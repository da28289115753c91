"""Smaller embeddings (``pca``, ``projection``) vs the full 1,280-d EfficientNet-Lite0 vectors.

Protocol: products official split, class ``article_type``; the reductions are fitted on the
39,603 train vectors (labels for the supervised ones), then the 4,469 test photos query the
train photos (exact cosine): P@10 and mAP@100 beside the unreduced vectors of the same run.
Paper 001 cut 4,096 -> 512 dimensions for about 2% of quality. ``bytes_per_item`` is the
float32 vector (what a flat index stores per item; SQ8 would be a quarter).

    python benchmarks/reduction_bench.py                      # Lite0 @224 (the default embedder)
    python benchmarks/reduction_bench.py --image-size 112
    python benchmarks/reduction_bench.py --dims 256,128 --save-models benchmarks/.cache/reduction
        # also saves every fitted model (e.g. for ``lookalike report --models-dir``)

The Lite0 vectors come from quality.py's cache (``benchmarks/.cache/``), computed if missing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, print_table, write_results  # noqa: E402
from _learned_common import lite0_vectors, products_frame  # noqa: E402

DIMS = (512, 256, 128, 64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default=",".join(map(str, DIMS)))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="reduction_bench")
    parser.add_argument("--projection-epochs", type=int, default=30,
                        help="epochs of the linear projection (the embedder's default is 30)")
    parser.add_argument("--save-models", type=Path, default=None,
                        help="save each fitted model into this folder (METHOD-DIM/)")
    args = parser.parse_args(argv)

    import torch

    from lookalike.evaluate.retrieval import evaluate_retrieval
    from lookalike.models.base import create
    from lookalike.models.reduction import PCAEmbedder, ProjectionEmbedder

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    frame = products_frame()
    test, train = frame[frame["split"] == "test"], frame[frame["split"] == "train"]
    vectors = lite0_vectors({"queries": test["id"].tolist(), "gallery": train["id"].tolist()},
                            image_size=args.image_size)
    queries, gallery = vectors["queries"], vectors["gallery"]
    query_labels = test["article_type"].astype(str).to_numpy()
    gallery_labels = train["article_type"].astype(str).to_numpy()
    n_classes = len(set(gallery_labels))
    base = create("efficientnet-lite0", image_size=args.image_size)

    def measure(method: str, dim: int, q: np.ndarray, g: np.ndarray, fit_s: float | None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        report = evaluate_retrieval(q, query_labels, g, gallery_labels, ks=(1, 10), map_at=100)
        return {"method": method, "dim": dim, "P@10": report.metrics["P@10"],
                "mAP@100": report.metrics["mAP@100"], "bytes_per_item": 4 * dim,
                "fit_s": None if fit_s is None else round(fit_s, 1), **(extra or {})}

    rows = [measure(f"efficientnet-lite0@{args.image_size} (full)", 1280, queries, gallery, None)]
    for dim in (int(d) for d in args.dims.split(",")):
        candidates: list[tuple[str, Any]] = [
            ("pca", PCAEmbedder(base=base, dim=dim)),
            ("pca whitened", PCAEmbedder(base=base, dim=dim, whiten=True)),
            ("projection linear", ProjectionEmbedder(base=base, dim=dim)),
        ]
        if dim <= n_classes - 1:
            candidates.append(("projection lda", ProjectionEmbedder(base=base, dim=dim,
                                                                      method="lda")))
        for method, model in candidates:
            t0 = time.perf_counter()
            if method == "projection linear":
                model.fit_vectors(gallery, gallery_labels.tolist(),
                                  epochs=args.projection_epochs, threads=args.threads)
            else:
                model.fit_vectors(gallery, gallery_labels.tolist())
            fit_s = time.perf_counter() - t0
            info = model.fit_info
            extra = {"explained_variance": round(info["explained_variance_ratio"], 4)} \
                if "explained_variance_ratio" in info else {}
            rows.append(measure(method, dim, model.project(queries), model.project(gallery),
                                fit_s, extra))
            if args.save_models is not None:
                model.save(args.save_models / f"{method.replace(' ', '-')}-{dim}")
            print(f"  {method:<18} {dim:>4}  P@10 {rows[-1]['P@10']:.4f}  "
                  f"mAP@100 {rows[-1]['mAP@100']:.4f}", flush=True)
    full = rows[0]
    for row in rows:
        row["P@10 vs full"] = round(row["P@10"] - full["P@10"], 4)
        row["relative P@10 loss %"] = round(100 * (1 - row["P@10"] / full["P@10"]), 2)
    print_table("reduced Lite0 embeddings, products article_type", rows)
    path = write_results(args.name, {
        "protocol": "products official split, class article_type; reductions fitted on the "
                    "train vectors; test queries vs train gallery, exact cosine",
        "base": base.embedder_id, "threads": args.threads,
        "projection_epochs": args.projection_epochs,
        "seconds": round(time.perf_counter() - started, 1), "peak_rss_mb": round(peak_rss_mb()),
        "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
