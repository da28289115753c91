"""Where shop-the-look loses its hits, on validation scenes only (the look_wild scenes).

Per like-scene (cut-out and pasted modes), with the packaged segmenter (or ``--segmenter``):

- *ranking ceiling*: the hit rate if the regions were the ground-truth boxes of the scene's
  products (each cropped and embedded with the index's embedder, scored against ``like``);
  also with each product's visible pixels on white (as catalogue photos are);
- *localisation recall*: share of targets with some proposed box of IoU >= 0.5;
- *losses*: hits lost to localisation (the best-overlapping proposal is *merged* -- over 1.5x
  the target's area --, *fragmented* -- under 0.67x -- or *shifted*) and to ranking (a good
  box was proposed but another region came first).

    nice -n 19 python benchmarks/look_diagnose.py --scenes 60 [--category-weight 1]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from look_wild_bench import SEEDS, build_project, make_scenes  # noqa: E402

from lookalike.recommend.look_space import category_vote  # noqa: E402
from lookalike.recommend.segmenter import PACKAGED, SPLIT_DISTANCE, WEIGHTS_FILE, \
    SceneSegmenter, packaged_segmenter  # noqa: E402
from lookalike.recommend.window_features import CropWindows  # noqa: E402
from lookalike.recommend.windows import box_iou, nms  # noqa: E402


def on_white(scene: Any, index: int) -> Image.Image:
    """Product ``index``'s visible pixels on white, cropped to its box."""
    pixels = np.asarray(scene.image.convert("RGB")).copy()
    pixels[scene.instances != index + 1] = 255
    return Image.fromarray(pixels).crop(tuple(scene.products[index].box))


def diagnose_scene(scene: Any, like: str, target_vector: np.ndarray, embedder: Any,
                   segmenter: SceneSegmenter, vote: Any = None,
                   weight: float = 0.0, tight: float = 0.0,
                   **proposal_options: Any) -> dict[str, Any]:
    truth = np.array([p.box for p in scene.products])
    target = next(i for i, p in enumerate(scene.products) if p.role == "target")
    pixels = np.asarray(scene.image.convert("RGB"))
    def score(vectors: np.ndarray) -> np.ndarray:
        return vectors @ target_vector + (weight * vote(vectors) if vote is not None else 0.0)

    gt_scores = score(CropWindows(embedder, pixels).for_boxes(truth))
    white_scores = score(embedder.embed([on_white(scene, i) for i in range(len(truth))]))
    boxes, objectness, _ = segmenter.proposals(scene.image, **proposal_options)
    row: dict[str, Any] = {"ceiling": bool(np.argmax(gt_scores) == target),
                           "ceiling_white": bool(np.argmax(white_scores) == target),
                           "proposals": int(len(boxes))}
    if not len(boxes):
        return {**row, "recall": False, "hit": False, "loss": "none proposed"}
    ious = box_iou(truth[target], boxes)
    scores = score(CropWindows(embedder, pixels).for_boxes(boxes))
    keep = nms(boxes, scores, 0.3, max_keep=5)
    if tight > 0:  # the product by score, then its box by objectness
        near = (box_iou(boxes[keep[0]], boxes) >= 0.3) & (scores >= scores[keep[0]] - tight)
        keep = [int(np.flatnonzero(near)[np.argmax(objectness[near])])] + list(keep[1:])
    top = boxes[keep[0]]
    row.update(recall=bool(ious.max() >= 0.5), hit=bool(ious[keep[0]] >= 0.5),
               best_iou=float(ious.max()))
    if row["hit"]:
        return {**row, "loss": ""}
    area = lambda b: max(1, (b[2] - b[0]) * (b[3] - b[1]))  # noqa: E731
    if row["recall"]:  # a good box was there: did another product win, or a worse box of it?
        other = box_iou(top, truth).argmax() != target or ious[keep[0]] < 0.1
        kind = "other product" if other else \
            "larger box" if area(top) > area(truth[target]) else "smaller box"
        return {**row, "loss": f"ranking: {kind}"}
    best = boxes[int(np.argmax(ious))]
    ratio = area(best) / area(truth[target])
    loss = "merged" if ratio > 1.5 else "fragmented" if ratio < 0.67 else "shifted"
    return {**row, "loss": loss}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    losses = [r["loss"] for r in rows if r["loss"]]
    return {"scenes": n,
            "ceiling_gt_boxes": round(np.mean([r["ceiling"] for r in rows]), 4),
            "ceiling_gt_on_white": round(np.mean([r["ceiling_white"] for r in rows]), 4),
            "localisation_recall": round(np.mean([r["recall"] for r in rows]), 4),
            "hit_rate": round(np.mean([r["hit"] for r in rows]), 4),
            "mean_proposals": round(np.mean([r["proposals"] for r in rows]), 1),
            "losses": {k: losses.count(k) for k in sorted(set(losses))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--segmenter", type=Path, default=None)
    parser.add_argument("--name", default="look_diagnosis")
    parser.add_argument("--split-distance", type=int, default=SPLIT_DISTANCE)
    parser.add_argument("--tight", type=float, default=0.0,
                        help="experiment: among boxes overlapping the top one (IoU >= 0.3) and "
                             "scoring within this of it, take the most objectness")
    parser.add_argument("--category-weight", type=float, default=0.0,
                        help="add this x look's category vote to the similarity")
    args = parser.parse_args()
    import torch

    from lookalike.catalogue.sources import load_products_frame

    torch.set_num_threads(1)
    frame = load_products_frame()
    for column in ("gender", "usage", "article_type", "base_colour", "title"):
        frame[column] = frame[column].fillna("").astype(str)
    scenes = make_scenes(frame, "validation", args.scenes, 0, ("cutout", "pasted"))
    project = build_project(frame, {like for m in ("cutout", "pasted") for _, like in scenes[m]})
    loaded = project.searcher()
    segmenter = SceneSegmenter.load(args.segmenter) if args.segmenter else packaged_segmenter()
    out = {}
    for mode in ("cutout", "pasted"):
        rows = []
        for scene, like in scenes[mode]:
            vector = loaded.vectors_of([like], project.store)[0]
            vote = category_vote(project, loaded, like) if args.category_weight else None
            rows.append(diagnose_scene(scene, like, vector, loaded.embedder, segmenter, vote,
                                       args.category_weight, args.tight,
                                       split_distance=args.split_distance))
        out[mode] = summarise(rows)
        print(mode, out[mode], flush=True)
    payload = {"stage": "validation", "scenes": args.scenes,
               "segmenter": str(args.segmenter or "packaged"),
               "segmenter_weights": hashlib.sha256(
                   ((args.segmenter or PACKAGED) / WEIGHTS_FILE).read_bytes()).hexdigest()[:10],
               "category_weight": args.category_weight,
               "split_distance": args.split_distance, "tight": args.tight,
               "results": out}
    print(write_results(args.name, payload, quick=False, seeds=[SEEDS["validation"]]))


if __name__ == "__main__":
    main()
