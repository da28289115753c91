"""Paper 000's handcrafted features (PHOG, GIST, HSV colour) and their fusions, against the CNN.

Protocol: class-match retrieval on the products Parquet, queries = the test split, gallery = the
train split, relevant = same ``article_type``; P@10 and mAP@100. Rows:

- ``phog``, ``gist``, ``hsv-histogram`` (the registry's defaults) and ``efficientnet-lite0``;
- equal-weight fusions of every pair and of all three (computed from the parts' cached vectors,
  exactly what ``FusionEmbedder`` computes);
- ``... (fitted)``: weights grid-searched for P@10 on a validation split carved from the
  *train* split (1,000 validation queries against the rest of train), then evaluated on test --
  the test split is never used to choose anything; for PHOG+colour+GIST and GIST+CNN;
- fusions with the CNN (``gist+efficientnet-lite0``, ``phog+hsv-histogram+efficientnet-lite0``);
- ``pixels``: the raw-pixel baseline, measured in the same run.

It also times our vectorised PHOG against scikit-image's ``hog`` (one call per level and image)
on the same photos and checks they agree.

    python benchmarks/handcrafted_quality.py            # all 44k photos (embeds once, cached)
    python benchmarks/handcrafted_quality.py --quick    # 1,000 queries x 8,000 gallery

Embeddings are cached in ``benchmarks/.cache/handcrafted/`` by embedder id and sample. Writes
``benchmarks/results/handcrafted_quality[-quick].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.evaluate.report import markdown_table, plot_bars  # noqa: E402
from lookalike.evaluate.retrieval import evaluate_retrieval  # noqa: E402
from lookalike.models.base import create, l2_normalise  # noqa: E402
from lookalike.models.fusion import search_weights  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "handcrafted"
QUALITY_CACHE = Path(__file__).resolve().parent / ".cache"  # benchmarks/quality.py's vectors
BASES = ("phog", "gist", "hsv-histogram", "efficientnet-lite0", "pixels")
FUSIONS = (("phog", "hsv-histogram"), ("phog", "gist"), ("hsv-histogram", "gist"),
           ("phog", "hsv-histogram", "gist"), ("gist", "efficientnet-lite0"),
           ("phog", "hsv-histogram", "efficientnet-lite0"))
#: Fusions whose weights are also fitted on a validation split of train, with their grids.
FITTED = ((("phog", "hsv-histogram", "gist"), (0.0, 0.5, 1.0, 2.0)),
          (("gist", "efficientnet-lite0"), (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)))
VALIDATION = 1000
CHUNK = 4000


def load(quick: bool, seed: int = 0):
    from lookalike.catalogue.sources import load_products_frame

    frame = load_products_frame()[["id", "article_type", "split", "image_jpeg"]]
    test, train = frame[frame["split"] == "test"], frame[frame["split"] == "train"]
    if quick:
        test = test.sample(1000, random_state=seed)
        train = train.sample(8000, random_state=seed)
    return test.reset_index(drop=True), train.reset_index(drop=True)


def images(frame) -> Any:
    from PIL import Image

    for blob in frame["image_jpeg"]:
        yield Image.open(io.BytesIO(blob)).convert("RGB")


def embed_cached(name: str, frame, tag: str) -> tuple[np.ndarray, float]:
    """Vectors of every photo of ``frame`` (cached), and seconds per image when computed.

    The full splits are the ones ``benchmarks/quality.py`` embeds too: its cached vectors
    (same ids, same order, same embedder id) are reused, so the CNN and the other core
    embedders are not embedded twice and their numbers are those of ``quality.json``.
    """
    embedder = create(name)
    digest = hashlib.sha256("".join(frame["id"].astype(str)).encode()).hexdigest()[:10]
    path = CACHE / f"{embedder.embedder_id}-{tag}-{len(frame)}-{digest}.npy"
    side = {"test": "queries", "train": "gallery"}[tag]
    sample = hashlib.sha256("\n".join(frame["id"].astype(str)).encode()).hexdigest()[:10]
    shared = QUALITY_CACHE / f"products-{side}-{sample}-{embedder.embedder_id}.npy"
    for candidate in (path, shared):
        if candidate.is_file():
            vectors = np.load(candidate, allow_pickle=False)
            if vectors.shape == (len(frame), embedder.dim):
                return vectors, float("nan")
    # Embedded in chunks, each saved as it is done: an interrupted run (the full train split
    # takes GIST several minutes) continues from the last finished chunk when run again.
    CACHE.mkdir(parents=True, exist_ok=True)
    chunks, seconds, embedded = [], 0.0, 0
    for number, start in enumerate(range(0, len(frame), CHUNK)):
        part = path.with_name(f"{path.stem}.part{number}.npy")
        if part.is_file():
            chunks.append(np.load(part, allow_pickle=False))
            continue
        started = time.perf_counter()
        chunk = embedder.embed(images(frame.iloc[start:start + CHUNK]))
        seconds += time.perf_counter() - started
        embedded += len(chunk)
        np.save(part, chunk)
        chunks.append(chunk)
        print(f"    {name} {tag}: {start + len(chunk)}/{len(frame)}", flush=True)
    vectors = np.concatenate(chunks)
    np.save(path, vectors)
    for number in range(len(chunks)):
        path.with_name(f"{path.stem}.part{number}.npy").unlink(missing_ok=True)
    return vectors, (seconds / embedded if embedded else float("nan"))


def evaluate(name: str, queries: np.ndarray, gallery: np.ndarray, test, train) -> dict[str, Any]:
    report = evaluate_retrieval(queries, test["article_type"].to_numpy(), gallery,
                                train["article_type"].to_numpy(), ks=(10,), map_at=100)
    return {"embedder": name, "dim": int(queries.shape[1]), "P@10": report.metrics["P@10"],
            "mAP@100": report.metrics["mAP@100"]}


def fuse(blocks: list[np.ndarray], weights: list[float]) -> np.ndarray:
    return l2_normalise(np.concatenate([w * l2_normalise(b) for w, b in zip(weights, blocks)], 1))


def phog_speed(frame, n: int = 300) -> dict[str, Any]:
    """Our batched PHOG vs scikit-image ``hog`` once per level (same numbers, both timed)."""
    from skimage.feature import hog

    from lookalike.models.handcrafted import PHOGEmbedder, grey_array

    photos = list(images(frame.head(n)))
    embedder = PHOGEmbedder()
    started = time.perf_counter()
    ours = embedder.embed(photos)
    ours_ms = (time.perf_counter() - started) * 1000 / n
    started = time.perf_counter()
    reference = []
    for photo in photos:
        grey = grey_array(photo, embedder.size).astype(np.float64)
        reference.append(np.concatenate([
            hog(grey, orientations=embedder.bins,
                pixels_per_cell=(embedder.size // 2 ** level,) * 2,
                cells_per_block=(2 ** level,) * 2, block_norm="L2")
            for level in range(embedder.levels + 1)]))
    skimage_ms = (time.perf_counter() - started) * 1000 / n
    difference = float(np.abs(ours - l2_normalise(np.array(reference))).max())
    return {"images": n, "ours_ms_per_image": ours_ms, "skimage_hog_ms_per_image": skimage_ms,
            "speed_up": skimage_ms / ours_ms, "max_abs_difference": difference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 queries x 8,000 gallery")
    parser.add_argument("--skip-cnn", action="store_true", help="leave efficientnet-lite0 out")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    test, train = load(args.quick)
    print(f"queries {len(test)} (test), gallery {len(train)} (train), class = article_type")
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    speed: dict[str, float] = {}
    rows = []
    for name in BASES:
        if args.skip_cnn and name.startswith("efficientnet"):
            continue
        started = time.perf_counter()
        q, q_seconds = embed_cached(name, test, "test")
        g, g_seconds = embed_cached(name, train, "train")
        vectors[name] = (q, g)
        speed[name] = float(np.nanmean([q_seconds, g_seconds]) * 1000) \
            if not (np.isnan(q_seconds) and np.isnan(g_seconds)) else float("nan")
        rows.append(evaluate(name, q, g, test, train))
        print(f"  {name}: embedded/loaded in {time.perf_counter() - started:.0f} s")
    for parts in FUSIONS:
        if not all(p in vectors for p in parts):
            continue
        blocks_q = [vectors[p][0] for p in parts]
        blocks_g = [vectors[p][1] for p in parts]
        weights = [1.0] * len(parts)
        rows.append(evaluate("+".join(parts), fuse(blocks_q, weights), fuse(blocks_g, weights),
                             test, train))
    # Weights fitted on a validation split of train only (the test split chooses nothing).
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    validation, rest = order[:VALIDATION], order[VALIDATION:]
    labels = train["article_type"].to_numpy()
    fitted_report = []
    for parts, grid in FITTED:
        if not all(p in vectors for p in parts):
            continue
        started = time.perf_counter()
        fitted, tried = search_weights([vectors[p][1] for p in parts], labels, validation, rest,
                                       grid=grid)
        row = evaluate("+".join(parts) + " (fitted)",
                       fuse([vectors[p][0] for p in parts], fitted),
                       fuse([vectors[p][1] for p in parts], fitted), test, train)
        row["weights"] = fitted
        rows.append(row)
        fitted_report.append({"parts": list(parts), "weights": fitted, "tried": tried,
                              "validation_queries": VALIDATION,
                              "seconds": time.perf_counter() - started})
        print(f"  fitted {'+'.join(parts)}: weights {fitted}", flush=True)
    for row in rows:
        row["embed_ms_per_image"] = speed.get(row["embedder"], None)
    print_table("class-match retrieval, products test vs train (article_type)", rows)
    timing = phog_speed(test)
    print_table("PHOG: ours (batched numpy) vs scikit-image hog per level", [timing])
    suffix = "-quick" if args.quick else ""
    out = write_results(f"handcrafted_quality{suffix}", {
        "protocol": {"queries": len(test), "gallery": len(train), "class": "article_type",
                     "quick": args.quick},
        "rows": rows, "fitted_weights": fitted_report,
        "phog_speed": timing, "peak_rss_mb": peak_rss_mb()})
    table = markdown_table(rows, ["embedder", "dim", "P@10", "mAP@100", "weights",
                                  "embed_ms_per_image"])
    (RESULTS / f"handcrafted_quality{suffix}.md").write_text(
        f"Products, test vs train, relevant = same article_type ({len(test)} queries, "
        f"{len(train)} gallery).\n\n" + table)
    plot_bars(RESULTS / f"handcrafted_quality{suffix}.png", rows, x="embedder",
              y=["P@10", "mAP@100"], title="Handcrafted features vs CNN (products)",
              ylim=(0, 1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
