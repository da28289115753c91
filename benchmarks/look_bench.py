"""Shop the look: speed of the windowed features, and region hit rates on scenes with known truth.

**Speed.** One 640 x 480 scene, square windows of 20, 30, ..., 100 px at a 5 px stride (89,745
windows). "Fast" is the library path: features computed once per scene and pooled per window
(integral histograms, integral orientation / Gabor maps, one CNN pass with pooling per window),
every window scored and NMS applied (``fast_cpu_s`` is the CPU time of the same work: on a busy
machine it is closer to the unloaded wall time; the CNN runs 2 threads so its CPU time is about
twice its wall time); ``cascade_s`` is the extra time of re-scoring the 50 best windows from
their crops, ``boxes_s`` what the box regressor adds to that (one step over the shortlist, two
over the regions). "Naive" crops every window and embeds the crop; it is
timed on a random sample of windows in the same run and scaled to all windows (the full loop
would take minutes to hours). The agreement column is the correlation of fast and naive
window scores on that sample.

**Quality** (paper 000's Table 3 / Fig. 7). Scenes from :mod:`lookalike.recommend.scenes`: real
test-split product photos (longer side 40-160 px) pasted onto scikit-image's sample photos,
five per scene (with ``--cutout``, the products without their white backdrop, each box the
object's own). Two ways to say what the shopper wants:

- ``like``: one train-split photo of the target's article type and colour (not the target);
  windows are ranked by cosine similarity to it;
- ``history-*``: a simulated taste (gender, usage, 1-3 article types, colour family); the
  shopper viewed 10 train photos of it; the windows are ranked by the centroid of those photos
  (``history-centroid``) or by the latent SVM (``history-latent-svm``: MI-SVM over the photos'
  windows against 60 negative photos and 500 windows of the scene, as ``look`` does; measured
  with PHOG+colour and the CNN only, as it fits several SVMs per scene). The target is the one
  product of the scene matching the taste.

A scene is a hit when the best region overlaps the target's box with IoU >= 0.5. Rows: each
window size alone (Table 3's columns), all sizes 20-100 together, all sizes with the cascade
(the 50 best windows re-scored from their crops with the same features), and all sizes with the
CNN checking the crops of a handcrafted pass; the last two also ``+boxes``, with the learned
box regressor shipped in the package (:mod:`lookalike.recommend.box_regression`, trained on
scenes of *train*-split photos) moving the windows onto the products, as ``look`` does by
default. Windows are either paper 000's squares or 3:4 like the catalogue photos. Columns: PHOG+colour, PHOG+GIST, colour+GIST, CNN
(EfficientNet-Lite0) and PHOG+colour+GIST.

    python benchmarks/look_bench.py                # 40 scenes per mode (about an hour)
    python benchmarks/look_bench.py --quick        # 12 scenes per mode, speed on one scene
    python benchmarks/look_bench.py --features phog+hsv-histogram --modes like
    python benchmarks/look_bench.py --cutout --skip-speed --scenes 30   # products without backdrop

Writes ``benchmarks/results/look_bench[-quick].{json,md}`` and ``look_bench[-quick]-*.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, peak_rss_mb, print_table, write_results  # noqa: E402

from lookalike.caches import ProjectCaches  # noqa: E402
from lookalike.evaluate.report import markdown_table, plot_lines  # noqa: E402
from lookalike.models.base import create  # noqa: E402
from lookalike.recommend.box_regression import packaged_box_regressor  # noqa: E402
from lookalike.recommend.personal import fit_latent_svm, image_instances  # noqa: E402
from lookalike.recommend.regions import (  # noqa: E402
    DEFAULT_WINDOWS,
    CropWindows,
    box_iou,
    nms,
    prepare_scene,
    rerank_windows,
    score_windows,
    window_grids,
    windowed_features,
)
from lookalike.recommend.scenes import (  # noqa: E402
    BACKGROUNDS,
    compose_scene,
    decode_jpeg,
    draw_taste,
    like_scene,
)

FEATURES = {"PHOG+colour": "phog+hsv-histogram", "PHOG+GIST": "phog+gist",
            "colour+GIST": "hsv-histogram+gist", "CNN": "efficientnet-lite0",
            "PHOG+colour+GIST": "phog+hsv-histogram+gist"}
ASPECTS = {"square": 1.0, "3:4": 4 / 3}
CNN = "efficientnet-lite0"
STRIDE = 5
RERANK = 50
CHECKPOINTS = Path(__file__).resolve().parent / ".cache" / "checkpoints"
#: The box regressor shipped with the package (what ``look`` uses): the ``+boxes`` rows.
BOXES = packaged_box_regressor()


# ---- speed ----------------------------------------------------------------------------------------
def speed(frame, features: dict[str, str], naive_sample: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    scene, like = like_scene(frame, rng)
    prepared = prepare_scene(scene.image)
    rows = []
    for label, name in features.items():
        embedder = create(name)
        query = embedder.embed([decode_jpeg(frame.set_index("id").at[like, "image_jpeg"])])[0]
        # Load weights / build networks and filter banks before timing, as a running service
        # has them: the warm-up scene is the same size (the mirrored scene), so GIST's filter
        # bank for that FFT shape is cached, as it is after a service's first such scene.
        embedder.embed([scene.image.crop((0, 0, 64, 64))])
        warm = np.ascontiguousarray(prepared.pixels[:, ::-1])
        caches = ProjectCaches()  # what a service's project keeps between scenes
        windowed_features(embedder, warm, block=STRIDE, caches=caches).for_grid(
            window_grids(120, 160, (20,), STRIDE)[0])
        grids = window_grids(prepared.height, prepared.width, DEFAULT_WINDOWS, STRIDE)
        started, cpu = time.perf_counter(), time.process_time()
        fast = windowed_features(embedder, prepared.pixels, block=STRIDE, caches=caches)
        boxes, scores = score_windows(fast, grids, lambda v: v @ query)
        nms(boxes, scores, 0.3, max_keep=5)
        fast_seconds = time.perf_counter() - started
        fast_cpu = time.process_time() - cpu
        started = time.perf_counter()
        rerank_windows(boxes, scores, prepared.pixels, embedder, lambda v: v @ query,
                       rerank=RERANK, top_regions=5)
        cascade_seconds = time.perf_counter() - started
        started = time.perf_counter()
        rerank_windows(boxes, scores, prepared.pixels, embedder, lambda v: v @ query,
                       rerank=RERANK, top_regions=5, box_regressor=BOXES)
        boxes_seconds = time.perf_counter() - started - cascade_seconds
        sample = rng.choice(len(boxes), size=min(naive_sample, len(boxes)), replace=False)
        crops = CropWindows(embedder, prepared.pixels)
        started = time.perf_counter()
        naive_scores = crops.for_boxes(boxes[sample]) @ query
        per_window = (time.perf_counter() - started) / len(sample)
        naive_seconds = per_window * len(boxes)
        rows.append({"features": label, "embedder": name, "windows": int(len(boxes)),
                     "fast_s": fast_seconds, "fast_cpu_s": fast_cpu,
                     "cascade_s (+50 crops)": cascade_seconds,
                     "boxes_s (+regressor)": boxes_seconds,
                     "naive_s (scaled)": naive_seconds,
                     "naive_sample": int(len(sample)), "speed_up": naive_seconds / fast_seconds,
                     "target_s": 2.0 if name == CNN else 1.0,
                     "meets_target": bool(fast_seconds < (2.0 if name == CNN else 1.0)),
                     "agreement_r": float(np.corrcoef(scores[sample], naive_scores)[0, 1])})
        print(f"  {label}: fast {fast_seconds:.2f} s, naive ~{naive_seconds:.0f} s "
              f"({rows[-1]['speed_up']:.0f}x)")
    return rows


# ---- scenes -------------------------------------------------------------------------------------
def history_scene(frame, rng: np.random.Generator, history: int = 10,
                  distractors: int = 4, cutout: bool = False) -> tuple[Any, list[str]]:
    """A taste, the train photos the shopper viewed, and a scene with one matching test product."""
    taste = draw_taste(frame, rng, min_items=history + 5, min_test_items=1)
    matches = taste.matches(frame)
    train = (frame["split"] == "train").to_numpy()
    test = ~train
    viewed = rng.choice(frame["id"].to_numpy()[matches & train], size=history, replace=False)
    target = frame[matches & test].iloc[int(rng.integers((matches & test).sum()))]
    others = frame[test & ~matches & ~frame["article_type"].isin(taste.article_types).to_numpy()]
    chosen = others.iloc[rng.choice(len(others), size=distractors, replace=False)]
    products = [(target["id"], decode_jpeg(target["image_jpeg"]), "target")]
    products += [(r["id"], decode_jpeg(r["image_jpeg"]), "distractor")
                 for _, r in chosen.iterrows()]
    order = rng.permutation(len(products))
    scene = compose_scene(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
                          [products[i] for i in order], rng, cutout=cutout)
    scene.info = {"taste": taste.to_json()}
    return scene, [str(i) for i in viewed]


SCENE_NEGATIVES = 500
_BAGS: dict[tuple[str, str], np.ndarray] = {}
#: Feature sets the (slow: several SVM fits per scene) latent-SVM mode is measured with.
LATENT_FEATURES = ("PHOG+colour", "CNN")


def scorer_for(mode: str, embedder, frame_by_id, ask: Any, negatives: list[str],
               scene_windows=None):
    """The window scorer of one query: similarity to the liked photo, the centroid of the
    history, or the latent SVM (history photos vs negative photos and ``scene_windows()``, a
    sample of the scene's windows, as in ``look``)."""
    if mode == "like":
        query = embedder.embed([decode_jpeg(frame_by_id.at[ask, "image_jpeg"])])[0]
        return lambda v: v @ query
    photos = {i: decode_jpeg(frame_by_id.at[i, "image_jpeg"]) for i in ask}
    if mode == "history-centroid":
        centre = embedder.embed(list(photos.values())).mean(axis=0)
        centre /= np.linalg.norm(centre)
        return lambda v: v @ centre
    bags = {}
    for i in [*ask, *negatives]:  # photos' bags are reused across aspects and scenes
        key = (embedder.embedder_id, i)
        if key not in _BAGS:
            _BAGS[key] = image_instances(embedder, decode_jpeg(frame_by_id.at[i, "image_jpeg"]))
        bags[i] = _BAGS[key]
    extra = [scene_windows()] if scene_windows is not None else []
    model = fit_latent_svm([bags[i] for i in ask],
                           np.concatenate([bags[i] for i in negatives] + extra))
    return model.score


def evaluate_scene(scene, embedder, make_scorer, make_checker=None) -> dict[str, float]:
    """IoU of the best window per (aspect, size), for all sizes, with the cascade (the best
    windows re-scored from their crops), and with the CNN checking a handcrafted pass.

    ``make_scorer(scene_windows)`` builds the scorer (``scene_windows()`` describes a sample of
    the scene's windows); ``make_checker(pixels, boxes)`` the CNN's (embedder, scorer)."""
    prepared = prepare_scene(scene.image)
    target = np.array(scene.target.box)
    fast = windowed_features(embedder, prepared.pixels, block=STRIDE)
    out: dict[str, float] = {}
    for aspect_name, aspect in ASPECTS.items():
        grids = window_grids(prepared.height, prepared.width, DEFAULT_WINDOWS, STRIDE, aspect)
        every = np.concatenate([g.boxes() for g in grids])
        sample = every[np.random.default_rng(0).choice(len(every), SCENE_NEGATIVES, False)]
        scorer = make_scorer(lambda: fast.for_boxes(sample))
        boxes, scores = score_windows(fast, grids, scorer)
        sizes = boxes[:, 2] - boxes[:, 0]
        for size in DEFAULT_WINDOWS:
            rows = np.flatnonzero(sizes == size)
            if len(rows):
                out[f"{aspect_name}/{size}"] = float(box_iou(target, boxes[rows[np.argmax(
                    scores[rows])]])[0])
        out[f"{aspect_name}/all"] = float(box_iou(target, boxes[int(np.argmax(scores))])[0])
        for suffix, regressor in (("", None), ("+boxes", BOXES)):
            best = rerank_windows(boxes, scores, prepared.pixels, embedder, scorer,
                                  rerank=RERANK, top_regions=1, box_regressor=regressor)[0]
            out[f"{aspect_name}/all+cascade{suffix}"] = float(box_iou(target, best.box)[0])
        if make_checker is not None:
            checker = make_checker(prepared.pixels, sample[:SCENE_NEGATIVES // 5])
            for suffix, regressor in (("", None), ("+boxes", BOXES)):
                best = rerank_windows(boxes, scores, prepared.pixels, *checker, rerank=RERANK,
                                      top_regions=1, box_regressor=regressor)[0]
                out[f"{aspect_name}/all+CNN check{suffix}"] = float(box_iou(target, best.box)[0])
    return out


def quality(frame, features: dict[str, str], modes: list[str], n_scenes: int,
            seed: int, cutout: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per mode and feature set, the IoUs of every scene (checkpointed after each scene in
    ``benchmarks/.cache/checkpoints/`` so a long run can be split over several commands)."""
    # v2: the rows with the box regressor (+boxes) were added.
    suffix = "-cutout" if cutout else ""
    checkpoint = CHECKPOINTS / f"look_bench-v2-{n_scenes}-{seed}{suffix}.json"
    done: dict[str, Any] = json.loads(checkpoint.read_text()) if checkpoint.is_file() else {}

    def save() -> None:
        CHECKPOINTS.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(json.dumps(done))

    by_id = frame.set_index("id")
    train_ids = frame.loc[frame["split"] == "train", "id"].to_numpy()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    seconds: dict[tuple[str, str], float] = {}
    for mode in modes:
        # The two history modes see the same scenes and histories.
        rng = np.random.default_rng(seed + (0 if mode == "like" else 1))
        scenes = []
        for _ in range(n_scenes):
            if mode == "like":
                scene, like = like_scene(frame, rng, cutout=cutout)
                scenes.append((scene, like, []))
            else:  # history-centroid / history-latent-svm
                scene, viewed = history_scene(frame, rng, cutout=cutout)
                negatives = [str(i) for i in rng.choice(train_ids, size=60, replace=False)
                             if str(i) not in viewed]
                scenes.append((scene, viewed, negatives))
        cnn = create(CNN) if CNN in features.values() else None

        def checker_maker(ask: Any, negs: list[str]):
            if cnn is None:
                return None

            def make(pixels: np.ndarray, boxes: np.ndarray):
                crops = lambda: CropWindows(cnn, pixels).for_boxes(boxes)  # noqa: E731
                return cnn, scorer_for(mode, cnn, by_id, ask, negs, crops)
            return make

        for label, name in features.items():
            if mode == "history-latent-svm" and label not in LATENT_FEATURES:
                continue  # each scene fits several SVMs: only the main feature sets
            embedder = create(name)
            key = f"{mode}/{label}"
            entry = done.setdefault(key, {"ious": [], "seconds": 0.0})
            for scene, ask, negs in scenes[len(entry["ious"]):]:
                started = time.perf_counter()
                entry["ious"].append(evaluate_scene(
                    scene, embedder,
                    lambda windows, ask=ask, negs=negs: scorer_for(mode, embedder, by_id, ask,
                                                                   negs, windows),
                    checker_maker(ask, negs) if name != CNN else None))
                entry["seconds"] += time.perf_counter() - started
                save()
            results[(mode, label)] = entry["ious"]
            seconds[(mode, label)] = entry["seconds"] / len(scenes)
            print(f"  {mode} / {label}: {seconds[(mode, label)]:.1f} s per scene", flush=True)
    rows = []
    for mode in modes:
        done = [label for label in features if (mode, label) in results]
        settings = list(dict.fromkeys(key for label in done
                                      for key in results[(mode, label)][0]))
        for setting in settings:
            aspect, size = setting.split("/")
            row: dict[str, Any] = {"mode": mode, "windows": aspect, "size": size}
            for label in features:
                if label not in done or setting not in results[(mode, label)][0]:
                    row[f"{label} hit"] = row[f"{label} IoU"] = None  # e.g. no CNN check of CNN
                    continue
                ious = np.array([r.get(setting, 0.0) for r in results[(mode, label)]])
                row[f"{label} hit"] = float(np.mean(ious >= 0.5))
                row[f"{label} IoU"] = float(np.mean(ious))
            rows.append(row)
    timing = {f"{m}/{f}": s for (m, f), s in seconds.items()}
    return rows, timing


def render_markdown(payload: dict[str, Any]) -> str:
    """The Markdown tables of a results payload: speed, then hit rates per mode."""
    parts = []
    if payload.get("speed"):
        parts.append("## Speed (one 640x480 scene, 89,745 square windows 20..100 px, stride 5)"
                     "\n\n" + markdown_table(payload["speed"]))
    rows = payload.get("quality") or []
    labels = list(dict.fromkeys(key[:-4] for row in rows for key in row if key.endswith(" hit")))
    n = payload.get("settings", {}).get("scenes")
    for mode in dict.fromkeys(row["mode"] for row in rows):
        table = [r for r in rows if r["mode"] == mode]
        used = [label for label in labels if any(r[f"{label} hit"] is not None for r in table)]
        parts.append(f"## Hit rate, {mode} ({n} scenes)\n\n" + markdown_table(
            table, ["windows", "size", *[f"{label} hit" for label in used],
                    *[f"{label} IoU" for label in used]]))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=40, help="scenes per mode")
    parser.add_argument("--quick", action="store_true", help="12 scenes per mode")
    parser.add_argument("--modes", default="like,history-centroid,history-latent-svm")
    parser.add_argument("--features", default=",".join(FEATURES.values()),
                        help="embedder names (comma-separated)")
    parser.add_argument("--naive-sample", type=int, default=400)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cutout", action="store_true",
                        help="place the products without their white backdrop (harder; results "
                             "go to look_bench[-quick]-cutout)")
    args = parser.parse_args()
    import torch

    from lookalike.catalogue.sources import load_products_frame

    torch.set_num_threads(args.threads)
    wanted = [f.strip() for f in args.features.split(",") if f.strip()]
    labels = {v: k for k, v in FEATURES.items()}
    features = {labels.get(name, name): name for name in wanted}
    frame = load_products_frame()
    for column in ("gender", "usage", "article_type", "base_colour"):
        frame[column] = frame[column].fillna("").astype(str)
    n = 12 if args.quick else args.scenes
    payload: dict[str, Any] = {"settings": {"scene": [640, 480], "windows": list(DEFAULT_WINDOWS),
                                            "stride": STRIDE, "cascade": RERANK, "scenes": n,
                                            "seed": args.seed, "threads": args.threads,
                                            "cutout": args.cutout}}
    suffix = ("-quick" if args.quick else "") + ("-cutout" if args.cutout else "")
    if not args.skip_speed:
        rows = speed(frame, features, args.naive_sample // (4 if args.quick else 1), args.seed)
        print_table("all windows of a 640x480 scene (20..100 px, stride 5), fast vs naive", rows)
        payload["speed"] = rows
    if not args.skip_quality:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        rows, timing = quality(frame, features, modes, n, args.seed, args.cutout)
        print_table(f"best region IoU >= 0.5 over {n} scenes per mode", rows)
        payload["quality"] = rows
        payload["seconds_per_scene"] = timing
        best = max(((row[f"{label} hit"], label, row["mode"], row["windows"], row["size"])
                    for row in rows for label in features if row[f"{label} hit"] is not None),
                   default=None)
        payload["best"] = best and {"hit": best[0], "features": best[1], "mode": best[2],
                                    "windows": best[3], "size": best[4]}
        for mode in modes:
            table = [r for r in rows if r["mode"] == mode]
            for aspect in ASPECTS:
                points = [{"size": int(r["size"]), "features": label, "hit": r[f"{label} hit"]}
                          for r in table if r["windows"] == aspect and r["size"].isdigit()
                          for label in features]
                plot_lines(RESULTS / f"look_bench{suffix}-{mode}-{aspect.replace(':', 'x')}.png",
                           points, x="size", y="hit", hue="features", ylim=(0, 1),
                           xlabel="window size (px)", ylabel="hit rate (IoU >= 0.5)",
                           title=f"Best region vs truth ({mode}, {aspect} windows)")
    payload["peak_rss_mb"] = peak_rss_mb()
    # A run of one section (--skip-speed / --skip-quality) keeps the other section of the last
    # run with the same name, so speed can be re-measured alone on an idle machine.
    previous_path = RESULTS / f"look_bench{suffix}.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    sections = ("speed", "quality", "seconds_per_scene", "best")
    for key in sections:
        if key not in payload and key in previous and \
                previous.get("settings", {}).get("scenes") == n:
            payload[key] = previous[key]
            payload.setdefault("kept_from_earlier_run", []).append(key)
    out = write_results(f"look_bench{suffix}", payload)
    (RESULTS / f"look_bench{suffix}.md").write_text(render_markdown(payload))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
