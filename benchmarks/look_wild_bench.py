"""Shop the look on scenes it was not tuned on: held-out backgrounds and products.

Scenes come from :mod:`lookalike.recommend.scene_generator` (a wide distribution of backgrounds,
product sizes, rotations, colour casts, blur, JPEG quality, occlusion; cut-outs and pasted
photos). Backgrounds and products are split three ways (train / validation / test, by a seeded
hash of their ids; ``benchmarks/results/look_scene_splits.json``); the segmenter, the look
head and the look ranker were trained on train scenes only (``scripts/train_scene_segmenter.py``,
``scripts/train_look_head.py``, ``scripts/train_look_ranker.py``). Stages:

    # choices (localiser, head, ranker, segmenter side, weights) on validation scenes
    nice -n 19 python benchmarks/look_wild_bench.py --stage validation --scenes 200
    # the chosen pipeline (look's defaults) on test scenes, read once
    nice -n 19 python benchmarks/look_wild_bench.py --stage test --scenes 200
    # warm `look` time per 640x480 scene (normal priority, a short run)
    python benchmarks/look_wild_bench.py --stage speed

Hit = the top region overlaps the asked product's box by IoU >= 0.5, per mode (all products cut
out / all pasted), with a 95 % Wilson interval. Product-likeness (no ``like``, no history):
recall of the scene's products among the top 5 regions.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, print_table, write_results  # noqa: E402

from lookalike.recommend.scene_generator import EVALUATION_SPEC, SceneGenerator  # noqa: E402
from lookalike.recommend.windows import box_iou  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache" / "look_wild"
INDEX_EMBEDDER = "efficientnet-lite0"
GALLERY = 600
#: Pipeline variants compared on validation (look() keyword arguments).
_WITHOUT_HEAD: dict[str, dict[str, Any]] = {
    "windows (old default)": {"localiser": "windows", "category_weight": 0.0},
    "segmenter": {"localiser": "segmenter", "proposal_steps": 0, "objectness_weight": 0.0,
                  "category_weight": 0.0},
    "segmenter + 1 box step": {"localiser": "segmenter", "proposal_steps": 1,
                               "objectness_weight": 0.0, "category_weight": 0.0},
    "segmenter + objectness 0.2": {"localiser": "segmenter", "proposal_steps": 0,
                                   "objectness_weight": 0.2, "category_weight": 0.0},
    **{f"segmenter + category vote {w:g}": {"localiser": "segmenter", "proposal_steps": 0,
                                            "objectness_weight": 0.0, "category_weight": w}
       for w in (0.5, 1.0, 2.0)},
    **{f"segmenter + category vote {w:g} + white backdrop": {
        "localiser": "segmenter", "proposal_steps": 0, "objectness_weight": 0.0,
        "category_weight": w, "backdrop": "white"} for w in (1.0, 2.0)},
    "segmenter + category vote 1 + objectness 0.2": {
        "localiser": "segmenter", "proposal_steps": 0, "objectness_weight": 0.2,
        "category_weight": 1.0},
}
VARIANTS = {label: {**options, "look_head": False, "segmenter_side": None, "look_ranker": False}
            for label, options in _WITHOUT_HEAD.items()}


def _headed(side: int | None, vote: float, objectness: float) -> tuple[str, dict[str, Any]]:
    """A variant with the look head (lookalike.recommend.look_head, trained on train scenes
    only), the segmenter reading the scene at ``side`` px (None: its training side, 256)."""
    label = f"segmenter{'' if side is None else f' at {side} px'} + look head + category vote " \
            f"{vote:g}{f' + objectness {objectness:g}' if objectness else ''}"
    return label, {"localiser": "segmenter", "proposal_steps": 0, "objectness_weight": objectness,
                   "category_weight": vote, "look_head": True, "segmenter_side": side,
                   "look_ranker": False}


VARIANTS.update(_headed(None, w, 0.0) for w in (0.0, 0.5, 1.0, 2.0))
VARIANTS.update(_headed(None, w, 0.3) for w in (0.5, 1.0))
VARIANTS.update(_headed(320, w, o) for w in (0.5, 1.0) for o in (0.0, 0.3))
VARIANTS.update([_headed(384, 0.5, 0.3), _headed(384, 0.5, 0.5), _headed(448, 0.5, 0.3),
                 _headed(384, 0.5, 0.8), _headed(384, 1.0, 0.5), _headed(320, 0.5, 0.5),
                 _headed(384, 0.0, 0.5)])
#: The look ranker (lookalike.recommend.look_ranker, fitted on train scenes only) instead of the
#: hand-set sum; two rows, measured with the packaged ranker without its kind classifier (weights
#: 3c960bc549) and with it (benchmarks/RESULTS.md, round 5).
VARIANTS.update({f"segmenter at 384 px + look head + {name}": {
    "localiser": "segmenter", "proposal_steps": 0, "look_head": True, "segmenter_side": 384,
    "look_ranker": True} for name in ("look ranker", "look ranker + kind classifier")})
LIKENESS_VARIANTS = {"windows (old default)": {"localiser": "windows"},
                     "segmenter": {"localiser": "segmenter", "segmenter_side": None},
                     "segmenter at 320 px": {"localiser": "segmenter", "segmenter_side": 320},
                     "segmenter at 384 px": {"localiser": "segmenter", "segmenter_side": 384}}
SEEDS = {"validation": 101, "test": 202}


def wilson(hits: int, n: int) -> list[float]:
    """The 95 % Wilson score interval of a proportion (scipy's)."""
    from scipy.stats import binomtest

    interval = binomtest(hits, n).proportion_ci(0.95, method="wilson") if n else None
    return [0.0, 1.0] if interval is None else [round(float(interval.low), 4), round(float(interval.high), 4)]


def make_scenes(frame: Any, split: str, n: int, n_likeness: int,
                modes: tuple[str, ...] = ("cutout", "pasted", "likeness")
                ) -> dict[str, list[Any]]:
    """``n`` like-scenes per mode (cut-out, pasted) and ``n_likeness`` mixed scenes of 3-5
    products, all of ``split``; seeded (each set by its own seed, so a subset is the same)."""
    generator = SceneGenerator(frame, split, EVALUATION_SPEC)
    out: dict[str, list[Any]] = {"cutout": [], "pasted": [], "likeness": []}
    for mode, cutout in [(m, m == "cutout") for m in ("cutout", "pasted") if m in modes]:
        rng = np.random.default_rng([SEEDS[split], int(cutout)])
        out[mode] = [generator.like_scene(rng, cutout=cutout) for _ in range(n)]
    if "likeness" in modes:
        rng = np.random.default_rng([SEEDS[split], 7])
        likeness = SceneGenerator(frame, split,
                                  dataclasses.replace(EVALUATION_SPEC, products=(3, 5)))
        out["likeness"] = [(likeness.scene(rng), None) for _ in range(n_likeness)]
    return out


def build_project(frame: Any, like_ids: set[str], folder: Path | None = None) -> Any:
    """A project whose index holds every ``like`` product and a gallery of train products
    (``folder``: an existing one, e.g. built by an earlier run with every mode)."""
    import pandas as pd

    from lookalike.project import Project

    if folder is not None:
        return Project(folder, create=False, read_only=True)

    train = frame[frame["split"] == "train"]
    gallery = set(train["id"].sample(GALLERY, random_state=0))
    rows = frame[frame["id"].isin(like_ids | gallery)].sort_values("id")
    digest = hashlib.sha256(",".join(rows["id"]).encode()).hexdigest()[:10]
    folder = CACHE / f"project-{len(rows)}-{digest}"
    project = Project(folder)
    if project.default_index_name() is None:
        manifest = CACHE / "manifest.parquet"
        CACHE.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"id": rows["id"], "image": rows["image_jpeg"], "title": rows["title"],
                      "category": rows["article_type"], "gender": rows["gender"],
                      "colour": rows["base_colour"], "split": rows["split"]}
                     ).to_parquet(manifest)
        project.ingest(manifest, progress=False)
        project.index(INDEX_EMBEDDER, progress=False)
    return project


def look_defaults() -> dict[str, Any]:
    """``look``'s defaults that the variants vary, and the packaged models' digests."""
    from lookalike.models.weights import weights_digest
    from lookalike.recommend import look as look_module
    from lookalike.recommend.look_head import PACKAGED as HEAD, WEIGHTS_FILE as HEAD_WEIGHTS
    from lookalike.recommend.look_ranker import PACKAGED as RANKER

    head = HEAD / HEAD_WEIGHTS
    return {"look_ranker": look_module.USE_LOOK_RANKER,
            "look_ranker_weights": weights_digest(RANKER),
            "localiser": look_module.DEFAULT_LOCALISER,
            "proposal_steps": look_module.PROPOSAL_STEPS,
            "objectness_weight": look_module.OBJECTNESS_WEIGHT,
            "category_weight": look_module.CATEGORY_WEIGHT,
            "look_head": look_module.USE_LOOK_HEAD,
            "segmenter_side": look_module.SEGMENTER_SIDE,
            "look_head_weights": hashlib.sha256(head.read_bytes()).hexdigest()[:10]
            if head.is_file() else "none"}


def checkpoint_suffix(options: dict[str, Any]) -> str:
    """What a checkpoint key adds for the look head (its weights), a segmenter side other than
    the training one, and -- for look's defaults (the test stage) -- every default: a change of
    any of them starts new checkpoints."""
    from lookalike.recommend.look import SEGMENTER_SIDE, USE_LOOK_HEAD

    defaults = look_defaults()
    out = f"/head:{defaults['look_head_weights']}" if options.get("look_head", USE_LOOK_HEAD) \
        else ""
    out += f"/ranker:{defaults['look_ranker_weights']}" if options.get("look_ranker") else ""
    side = options.get("segmenter_side", SEGMENTER_SIDE)
    out += f"/side:{side}" if side is not None else ""
    if not options:
        out += "/defaults:" + hashlib.sha256(json.dumps(defaults, sort_keys=True).encode()
                                             ).hexdigest()[:8]
    return out


def segmenter_digest() -> str:
    """The first 10 hex digits of the packaged segmenter's weights (checkpoints are per model)."""
    from lookalike.recommend.segmenter import PACKAGED, WEIGHTS_FILE

    path = PACKAGED / WEIGHTS_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10] if path.is_file() else "none"


class PerScene:
    """Per-scene records of one (stage, variant, mode, packaged segmenter) in a JSONL
    checkpoint: a rerun skips the scenes already measured, and a summary can be written at any
    time."""

    def __init__(self, key: str) -> None:
        key = f"{key}/{segmenter_digest()}"
        self.path = CACHE / "checkpoints" / (hashlib.sha256(key.encode()).hexdigest()[:16]
                                             + ".jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines()] \
            if self.path.is_file() else []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def summarise_like(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    hits = int(sum(r["iou"] >= 0.5 for r in rows))
    done = max(len(rows), 1)
    return {"n": len(rows), "planned": n, "hits": hits, "hit_rate": round(hits / done, 4),
            "interval95": wilson(hits, len(rows)),
            "mean_iou": round(float(np.mean([r["iou"] for r in rows] or [0])), 4),
            "hit_in_top5": round(float(np.mean([r["top5"] for r in rows] or [0])), 4),
            "seconds_per_scene": round(statistics.median([r["s"] for r in rows] or [0]), 3)}


def run_like(project: Any, scenes: list[Any], options: dict[str, Any], key: str,
             report: Any) -> dict[str, Any]:
    done = PerScene(key)
    for scene, like in scenes[len(done.rows):]:
        started = time.perf_counter()
        found = project.look(scene.image, like=like, k=1, **options)
        seconds = time.perf_counter() - started
        boxes = np.array([r["box"] for r in found["regions"]]).reshape(-1, 4)
        truth = np.array(scene.target.box)
        done.add({"iou": float(box_iou(truth, boxes[:1])[0]) if len(boxes) else 0.0,
                  "top5": bool(len(boxes) and box_iou(truth, boxes).max() >= 0.5),
                  "s": seconds})
        if len(done.rows) % 10 == 0:
            report(summarise_like(done.rows, len(scenes)))
    return summarise_like(done.rows, len(scenes))


def summarise_likeness(rows: list[dict[str, Any]], n: int) -> dict[str, Any]:
    found, total = sum(r["found"] for r in rows), sum(r["products"] for r in rows)
    return {"scenes": len(rows), "planned": n, "products": total, "found": found,
            "recall_at_5": round(found / max(total, 1), 4), "interval95": wilson(found, total)}


def run_likeness(project: Any, scenes: list[Any], options: dict[str, Any], key: str,
                 report: Any) -> dict[str, Any]:
    done = PerScene(key)
    for scene, _ in scenes[len(done.rows):]:
        found = project.look(scene.image, k=1, top_regions=5, **options)
        boxes = np.array([r["box"] for r in found["regions"]]).reshape(-1, 4)
        done.add({"products": len(scene.products),
                  "found": int(sum(bool(len(boxes)) and box_iou(np.array(p.box), boxes).max()
                                   >= 0.5 for p in scene.products))})
        if len(done.rows) % 10 == 0:
            report(summarise_likeness(done.rows, len(scenes)))
    return summarise_likeness(done.rows, len(scenes))


def stage_quality(frame: Any, split: str, n: int, n_likeness: int,
                  variants: dict[str, dict[str, Any]],
                  likeness_variants: dict[str, dict[str, Any]], modes: list[str],
                  save: Any, folder: Path | None = None) -> dict[str, Any]:
    """Every variant on ``split``'s scenes; ``save(out)`` after each (variant, mode), so a run
    split over several commands (``--modes``, ``--variants``) adds up."""
    scenes = make_scenes(frame, split, n, n_likeness, tuple(modes) if folder else
                         ("cutout", "pasted", "likeness"))
    like_ids = {like for mode in ("cutout", "pasted") for _, like in scenes[mode]}
    project = build_project(frame, like_ids, folder)
    out: dict[str, Any] = {"like": {}, "likeness": {}}
    for label, options in variants.items():
        for mode in [m for m in ("cutout", "pasted") if m in modes]:
            def report(summary: dict[str, Any], label: str = label, mode: str = mode) -> None:
                out["like"].setdefault(label, {})[mode] = summary
                print(label, mode, summary, flush=True)
                save(out)

            report(run_like(project, scenes[mode], options,
                            f"{split}/{n}/{label}/{mode}{checkpoint_suffix(options)}", report))
    if "likeness" in modes:
        for label, options in likeness_variants.items():
            def report_likeness(summary: dict[str, Any], label: str = label) -> None:
                out["likeness"][label] = summary
                print(label, summary, flush=True)
                save(out)

            report_likeness(run_likeness(project, scenes["likeness"], options,
                                         f"{split}/{n_likeness}/{label}/likeness"
                                         f"{checkpoint_suffix(options)}",
                                         report_likeness))
    return out


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merged, ``new`` winning."""
    merged = dict(old)
    for key, value in new.items():
        merged[key] = merge(old[key], value) if isinstance(value, dict) and \
            isinstance(old.get(key), dict) else value
    return merged


def stage_speed(frame: Any, repeats: int, n: int, folder: Path | None) -> dict[str, Any]:
    """Warm ``Project.look`` time on ``repeats`` test scenes (the test stage's project)."""
    scenes = make_scenes(frame, "test", repeats if folder else n, 0, ("cutout", "pasted"))
    project = build_project(frame, {like for m in ("cutout", "pasted") for _, like in scenes[m]},
                            folder)
    pairs = scenes["cutout"][: repeats // 2] + scenes["pasted"][: repeats - repeats // 2]
    project.look(pairs[0][0].image, like=pairs[0][1])  # warm: models, sessions, caches
    seconds = []
    for scene, like in pairs:
        started = time.perf_counter()
        project.look(scene.image, like=like)
        seconds.append(time.perf_counter() - started)
    return {"scenes": len(pairs), "median_s": round(statistics.median(seconds), 3),
            "p90_s": round(float(np.percentile(seconds, 90)), 3),
            "max_s": round(max(seconds), 3), "size": [640, 480]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", choices=("validation", "test", "speed"), required=True)
    parser.add_argument("--scenes", type=int, default=200, help="like-scenes per mode")
    parser.add_argument("--likeness-scenes", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="20 scenes per mode")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--project", type=Path, default=None,
                        help="an existing project holding every like product (parallel runs)")
    parser.add_argument("--modes", default="cutout,pasted,likeness",
                        help="which scene sets to run (results merge into the stage's JSON)")
    parser.add_argument("--variants", default="",
                        help="validation: only the variants whose label contains one of these "
                             "comma-separated words, or is '=label' (results merge into the "
                             "stage's JSON)")
    args = parser.parse_args()
    import torch

    from lookalike.catalogue.sources import load_products_frame
    from lookalike.recommend.scene_backgrounds import split_manifest
    from lookalike.recommend.scene_generator import product_split

    torch.set_num_threads(args.threads)
    frame = load_products_frame()
    for column in ("gender", "usage", "article_type", "base_colour", "title"):
        frame[column] = frame[column].fillna("").astype(str)
    n = 20 if args.quick else args.scenes
    manifest = split_manifest()
    manifest["products"] = {s: int(sum(product_split(i, c) == s for i, c in
                                       zip(frame["id"], frame["split"])))
                            for s in ("train", "validation", "test")}
    (RESULTS / "look_scene_splits.json").write_text(json.dumps(manifest, indent=1))
    payload: dict[str, Any] = {"stage": args.stage, "spec": EVALUATION_SPEC.to_json(),
                               "scenes": 20 if args.quick else args.scenes,
                               "index_embedder": INDEX_EMBEDDER, "threads": args.threads,
                               "splits": "benchmarks/results/look_scene_splits.json"}
    suffix = "-quick" if args.quick else ""
    if args.stage == "speed":
        payload["warm_look"] = stage_speed(frame, 12, n, args.project)
        payload["defaults"] = look_defaults()
        payload["segmenter_weights"] = segmenter_digest()
        print(payload["warm_look"])
        name = f"look_wild_speed{suffix}"
    else:
        words = [w.strip() for w in args.variants.split(",") if w.strip()]
        pick = lambda table: {k: v for k, v in table.items()  # noqa: E731 ("=label": exact)
                              if not words or any(k == w[1:] if w.startswith("=") else w in k
                                                  for w in words)}
        if args.stage == "validation":
            variants, likeness = pick(VARIANTS), pick(LIKENESS_VARIANTS)
        else:  # test: look's defaults only (the pipeline chosen on validation)
            variants = likeness = {"default (segmenter)": {}}
        payload["defaults"] = look_defaults()
        payload["segmenter_weights"] = segmenter_digest()
        name = f"look_wild_{'validation' if args.stage == 'validation' else 'bench'}{suffix}"
        earlier = RESULTS / f"{name}.json"

        def save(out: dict[str, Any]) -> None:  # re-read: parallel runs add up
            old = json.loads(earlier.read_text()) if earlier.is_file() else {}
            same = old.get("scenes") == n and \
                old.get("segmenter_weights") == payload["segmenter_weights"]
            payload["results"] = merge(old.get("results", {}) if same else {}, out)
            write_results(name, payload, quick=args.quick,
                          seeds=[SEEDS["validation"], SEEDS["test"], 0])

        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        stage_quality(frame, args.stage, n, args.likeness_scenes, variants, likeness, modes,
                      save, args.project)
        rows = [{"variant": label, **{f"{m} hit": r[m]["hit_rate"] for m in r},
                 **{f"{m} 95%": r[m]["interval95"] for m in r}}
                for label, r in payload.get("results", {}).get("like", {}).items()]
        print_table(f"{args.stage}: top region IoU >= 0.5 ({n} scenes per mode)", rows)
    out = write_results(name, payload, quick=args.quick,
                        seeds=[SEEDS["validation"], SEEDS["test"], 0])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
