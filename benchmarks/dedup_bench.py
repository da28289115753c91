"""Near-duplicate detection on real product photos: perceptual hash vs embeddings vs imagededup.

Positives: copies of test-split photos, each altered one way -- JPEG re-encoded at quality 30-95,
resized (x0.5, x1.5), slightly cropped (3-6 % a side) or brightness-shifted (x0.85, x1.15) --
mixed into the catalogue. A found pair is a true duplicate when both sides show the same source
photo (a copy and its original, or two catalogue items whose photos are byte-identical, which
the real catalogue has); every other pair -- including the many look-alike products of one
article type -- is a false positive.

* ``phash`` (lookalike.recommend.duplicates): the whole catalogue (44,072 photos) + the copies,
  FAISS multi-hash range search; precision / recall of pairs over a threshold sweep.
* the same on the *subset* (test split + copies) next to: ``embedding`` (cosine between index
  vectors, neighbour-bounded range search) and imagededup's PHash/DHash/WHash/AHash (its own
  hashing code; pairs scored the same way; its own search timed once at its default 10 bits).
* the real catalogue alone: how many near-duplicate groups at the chosen threshold, and a
  picture grid of examples (``benchmarks/results/dedup-groups.html``).

    python benchmarks/dedup_bench.py                     # Lite0 embeddings of the subset
    python benchmarks/dedup_bench.py --embedder hsv-histogram --copies 500   # quicker
    python benchmarks/dedup_bench.py --combined        # copies with 1-4 edits at once: the copies
                                                       # detector vs the rest (_dedup_combined.py)
    python benchmarks/dedup_bench.py --ingest-check    # one incoming image vs 44,072 items

imagededup must import its hashing module without torchvision (see docs/clusters-and-
duplicates.md: install it with ``pip install --no-deps imagededup``); when it cannot, its rows
are left out and the reason is recorded in the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.catalogue.sources import load_products_frame  # noqa: E402
from lookalike.evaluate.report import write_result_grid_html  # noqa: E402
from lookalike.index.base import create_index  # noqa: E402
from lookalike.recommend.duplicates import (  # noqa: E402
    colour_grid,
    group_pairs,
    hamming_pairs,
    pair_colour_differences,
    pair_cosines,
    phash_codes,
    vector_pairs,
)

RESULTS = Path(__file__).resolve().parent / "results"
PHASH_SWEEP = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12)
HYBRID_COSINES = (0.85, 0.9, 0.95)
COLOUR_LIMITS = (8.0, 12.0, 16.0)
COSINE_SWEEP = (0.90, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)
TRANSFORMS = ("jpeg-q30", "jpeg-q50", "jpeg-q75", "jpeg-q95", "resize-x0.5", "resize-x1.5",
              "crop-3%", "crop-6%", "brightness-x0.85", "brightness-x1.15")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def transform(image: Image.Image, kind: str) -> Image.Image:
    """One altered copy of ``image`` (always re-encoded as JPEG, as a shop would)."""
    quality = 90
    w, h = image.size
    if kind.startswith("jpeg-q"):
        quality = int(kind[6:])
    elif kind.startswith("resize-x"):
        factor = float(kind[8:])
        image = image.resize((max(8, round(w * factor)), max(8, round(h * factor))),
                             Image.Resampling.LANCZOS)
    elif kind.startswith("crop-"):
        share = float(kind[5:-1]) / 100
        dx, dy = max(1, round(w * share)), max(1, round(h * share))
        image = image.crop((dx, dy, w - dx, h - dy))
    elif kind.startswith("brightness-x"):
        image = ImageEnhance.Brightness(image).enhance(float(kind[12:]))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def score_pairs(pairs: np.ndarray, photo_class: np.ndarray, designed: set[tuple[int, int]],
                copy_kind: dict[int, str]) -> dict[str, Any]:
    """Precision over all found pairs, recall of the designed (copy, original) pairs.

    Pairs are matched as int64 keys ``i << 32 | j`` (``i < j``) with ``np.isin``: the sweeps
    score millions of pairs dozens of times, too many for Python sets of tuples."""
    ordered = sorted(designed)
    wanted = np.asarray([(a << 32) | b for a, b in ordered], dtype=np.int64)
    if len(pairs):
        i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
        true = photo_class[i] == photo_class[j]
        found = (np.minimum(i, j) << 32) | np.maximum(i, j)
        hit = np.isin(wanted, found)
    else:
        true = np.zeros(0, dtype=bool)
        hit = np.zeros(len(wanted), dtype=bool)
    by_kind: dict[str, list[int]] = {}
    for (a, b), was_hit in zip(ordered, hit.tolist()):
        kind = copy_kind[max(a, b)]
        by_kind.setdefault(kind, [0, 0])
        by_kind[kind][1] += 1
        by_kind[kind][0] += was_hit
    return {"pairs": int(len(pairs)), "true_pairs": int(true.sum()),
            "false_pairs": int((~true).sum()),
            "precision": float(true.mean()) if len(true) else 1.0,
            "recall": float(hit.mean()) if len(hit) else 0.0,
            "recall_by_copy": {k: round(v[0] / v[1], 3) for k, v in sorted(by_kind.items())}}


def sweep_hamming(codes: np.ndarray, thresholds, photo_class, designed, copy_kind,
                  name: str) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    pairs = hamming_pairs(codes, max(thresholds))
    seconds = time.perf_counter() - started
    rows = []
    for t in thresholds:
        kept = pairs[pairs[:, 2] <= t]
        rows.append({"method": name, "threshold": t,
                     **score_pairs(kept, photo_class, designed, copy_kind)})
    return rows, seconds


def load_imagededup() -> tuple[dict[str, Any] | None, str | None]:
    """imagededup's hashing classes, imported without its package ``__init__`` files (which
    import torchvision for its CNN method, unusable here; see the module docstring)."""
    spec = importlib.util.find_spec("imagededup")
    if spec is None:
        return None, "imagededup is not installed (pip install --no-deps imagededup)"
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in ("imagededup", "imagededup.utils", "imagededup.methods", "imagededup.handlers",
                 "imagededup.handlers.search"):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = module
    try:
        from imagededup.methods.hashing import AHash, DHash, PHash, WHash
    except ImportError as error:
        return None, f"imagededup's hashing module does not import: {error}"
    return {"PHash": PHash, "DHash": DHash, "WHash": WHash, "AHash": AHash}, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=1000, help="altered copies of test photos")
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("--threshold", type=int, default=None,
                        help="phash bits for the real-catalogue groups (default: best F1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--own-search", default="PHash",
                        help="imagededup methods whose own (brute-force) search is timed too")
    parser.add_argument("--combined", action="store_true",
                        help="copies with 1-4 combined edits: the copies detector vs baselines, "
                             "thresholds chosen on validation copies (see _dedup_combined.py)")
    parser.add_argument("--full", action="store_true",
                        help="--combined at full size: validation on the whole train split, "
                             "test on the whole catalogue (44,072) with copies of test products "
                             "(writes dedup_combined_full.json; the default writes "
                             "dedup_combined_quick.json)")
    parser.add_argument("--embeddings-from", default=None,
                        help="a lookalike project whose embedding cache (same embedder) supplies "
                             "the catalogue photos' vectors (--combined; copies are embedded)")
    parser.add_argument("--ingest-check", action="store_true",
                        help="only time checking one incoming image against 44,072 items")
    args = parser.parse_args()

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    if args.ingest_check:
        import _dedup_combined as combined

        from lookalike.models.base import create

        embedder = create(args.embedder)
        payload = combined.run_ingest_check(load_products_frame(), embedder,
                                            create("copy-descriptor"), seed=args.seed,
                                            cache=embedding_cache(args, embedder))
        payload["embedder"] = args.embedder
        print(payload["ingest_check"])
        print(write_results("dedup_ingest_check", payload, quick=True, seeds=[args.seed + 202]))
        return
    if args.combined:
        run_combined(args)
        return
    rng = np.random.default_rng(args.seed)

    frame = load_products_frame()
    n_real = len(frame)
    # Items whose photos are byte-identical show the same source photo.
    digest = frame["image_jpeg"].map(lambda b: hashlib.sha256(b).hexdigest())
    photo_class = digest.astype("category").cat.codes.to_numpy().astype(np.int64)
    test_rows = np.flatnonzero(frame["split"].to_numpy() == "test")
    originals = np.sort(rng.choice(test_rows, size=min(args.copies, len(test_rows)),
                                   replace=False))
    kinds = [TRANSFORMS[n % len(TRANSFORMS)] for n in range(len(originals))]

    started = time.perf_counter()
    real_images = [decode(b) for b in frame["image_jpeg"]]
    copies = [transform(real_images[o], kind) for o, kind in zip(originals, kinds)]
    decode_seconds = time.perf_counter() - started
    log(f"decoded {n_real} photos and made {len(copies)} copies")
    all_class = np.concatenate([photo_class, photo_class[originals]])
    copy_rows = np.arange(n_real, n_real + len(originals))
    copy_kind = {int(r): kind for r, kind in zip(copy_rows, kinds)}
    designed = {(int(o), int(c)) for o, c in zip(originals, copy_rows)}

    # ---- phash over the whole catalogue + copies --------------------------------------------
    started = time.perf_counter()
    real_codes = phash_codes(real_images)
    copy_codes = phash_codes(copies)
    hash_seconds = time.perf_counter() - started
    started = time.perf_counter()
    colours = np.stack([colour_grid(image) for image in real_images + copies])
    colour_seconds = time.perf_counter() - started
    codes = np.concatenate([real_codes, copy_codes])
    full_rows, full_search = sweep_hamming(codes, PHASH_SWEEP, all_class, designed, copy_kind,
                                           "phash (full catalogue)")
    colour_rows = []
    candidates = hamming_pairs(codes, max(PHASH_SWEEP))
    differences = pair_colour_differences(colours, candidates)
    for limit in COLOUR_LIMITS:
        for t in PHASH_SWEEP:
            kept = candidates[(candidates[:, 2] <= t) & (differences <= limit)]
            colour_rows.append({"method": f"phash+colour (full, dE<={limit:g})", "threshold": t,
                                "colour_limit": limit,
                                **score_pairs(kept, all_class, designed, copy_kind)})
    best = max(colour_rows, key=lambda r: _f1(r))
    log(f"phash sweeps over the whole catalogue done; best phash+colour {best['threshold']} bits")
    chosen = args.threshold if args.threshold is not None else best["threshold"]
    chosen_limit = best["colour_limit"]

    # ---- the subset: test split + copies ------------------------------------------------------
    subset = np.concatenate([test_rows, copy_rows])
    sub_of = {int(r): n for n, r in enumerate(subset)}
    sub_class = all_class[subset]
    sub_designed = {(sub_of[a], sub_of[b]) for a, b in designed}
    sub_kind = {sub_of[r]: k for r, k in copy_kind.items()}
    sub_images = [real_images[r] for r in test_rows] + copies
    subset_rows, subset_search = sweep_hamming(codes[subset], PHASH_SWEEP, sub_class,
                                               sub_designed, sub_kind, "phash (lookalike)")

    from lookalike.models.base import create

    embedder = create(args.embedder)
    started = time.perf_counter()
    vectors = embedder.embed(sub_images, batch_size=64)
    embed_seconds = time.perf_counter() - started
    log(f"embedded the subset ({len(sub_images)}) with {args.embedder}")
    index = create_index("exact", embedder.dim, embedder.embedder_id)
    ids = [str(n) for n in range(len(subset))]
    index.add(ids, vectors)
    started = time.perf_counter()
    emb_pairs = vector_pairs(index, ids, lambda chunk: vectors[[int(i) for i in chunk]],
                             min(COSINE_SWEEP), neighbours=10)
    emb_search = time.perf_counter() - started
    embedding_rows = []
    for t in COSINE_SWEEP:
        kept = emb_pairs[emb_pairs[:, 2] <= 1.0 - t + 1e-9] if len(emb_pairs) else emb_pairs
        embedding_rows.append({"method": f"embedding ({args.embedder})", "threshold": t,
                               **score_pairs(kept, sub_class, sub_designed, sub_kind)})

    # phash candidates verified by the embedding cosine (the hash is blind to colour)
    hybrid_rows = []
    sub_codes = codes[subset]
    for radius in (4, 6, 8, 10, 12):
        candidates = hamming_pairs(sub_codes, radius)
        cosines = pair_cosines(vectors, candidates)
        for min_cos in HYBRID_COSINES:
            kept = candidates[cosines >= min_cos]
            hybrid_rows.append({"method": f"phash+embedding (cos>={min_cos})",
                                "threshold": radius,
                                **score_pairs(kept, sub_class, sub_designed, sub_kind)})

    imagededup_rows: list[dict[str, Any]] = []
    imagededup_timing: dict[str, Any] = {}
    methods, why_not = load_imagededup()
    if methods:
        arrays = [np.asarray(image) for image in sub_images]
        for name, cls in methods.items():
            hasher = cls(verbose=False)
            started = time.perf_counter()
            hashes = [hasher.encode_image(image_array=a) for a in arrays]
            encode = time.perf_counter() - started
            packed = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes),
                                   dtype=np.uint8).reshape(-1, 8)
            rows, _ = sweep_hamming(packed, PHASH_SWEEP, sub_class, sub_designed, sub_kind,
                                    f"imagededup {name}")
            imagededup_rows += rows
            if name not in args.own_search.split(","):
                imagededup_timing[name] = {"encode_s": round(encode, 2)}
                continue
            started = time.perf_counter()
            found = hasher.find_duplicates(encoding_map={str(n): h for n, h in enumerate(hashes)},
                                           max_distance_threshold=10, num_dist_workers=0)
            own_search = time.perf_counter() - started
            own_pairs = {(min(int(a), int(b)), max(int(a), int(b)))
                         for a, dupes in found.items() for b in dupes}
            ours = {tuple(p) for p in hamming_pairs(packed, 10)[:, :2].tolist()}
            imagededup_timing[name] = {"encode_s": round(encode, 2),
                                       "own_search_s_at_10": round(own_search, 3),
                                       "own_pairs_at_10": len(own_pairs),
                                       "same_pairs_as_faiss_search": own_pairs == ours}

    log("imagededup done" if methods else f"imagededup left out: {why_not}")
    # ---- the real catalogue's own near-duplicate groups -------------------------------------
    plain_real = hamming_pairs(real_codes, chosen)
    real_pairs = plain_real[pair_colour_differences(colours[:n_real], plain_real) <= chosen_limit]
    plain_groups = group_pairs(n_real, plain_real)
    groups = group_pairs(n_real, real_pairs)
    identical = int((np.bincount(photo_class) >= 2).sum())
    same_pixels = {}
    for g in groups:
        same_pixels.setdefault(len(set(photo_class[g].tolist())) == 1, 0)
        same_pixels[len(set(photo_class[g].tolist())) == 1] += 1
    grid_rows = []
    for g in groups[:10] + [g for g in groups if len(set(photo_class[g].tolist())) > 1][:20]:
        cells = [{"id": str(frame["id"].iat[r]), "image": frame["image_jpeg"].iat[r],
                  "title": str(frame["title"].iat[r]), "label": str(frame["article_type"].iat[r])}
                 for r in g[:10]]
        grid_rows.append({"query": {**cells[0], "title": f"{len(g)} items: {cells[0]['title']}"},
                          "results": cells[1:]})
    grid = write_result_grid_html(RESULTS / "dedup-groups.html", grid_rows,
                                  title=f"near-duplicate groups in the real catalogue "
                                        f"(phash <= {chosen} bits, colour dE <= {chosen_limit:g})",
                                  note="First the largest groups, then groups whose photos are "
                                       "not byte-identical.")

    table = [dict(r, recall_by_copy=None) for r in
             full_rows + colour_rows + subset_rows + embedding_rows + hybrid_rows
             + imagededup_rows]
    for row in table:
        row.pop("recall_by_copy")
        row["F1"] = round(_f1(row), 4)
    print_table("near-duplicate pairs: precision / recall", table)
    payload = {
        "copies": len(originals), "catalogue": n_real, "subset": len(subset),
        "transforms": TRANSFORMS, "embedder": args.embedder,
        "seconds": {"decode_and_copy": round(decode_seconds, 2),
                    "phash_all": round(hash_seconds, 2),
                    "colour_grids_all": round(colour_seconds, 2),
                    "phash_pairs_full": round(full_search, 3),
                    "phash_pairs_subset": round(subset_search, 3),
                    "embed_subset": round(embed_seconds, 2),
                    "embedding_pairs_subset": round(emb_search, 3)},
        "phash_full": full_rows, "phash_colour_full": colour_rows, "phash_subset": subset_rows,
        "embedding_subset": embedding_rows, "hybrid_subset": hybrid_rows,
        "imagededup": imagededup_rows, "imagededup_timing": imagededup_timing,
        "imagededup_unavailable": why_not,
        "best_phash_colour_full": {"threshold": best["threshold"], "colour_limit": chosen_limit,
                                   "precision": best["precision"], "recall": best["recall"]},
        "real_catalogue": {"method": "phash+colour", "threshold": chosen,
                           "colour_limit": chosen_limit, "pairs": int(len(real_pairs)),
                           "phash_only_groups": len(plain_groups),
                           "phash_only_items": int(sum(map(len, plain_groups))),
                           "groups": len(groups), "items_in_groups": int(sum(map(len, groups))),
                           "largest_group": int(max(map(len, groups), default=0)),
                           "groups_all_byte_identical": same_pixels.get(True, 0),
                           "groups_with_distinct_photos": same_pixels.get(False, 0),
                           "byte_identical_photo_sets": identical, "grid": str(grid)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(f"real catalogue at {chosen} bits: {len(groups)} groups, "
          f"{payload['real_catalogue']['items_in_groups']} items; grid {grid}")
    print(write_results("dedup_bench", payload))


def embedding_cache(args: argparse.Namespace, embedder) -> Any:
    """The ``--embeddings-from`` project's embedding cache of ``embedder``, or None."""
    if not args.embeddings_from:
        return None
    from lookalike.models.cache import EmbeddingCache

    folder = Path(args.embeddings_from) / "embeddings" / embedder.embedder_id
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no embedding cache of {embedder.embedder_id}")
    return EmbeddingCache(folder, embedder.embedder_id, embedder.dim)


def run_combined(args: argparse.Namespace) -> None:
    """``--combined``: see benchmarks/_dedup_combined.py."""
    import _dedup_combined as combined

    from lookalike.models.base import create

    methods, why_not = load_imagededup()
    started = time.perf_counter()
    embedder = create(args.embedder)
    cache = embedding_cache(args, embedder)
    payload = combined.run(load_products_frame(), embedder, create("copy-descriptor"),
                           methods["PHash"] if methods else None, quick=not args.full,
                           seed=args.seed, threads=args.threads, cache=cache)
    payload.update({"embedder": args.embedder, "imagededup_unavailable": why_not,
                    "embeddings_from": "project embedding cache (same embedder, same bytes)"
                    if cache is not None else None,
                    "seconds_total": round(time.perf_counter() - started, 1),
                    "peak_rss_mb": round(peak_rss_mb(), 1)})
    rows = [{"method": "copies", **{k: payload["test"]["copies"][k]
                                    for k in ("precision", "recall", "pairs", "planted")}}]
    rows += [{"method": name, **{k: row[k] for k in ("precision", "recall", "pairs", "planted")}}
             for name, row in payload["test"]["baselines"].items()]
    print_table("test copies (thresholds chosen on validation)", rows)
    for group, row in payload["test"]["copies"]["by_edits"].items():
        print(f"copies {group}: recall {row['recall']} precision {row['precision']} "
              f"pairs {row['pairs']} of {row['copies']} planted")
    print(write_results("dedup_combined_" + ("full" if args.full else "quick"), payload,
                        quick=not args.full, seeds=[payload["sets"]["validation"]["seed"],
                                                    payload["sets"]["test"]["seed"]]))


def _f1(row: dict[str, Any]) -> float:
    p, r = row["precision"], row["recall"]
    return 2 * p * r / (p + r) if p + r else 0.0


if __name__ == "__main__":
    main()
