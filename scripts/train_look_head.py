"""Train the look head that ships in the package (``src/lookalike/data/look-head``).

Recipe of the shipped weights: ``--scenes`` generated scenes of the **train** split only (train
backgrounds, train products; :mod:`lookalike.recommend.scene_generator`'s default distribution,
cut-outs and pasted photos mixed), seed 0. Every product in a scene gives two crops (its box,
and the box moved and rescaled by up to 12 % / 25 %) and one bad box (merged with a neighbour, a
fragment, or grown 1.8-2.5x); with ``--proposals`` (320 by default) the packaged segmenter's
proposals are cropped too (IoU >= 0.5 with a product: that product; < 0.3 with all: a bad box).
Everything is embedded with the default index embedder; the catalogue photos are the train
split's products (``product_split == "train"``). Classes are (article type, colour). Crops and
photos are cached in ``benchmarks/.cache/look-head``, so a rerun only trains (about 3 minutes
on 2 cores; the first run about 16). Run it under ``nice -n 19``.

    nice -n 19 python scripts/train_look_head.py                 # the packaged head
    python scripts/train_look_head.py --out /tmp/head --scenes 100 --steps 50
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lookalike.catalogue.sources import load_products_frame
from lookalike.models.base import create
from lookalike.models.embed_pipeline import ProgressBar
from lookalike.recommend.look_head import PACKAGED, STEPS, LookHead
from lookalike.recommend.scene_backgrounds import SPLIT_SEED
from lookalike.recommend.scene_generator import SceneGenerator, SceneSpec, product_split
from lookalike.recommend.scenes import decode_jpeg
from lookalike.recommend.segmenter import packaged_segmenter
from lookalike.recommend.windows import box_iou
from lookalike.storage import atomic_file

CACHE = Path(__file__).resolve().parents[1] / "benchmarks" / ".cache" / "look-head"
EMBEDDER = "efficientnet-lite0"


def jittered(box: tuple[int, int, int, int], size: tuple[int, int],
             rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``box`` moved by up to 12 % and rescaled by up to 25 % per side, inside the scene."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    scale, shift = np.exp(rng.uniform(-0.25, 0.25, 2)), rng.uniform(-0.12, 0.12, 2)
    cx, cy = (x0 + x1) / 2 + shift[0] * w, (y0 + y1) / 2 + shift[1] * h
    half_w, half_h = w * scale[0] / 2, h * scale[1] / 2
    return (int(max(0, cx - half_w)), int(max(0, cy - half_h)),
            int(min(size[0], cx + half_w)), int(min(size[1], cy + half_h)))


def bad_boxes(boxes: list[tuple[int, int, int, int]], size: tuple[int, int],
              rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """Boxes a localiser gets wrong, one per product: merged with another product's box, a
    fragment (a quarter to a half of the box) or the box grown 1.8-2.5 times."""
    out = []
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        kind = int(rng.integers(3)) if len(boxes) > 1 else int(rng.integers(1, 3))
        w, h = x1 - x0, y1 - y0
        if kind == 0:
            other = boxes[(k + 1 + int(rng.integers(len(boxes) - 1))) % len(boxes)]
            out.append((min(x0, other[0]), min(y0, other[1]), max(x1, other[2]),
                        max(y1, other[3])))
        elif kind == 1:
            fw, fh = (w, h * rng.uniform(0.25, 0.5)) if rng.random() < 0.5 else \
                (w * rng.uniform(0.25, 0.5), h)
            fx, fy = x0 + rng.uniform(0, w - fw), y0 + rng.uniform(0, h - fh)
            out.append((int(fx), int(fy), int(fx + fw) + 1, int(fy + fh) + 1))
        else:
            grow = rng.uniform(1.8, 2.5)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            out.append((int(max(0, cx - w * grow / 2)), int(max(0, cy - h * grow / 2)),
                        int(min(size[0], cx + w * grow / 2)),
                        int(min(size[1], cy + h * grow / 2))))
    return out


def scene_crops(frame, embedder, n: int, seed: int, side: int | None) -> dict[str, np.ndarray]:
    """Vectors and product ids of the crops of ``n`` train scenes, and vectors of bad boxes
    (cached). With ``side``, the packaged segmenter's proposals at that input side are cropped
    too: a proposal of IoU >= 0.5 with a product is that product, one under 0.3 with every
    product is a bad box."""
    path = CACHE / f"crops-{n}-{seed}-{SPLIT_SEED}-{embedder.embedder_id}-v2-{side}.npz"
    if path.is_file():
        return dict(np.load(path))
    generator = SceneGenerator(frame, "train", SceneSpec(), seed=SPLIT_SEED)
    segmenter = packaged_segmenter() if side else None
    rng = np.random.default_rng(seed)
    vectors, ids, bad = [], [], []
    with ProgressBar(True, n, "train scenes", verb="generating and embedding") as advance:
        for _ in range(n):
            scene = generator.scene(rng)
            boxes = [p.box for p in scene.products]
            good = [(box, p.item_id) for p in scene.products
                    for box in (p.box, jittered(p.box, scene.image.size, rng))]
            wrong = bad_boxes(boxes, scene.image.size, rng)
            if segmenter is not None:
                found, _, _ = segmenter.proposals(scene.image, side=side)
                overlap = box_iou_matrix(found, np.array(boxes))
                good += [(tuple(found[i]), scene.products[int(np.argmax(overlap[i]))].item_id)
                         for i in np.flatnonzero(overlap.max(axis=1) >= 0.5)]
                wrong += [tuple(found[i]) for i in np.flatnonzero(overlap.max(axis=1) < 0.3)]
            vectors.append(embedder.embed([scene.image.crop(tuple(b)) for b, _ in good]))
            ids += [item for _, item in good]
            bad.append(embedder.embed([scene.image.crop(tuple(b)) for b in wrong]))
            advance(1)
    found_arrays = {"vectors": np.concatenate(vectors), "ids": np.array(ids),
                    "bad": np.concatenate(bad)}
    _saved(path, found_arrays)
    return found_arrays


def box_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` ``[n, 4]`` with every box of ``b`` ``[m, 4]``."""
    return np.stack([box_iou(box, b) for box in np.asarray(a).reshape(-1, 4)]) \
        if len(a) else np.zeros((0, len(b)))


def catalogue_photos(frame, embedder) -> tuple[np.ndarray, np.ndarray]:
    """Vectors and ids of every train-split catalogue photo (cached)."""
    path = CACHE / f"photos-{SPLIT_SEED}-{embedder.embedder_id}.npz"
    if path.is_file():
        data = np.load(path)
        return data["vectors"], data["ids"].astype(str)
    rows = frame[[product_split(i, s) == "train" for i, s in zip(frame["id"], frame["split"])]]
    vectors = []
    with ProgressBar(True, len(rows), "catalogue photos") as advance:
        for start in range(0, len(rows), 256):
            part = rows.iloc[start:start + 256]
            vectors.append(embedder.embed([decode_jpeg(b) for b in part["image_jpeg"]]))
            advance(len(part))
    found = {"vectors": np.concatenate(vectors), "ids": rows["id"].to_numpy().astype(str)}
    _saved(path, found)
    return found["vectors"], found["ids"]


def _saved(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        np.savez(handle, **arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGED)
    parser.add_argument("--scenes", type=int, default=2500)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--proposals", type=int, default=320,
                        help="also crop the packaged segmenter's proposals at this input side "
                             "(0: only the true and jittered boxes)")
    parser.add_argument("--bad", action=argparse.BooleanOptionalAction, default=True,
                        help="train with the bad boxes as negatives")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frame = load_products_frame()
    classes = (frame["article_type"].fillna("").astype(str) + "|"
               + frame["base_colour"].fillna("").astype(str))
    class_of = dict(zip(frame["id"], classes))
    numbers = {name: k for k, name in enumerate(sorted(set(classes)))}
    embedder = create(EMBEDDER)
    found = scene_crops(frame, embedder, args.scenes, args.seed, args.proposals)
    crops, crop_ids = found["vectors"], found["ids"].astype(str)
    photos, photo_ids = catalogue_photos(frame, embedder)
    if any(product_split(i, "train") != "train" for i in crop_ids):
        raise SystemExit("a crop of a product outside the train split")
    row_of = {item: k for k, item in enumerate(photo_ids)}
    head = LookHead(EMBEDDER, embedder.dim, seed=args.seed)
    with ProgressBar(True, args.steps, "look head steps", verb="training") as advance:
        training = head.fit(crops, np.array([numbers[class_of[i]] for i in crop_ids]),
                            np.array([row_of[i] for i in crop_ids]), photos,
                            np.array([numbers[class_of[i]] for i in photo_ids]),
                            bad=found["bad"] if args.bad else None, steps=args.steps,
                            progress=advance)
    head.save(args.out, extra={"trained_on": {
        "split": "train", "scenes": args.scenes, "scene_seed": args.seed,
        "split_seed": SPLIT_SEED, "photos": int(len(photo_ids)), "classes": "article_type|colour",
        "embedder_id": embedder.embedder_id,
        "bad_boxes": bool(args.bad), "segmenter_proposals_side": args.proposals or None}})
    print(f"wrote {args.out}: {training}")


if __name__ == "__main__":
    main()
