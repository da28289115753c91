"""Combined-edit copies for benchmarks/dedup_bench.py (``--combined``): the ``copies`` detector
against phash, phash+colour, embeddings and imagededup's PHash on the same copies.

Two independent sets, each a catalogue of real products plus planted copies under new ids:

* *validation*: train-split products, copies drawn with the validation seed -- every threshold of
  the ``copies`` detector (min texture, max colour) and of the baselines is chosen here;
* *test*: test-split products, copies drawn with another seed -- read once with those choices.

Each set plants copies with 1 (single edits: crop, resize, brightness, jpeg), 2, 3 and 4 edits at
once (crop + resize + brightness + JPEG with random strengths). A reported pair is true when both
sides show the same source photo (a copy and its original, or catalogue photos that are byte-
identical); precision is over all pairs reported, recall over the planted (copy, original) pairs;
both also per number of edits and per single edit type (precision there over the pairs that touch
those copies).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lookalike.index.base import create_index
from lookalike.catalogue.copies import (CopySettings, candidate_pairs, descriptor_pairs,
                                        keep_copies, pair_descriptor_cosines)
from lookalike.catalogue.copy_edits import EDIT_KINDS, edit_copy, random_edits
from lookalike.catalogue.copy_verify import score_pairs, thumbnails
from lookalike.recommend.duplicates import (colour_grid, hamming_pairs, pair_colour_differences,
                                            phash_codes, vector_pairs)

EDIT_COUNTS = (1, 2, 3, 4)
TEXTURE_SWEEP = (0.70, 0.74, 0.78, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96)
COLOUR_SWEEP = (4.0, 6.0, 8.0, 10.0, 12.0, 15.0)
#: Copy-descriptor cosines: the floor every copy must reach, and the level that is a copy alone.
FLOOR_SWEEP = (-1.0, 0.3, 0.4, 0.5, 0.6, 0.7)
ACCEPT_SWEEP = (2.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def draw_set(frame, split: str, n_catalogue: int, n_copies: int, seed: int,
             copy_split: str | None = None) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """``(rng, rows, originals)``: the frame rows of a set's catalogue and the positions (into
    ``rows``) of the products it copies; ``rng`` is left where the copies' edits are drawn."""
    rng = np.random.default_rng(seed)
    splits = frame["split"].to_numpy()
    rows = np.arange(len(frame)) if split == "all" else np.flatnonzero(splits == split)
    rows = np.sort(rng.choice(rows, size=min(n_catalogue, len(rows)), replace=False))
    eligible = np.arange(len(rows)) if copy_split is None else \
        np.flatnonzero(splits[rows] == copy_split)
    originals = rng.choice(eligible, size=min(n_copies, len(eligible)), replace=False)
    return rng, rows, originals


def build_set(frame, split: str, n_catalogue: int, n_copies: int, seed: int,
              copy_split: str | None = None) -> dict[str, Any]:
    """A catalogue of ``n_catalogue`` products of ``split`` (``"all"``: of both splits) plus
    ``n_copies`` copies of some of them -- of its ``copy_split`` products when given -- (a
    quarter each with 1, 2, 3 and 4 edits), seeded."""
    rng, rows, originals = draw_set(frame, split, n_catalogue, n_copies, seed, copy_split)
    photos = [Image.open(io.BytesIO(frame["image_jpeg"].iat[r])).convert("RGB") for r in rows]
    digest = [hashlib.sha256(frame["image_jpeg"].iat[r]).hexdigest() for r in rows]
    copies, groups, kinds = [], [], []
    for n, original in enumerate(originals):
        count = EDIT_COUNTS[n % len(EDIT_COUNTS)]
        edits = random_edits(rng, count)
        copies.append(edit_copy(photos[original], edits))
        groups.append(f"{count} edits")
        kinds.append(edits[0].kind if count == 1 else "+".join(e.kind for e in edits))
    photo_class = np.unique(digest, return_inverse=True)[1].astype(np.int64)
    all_class = np.concatenate([photo_class, photo_class[originals]])
    copy_rows = np.arange(len(rows), len(rows) + len(copies))
    return {"split": split, "copy_split": copy_split or split, "seed": seed,
            "images": photos + copies, "class": all_class,
            "n_catalogue": len(rows), "designed": np.stack([originals, copy_rows], axis=1),
            "groups": groups, "kinds": kinds, "digests": digest}


def score(pairs: np.ndarray, data: dict[str, Any]) -> dict[str, Any]:
    """Precision / recall overall, per number of edits and per single edit type (vectorised:
    at 44k a phash radius reports millions of pairs)."""
    cls, designed = data["class"], np.asarray(data["designed"], dtype=np.int64)
    n_cat = data["n_catalogue"]
    pairs = np.asarray(pairs).reshape(-1, pairs.shape[1] if len(pairs) else 2).astype(np.int64)
    i, j = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    true = cls[i] == cls[j]
    wanted = (np.minimum(designed[:, 0], designed[:, 1]) << 32) | np.maximum(designed[:, 0],
                                                                             designed[:, 1])
    hit = np.isin(wanted, (i << 32) | j)
    touching_copies = (i >= n_cat) | (j >= n_cat)
    out: dict[str, Any] = {"pairs": int(len(i)), "planted": int(len(designed)),
                           "false_pairs": int((~true).sum()),
                           "copy_pairs": int(touching_copies.sum()),
                           "copy_precision": round(float(true[touching_copies].mean())
                                                   if touching_copies.any() else 1.0, 4),
                           "precision": round(float(true.mean()) if len(true) else 1.0, 4),
                           "recall": round(float(hit.mean()), 4)}
    labels = {"by_edits": data["groups"],
              "by_single_edit": [k if g == "1 edits" else None
                                 for k, g in zip(data["kinds"], data["groups"])]}
    n_rows = len(cls)
    for name, per_copy in labels.items():
        table = {}
        for group in sorted({g for g in per_copy if g}):
            members = np.asarray([g == group for g in per_copy])
            in_group = np.zeros(n_rows, dtype=bool)
            in_group[n_cat + np.flatnonzero(members)] = True
            touching = in_group[i] | in_group[j]
            table[group] = {
                "copies": int(members.sum()), "recall": round(float(hit[members].mean()), 4),
                "pairs": int(touching.sum()),
                "precision": round(float(true[touching].mean()) if touching.any() else 1.0, 4)}
        out[name] = table
    return out


def describe(images: list, digests: list[str], n_catalogue: int, descriptor) -> np.ndarray:
    """Copy descriptors of a set's images; the catalogue photos' are cached (by the sha256 of
    their bytes) under benchmarks/.cache/copy-descriptor/<descriptor id>/."""
    from lookalike.models.cache import EmbeddingCache, embed_with_cache

    folder = Path(__file__).resolve().parent / ".cache" / "copy-descriptor"
    cache = EmbeddingCache(folder / descriptor.embedder_id, descriptor.embedder_id,
                           descriptor.dim)
    catalogue = embed_with_cache(descriptor, digests, dict(zip(digests, images)).__getitem__,
                                 cache, progress=False)
    copies = descriptor.embed(images[n_catalogue:])
    return np.concatenate([catalogue, copies]).astype(np.float32)


def prepare(data: dict[str, Any], embedder, threads: int, cache: Any = None,
            descriptor: Any = None) -> dict[str, Any]:
    """Fingerprints, thumbnails, embeddings and copy descriptors of one set, and the timings.
    ``cache`` (an :class:`~lookalike.models.cache.EmbeddingCache` of the same embedder, keyed by
    the sha256 of the photo's bytes) supplies the vectors of catalogue photos it holds; the rest
    are embedded."""
    started = time.perf_counter()
    images = data["images"]
    data["codes"] = phash_codes(images)
    data["colours"] = np.stack([colour_grid(image) for image in images])
    data["thumbs"] = thumbnails(images)
    data["seconds_fingerprints"] = time.perf_counter() - started
    started = time.perf_counter()
    vectors = np.zeros((len(images), embedder.dim), dtype=np.float32)
    todo = np.arange(len(images))
    if cache is not None:
        got, found = cache.lookup(list(data["digests"]))
        vectors[:data["n_catalogue"]][found] = got[found]
        todo = np.concatenate([np.flatnonzero(~found),
                               np.arange(data["n_catalogue"], len(images))])
    if len(todo):
        vectors[todo] = np.asarray(embedder.embed([images[r] for r in todo], batch_size=64),
                                   dtype=np.float32)
    data["vectors"], data["embedded"] = vectors, int(len(todo))
    data["seconds_embed"] = time.perf_counter() - started
    started = time.perf_counter()
    data["descriptors"] = None if descriptor is None else \
        describe(images, data["digests"], data["n_catalogue"], descriptor)
    data["seconds_describe"] = time.perf_counter() - started
    ids = [str(n) for n in range(len(images))]
    index = create_index("exact", embedder.dim, embedder.embedder_id)
    index.add(ids, data["vectors"])
    data["index"], data["ids"] = index, ids
    return data


def candidates(data: dict[str, Any], settings: CopySettings) -> np.ndarray:
    """The detector's candidates (phash + copy-descriptor neighbours, every descriptor cosine:
    the sweep applies the floor); also the embedding baseline's pairs."""
    vectors = data["vectors"]
    data["embedding_pairs"] = vector_pairs(
        data["index"], data["ids"], lambda chunk: vectors[[int(c) for c in chunk]],
        settings.min_cosine, neighbours=settings.neighbours)
    return candidate_pairs(data["codes"], settings,
                           descriptor_pairs(data["descriptors"], settings.neighbours, -1.0))


def candidate_recall(pairs: np.ndarray, data: dict[str, Any]) -> float:
    found = set(map(tuple, np.sort(pairs[:, :2], axis=1).tolist()))
    return round(float(np.mean([tuple(sorted(map(int, d))) in found
                                for d in data["designed"]])), 4)


#: The copies detector's criterion: the most planted copies found while at least this share of
#: the pairs that touch a copy are right (the issue's single-edit precision target); the
#: baselines keep best F1.
MIN_COPY_PRECISION = 0.8


def choose(rows: list[dict[str, Any]], key: str = "F1") -> dict[str, Any]:
    for row in rows:
        p, r = row["precision"], row["recall"]
        row["F1"] = round(2 * p * r / (p + r), 4) if p + r else 0.0
    return max(rows, key=lambda row: row[key])


def choose_copies(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The setting with the most recall among those with copy precision >= the floor (fewest
    pairs on ties); with none, the best copy precision."""
    choose(rows)  # fills F1 for the record
    good = [row for row in rows if row["copy_precision"] >= MIN_COPY_PRECISION]
    if not good:
        return max(rows, key=lambda row: (row["copy_precision"], row["recall"]))
    return max(good, key=lambda row: (row["recall"], -row["pairs"]))


def sweep_copies(data: dict[str, Any], settings: CopySettings) -> tuple[list[dict], dict]:
    """Candidates once, verification scores and descriptor cosines once, then every setting of
    (texture, colour, descriptor floor, descriptor accept)."""
    started = time.perf_counter()
    pairs = candidates(data, settings)
    seconds_candidates = time.perf_counter() - started
    started = time.perf_counter()
    scores = score_pairs(data["thumbs"][pairs[:, 0]], data["thumbs"][pairs[:, 1]])
    cosines = pair_descriptor_cosines(data["descriptors"], pairs)
    seconds_verify = time.perf_counter() - started
    data["copy_scores"], data["copy_cosines"], data["copy_candidates"] = scores, cosines, pairs
    rows = []
    for texture, colour, floor, accept in itertools.product(
            TEXTURE_SWEEP, COLOUR_SWEEP, FLOOR_SWEEP, ACCEPT_SWEEP):
        result = score(copies_at(data, _settings(texture, colour, floor, accept)), data)
        rows.append({"method": "copies", "min_texture": texture, "max_colour": colour,
                     "min_descriptor": floor, "accept_descriptor": accept,
                     "precision": result["precision"], "recall": result["recall"],
                     "pairs": result["pairs"], "copy_precision": result["copy_precision"],
                     "copy_pairs": result["copy_pairs"]})
    floor_candidates = pairs[cosines >= min(FLOOR_SWEEP)]
    timing = {"candidates": int(len(pairs)), "candidate_recall": candidate_recall(pairs, data),
              "candidate_recall_phash_only": candidate_recall(
                  candidate_pairs(data["codes"], settings), data),
              "candidate_recall_by_edits": candidate_recall_by_group(pairs, data),
              "candidates_above_lowest_floor": int(len(floor_candidates)),
              "seconds_candidates": round(seconds_candidates, 2),
              "seconds_verify": round(seconds_verify, 2),
              "ms_per_verified_pair": round(1000 * seconds_verify / max(1, len(pairs)), 3)}
    return rows, timing


def _settings(texture: float, colour: float, floor: float, accept: float) -> CopySettings:
    return CopySettings(min_texture=texture, max_colour=colour, min_descriptor=floor,
                        accept_descriptor=accept)


def candidate_recall_by_group(pairs: np.ndarray, data: dict[str, Any]) -> dict[str, float]:
    found = set(map(tuple, np.sort(pairs[:, :2], axis=1).tolist()))
    hit = np.asarray([tuple(sorted(map(int, d))) in found for d in data["designed"]])
    groups = np.asarray(data["groups"])
    return {g: round(float(hit[groups == g].mean()), 4) for g in sorted(set(data["groups"]))}


def copies_at(data: dict[str, Any], settings: CopySettings) -> np.ndarray:
    keep = keep_copies(data["copy_scores"], data["copy_cosines"], settings)
    return data["copy_candidates"][keep]


def baselines(data: dict[str, Any], imagededup: Any) -> dict[str, list[dict[str, Any]]]:
    """phash (radius sweep), phash+colour (dE 12), embedding (cosine sweep) and imagededup's
    PHash (radius sweep) on one set: rows of (threshold, precision, recall, pairs)."""
    out: dict[str, list[dict[str, Any]]] = {"phash": [], "phash+colour": [], "embedding": [],
                                            "imagededup PHash": []}
    plain = hamming_pairs(data["codes"], 12)
    colour_ok = pair_colour_differences(data["colours"], plain) <= 12.0
    for radius in (4, 6, 8, 10, 12):
        for name, kept in (("phash", plain[plain[:, 2] <= radius]),
                           ("phash+colour", plain[(plain[:, 2] <= radius) & colour_ok])):
            out[name].append({"threshold": radius, **_brief(score(kept, data))})
    emb = data["embedding_pairs"]
    for cosine in (0.85, 0.9, 0.93, 0.95, 0.97):
        kept = emb[emb[:, 2] <= 1.0 - cosine + 1e-9] if len(emb) else emb
        out["embedding"].append({"threshold": cosine, **_brief(score(kept, data))})
    if imagededup is not None:
        hasher = imagededup(verbose=False)
        hashes = [hasher.encode_image(image_array=np.asarray(image)) for image in data["images"]]
        packed = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes),
                               dtype=np.uint8).reshape(-1, 8)
        theirs = data["imagededup_pairs"] = hamming_pairs(packed, 12)
        for radius in (4, 6, 8, 10, 12):
            out["imagededup PHash"].append(
                {"threshold": radius, **_brief(score(theirs[theirs[:, 2] <= radius], data))})
    return out


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("precision", "recall", "pairs")}


def ingest_timing(data: dict[str, Any], descriptor, settings: CopySettings, catalogue: int,
                  queries: int = 30) -> dict[str, Any]:
    """One incoming image checked against ``catalogue`` items: the set's fingerprints and
    copy descriptors repeated up to that size (so the hash and descriptor searches scan as many
    entries as a catalogue that large), timed per image: describe (both backbone views and the
    head), then fingerprint + candidates + verification (the matcher)."""
    from lookalike.catalogue.copies import CopyMatcher
    from lookalike.catalogue.fingerprints import Fingerprints, fingerprint

    n = len(data["images"])
    reps = -(-catalogue // n)
    take = np.tile(np.arange(n), reps)[:catalogue]
    prints = Fingerprints([str(r) for r in range(catalogue)], data["codes"][take],
                          data["colours"][take], data["thumbs"][take])
    matcher = CopyMatcher(prints, settings, descriptors=data["descriptors"][take],
                          describe=descriptor.embed_one)
    rng = np.random.default_rng(0)
    import faiss

    faiss.omp_set_num_threads(1)  # one query: threads would only wait for each other
    times: dict[str, list[float]] = {"describe": [], "match": [], "total": []}
    cpu: dict[str, list[float]] = {key: [] for key in times}
    for row in rng.choice(data["n_catalogue"], size=queries, replace=False):
        image = edit_copy(data["images"][row], random_edits(rng, 4))
        t0, c0 = time.perf_counter(), time.process_time()
        vector = matcher.descriptor_of(image)
        t1, c1 = time.perf_counter(), time.process_time()
        matcher.find_fingerprint(fingerprint(image), descriptor=vector)
        t2, c2 = time.perf_counter(), time.process_time()
        for key, value, spent in (("describe", t1 - t0, c1 - c0), ("match", t2 - t1, c2 - c1),
                                  ("total", t2 - t0, c2 - c0)):
            times[key].append(1000 * value)
            cpu[key].append(1000 * spent)
    return {"catalogue": catalogue, "queries": queries, "faiss_threads": 1,
            "descriptor": descriptor.embedder_id,
            **{f"{k}_ms_median": round(float(np.median(v)), 2) for k, v in times.items()},
            "total_ms_p90": round(float(np.percentile(times["total"], 90)), 2),
            "cpu_ms_median": {k: round(float(np.median(v)), 2) for k, v in cpu.items()},
            "cpu_note": "process CPU time per image (all threads): what the check costs "
                        "when the machine is shared"}


def run(frame, embedder, descriptor, imagededup: Any, *, quick: bool, seed: int, threads: int,
        catalogue_size: int = 44072, cache: Any = None) -> dict[str, Any]:
    """The whole comparison; returns the results payload (see the module docstring)."""
    n_catalogue, n_copies = (1500, 400) if quick else (100_000, 2000)
    settings = CopySettings()
    seeds = {"validation": seed + 101, "test": seed + 202}
    val = prepare(build_set(frame, "train", n_catalogue, n_copies, seeds["validation"]),
                  embedder, threads, cache, descriptor)
    # quick: a 1,500-product test-split catalogue; full: the whole catalogue (both splits,
    # 44,072 products) with copies of test-split products only (never seen on validation)
    test_split, copy_split = ("test", None) if quick else ("all", "test")
    log(f"validation set: {len(val['images'])} images prepared")
    sweep, val_timing = sweep_copies(val, settings)
    best = choose_copies(sweep)
    val_base = baselines(val, imagededup)
    chosen_base = {name: choose(rows)["threshold"] for name, rows in val_base.items() if rows}
    chosen = _settings(best["min_texture"], best["max_colour"], best["min_descriptor"],
                       best["accept_descriptor"])
    log(f"chosen on validation: {chosen}; baselines {chosen_base}")
    for key in ("images", "thumbs", "index", "vectors", "copy_scores", "copy_candidates",
                "copy_cosines", "descriptors", "embedding_pairs", "imagededup_pairs"):
        val.pop(key, None)  # the test set needs the memory
    test = prepare(build_set(frame, test_split, n_catalogue, n_copies, seeds["test"],
                             copy_split), embedder, threads, cache, descriptor)
    log(f"test set: {len(test['images'])} images prepared")
    _, test_timing = sweep_copies(test, settings)
    test_copies = score(copies_at(test, chosen), test)
    test_base = {name: next(r for r in rows if r["threshold"] == chosen_base[name])
                 for name, rows in baselines(test, imagededup).items() if rows}
    at_defaults = score(copies_at(test, settings), test)
    log("test set read once with the validation choices")
    timing = ingest_timing(test, descriptor, chosen, catalogue_size)
    return {
        "sets": {name: {"split": data["split"], "copies_of": data["copy_split"],
                        "seed": data["seed"],
                        "catalogue": data["n_catalogue"], "copies": len(data["designed"]),
                        "seconds_fingerprints": round(data["seconds_fingerprints"], 2),
                        "images_embedded": data["embedded"],
                        "seconds_embed": round(data["seconds_embed"], 2),
                        "seconds_describe": round(data["seconds_describe"], 2)}
                 for name, data in (("validation", val), ("test", test))},
        "edits": {"kinds": list(EDIT_KINDS), "counts": list(EDIT_COUNTS)},
        "candidate_settings": {"neighbours": settings.neighbours,
                               "min_cosine": settings.min_cosine,
                               "phash_neighbours": settings.phash_neighbours,
                               "phash_radius": settings.phash_radius},
        "chosen_on": "validation",
        "chosen": {"copies": {"min_texture": best["min_texture"],
                              "max_colour": best["max_colour"],
                              "min_descriptor": best["min_descriptor"],
                              "accept_descriptor": best["accept_descriptor"],
                              "criterion": f"most recall at copy precision >= "
                                           f"{MIN_COPY_PRECISION}"},
                   **{name: {"threshold": t, "criterion": "F1"}
                      for name, t in chosen_base.items()}},
        "validation": {"copies_sweep": sweep, "baselines": val_base, "timing": val_timing},
        "test": {"copies": test_copies, "copies_at_library_defaults": at_defaults,
                 "baselines": {name: {**row, **score(_pairs_of(test, name, row), test)}
                               for name, row in test_base.items()},
                 "timing": test_timing},
        "ingest_check": timing,
    }


def run_ingest_check(frame, embedder, descriptor, *, seed: int, catalogue_size: int = 44072,
                     cache: Any = None) -> dict[str, Any]:
    """Only the one-image check of :func:`ingest_timing`, on the quick test set."""
    test = prepare(build_set(frame, "test", 1500, 400, seed + 202), embedder, 1, cache,
                   descriptor)
    return {"set": {"split": "test", "seed": seed + 202, "catalogue": test["n_catalogue"]},
            "settings": vars(CopySettings()),
            "ingest_check": ingest_timing(test, descriptor, CopySettings(), catalogue_size)}


def _pairs_of(data: dict[str, Any], name: str, row: dict[str, Any]) -> np.ndarray:
    """The pairs a baseline reports at ``row``'s threshold (for its per-group scores)."""
    t = row["threshold"]
    if name == "embedding":
        emb = data["embedding_pairs"]
        return emb[emb[:, 2] <= 1.0 - t + 1e-9] if len(emb) else emb
    if name == "imagededup PHash":
        return data["imagededup_pairs"][data["imagededup_pairs"][:, 2] <= t]
    plain = hamming_pairs(data["codes"], int(t))
    if name == "phash+colour":
        plain = plain[pair_colour_differences(data["colours"], plain) <= 12.0]
    return plain
