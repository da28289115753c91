"""Fit the look ranker that ships in the package (``src/lookalike/data/look-ranker``).

Recipe of the shipped ranker: ``--scenes`` generated "find this product" scenes per kind (every
product cut out, every product pasted) of the **train** split only -- train backgrounds, train
products, and ``like`` photos of train products (the catalogue's train products dealt to the
validation split are dropped first) -- with :data:`~lookalike.recommend.scene_generator.
EVALUATION_SPEC`, seed 7. A project holds the like products and 600 other train products,
indexed with the default embedder. Every segmenter proposal of every scene gives one row of
:data:`~lookalike.recommend.look_ranker.FEATURES` (:func:`lookalike.recommend.look.
ranking_features`, exactly what ``look`` reads) with its IoU with the target; a logistic
regression is fitted on them (:meth:`~lookalike.recommend.look_ranker.LookRanker.fit`). The
kind classifier (:class:`~lookalike.recommend.look_ranker.KindClassifier`, article types) is
trained on the look head's training data: the crops of its 2,500 train scenes (true, jittered and
segmenter boxes) and every train catalogue photo (``scripts/train_look_head.py``'s caches, built
here if missing); ``--kind-weight`` (1 by default, chosen on validation) weighs it in. The rows
are cached in ``benchmarks/.cache/look-ranker``, so a rerun only fits (seconds; the first run
about 12 minutes on 2 cores).

    python scripts/train_look_ranker.py                        # the packaged ranker
    python scripts/train_look_ranker.py --out /tmp/ranker --scenes 20
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from lookalike.catalogue.sources import load_products_frame
from lookalike.models.base import create
from lookalike.models.embed_pipeline import ProgressBar
from lookalike.models.weights import weights_digest
from lookalike.project import Project
from lookalike.recommend.look import SEGMENTER_SIDE, ranking_features
from lookalike.recommend.look_head import packaged_look_head
from lookalike.recommend.look_ranker import PACKAGED, KindClassifier, LookRanker
from lookalike.recommend.scene_backgrounds import SPLIT_SEED
from lookalike.recommend.scene_generator import EVALUATION_SPEC, SceneGenerator, product_split
from lookalike.recommend.segmenter import PACKAGED as SEGMENTER, packaged_segmenter
from lookalike.recommend.windows import box_iou
from lookalike.storage import atomic_file

CACHE = Path(__file__).resolve().parents[1] / "benchmarks" / ".cache" / "look-ranker"
EMBEDDER = "efficientnet-lite0"
GALLERY = 600


def train_frame() -> pd.DataFrame:
    """The catalogue without its test split and without the train products dealt to
    validation: a train scene's products and its ``like`` photos all come from the rest."""
    frame = load_products_frame()
    for column in ("gender", "usage", "article_type", "base_colour", "title"):
        frame[column] = frame[column].fillna("").astype(str)
    keep = [product_split(i, s) == "train" for i, s in zip(frame["id"], frame["split"])]
    return frame[keep].reset_index(drop=True)


def scenes(frame: pd.DataFrame, n: int, seed: int) -> list[tuple[Image.Image, tuple, str]]:
    """``n`` like-scenes with every product cut out and ``n`` with every product pasted: each
    photo, its target's box and its ``like`` id."""
    generator = SceneGenerator(frame, "train", EVALUATION_SPEC, seed=SPLIT_SEED)
    out = []
    for cutout in (True, False):
        rng = np.random.default_rng([seed, int(cutout)])
        for _ in range(n):
            scene, like = generator.like_scene(rng, cutout=cutout)
            out.append((scene.image, tuple(scene.target.box), like))
    return out


def project_for(frame: pd.DataFrame, like_ids: set[str]) -> Project:
    """A project (cached) whose index holds every ``like`` product and 600 other train ones."""
    gallery = set(frame["id"].sample(GALLERY, random_state=0))
    rows = frame[frame["id"].isin(like_ids | gallery)].sort_values("id")
    digest = hashlib.sha256(",".join(rows["id"]).encode()).hexdigest()[:10]
    project = Project(CACHE / f"project-{len(rows)}-{digest}")
    if project.default_index_name() is None:
        manifest = CACHE / f"manifest-{digest}.parquet"
        pd.DataFrame({"id": rows["id"], "image": rows["image_jpeg"], "title": rows["title"],
                      "category": rows["article_type"], "gender": rows["gender"],
                      "colour": rows["base_colour"], "split": rows["split"]}).to_parquet(manifest)
        project.ingest(manifest, progress=False)
        project.index(EMBEDDER, progress=False)
    return project


def training_rows(n: int, seed: int, head: str, segmenter: str) -> dict[str, np.ndarray]:
    """Feature rows of every proposal of the training scenes and its IoU with the scene's
    target (cached per recipe)."""
    path = CACHE / f"rows-v2-{n}-{seed}-{SPLIT_SEED}-{head}-{segmenter}-{SEGMENTER_SIDE}.npz"
    if path.is_file():
        return dict(np.load(path))
    frame = train_frame()
    found = scenes(frame, n, seed)
    project = project_for(frame, {like for _, _, like in found})
    features, overlaps, groups = [], [], []
    with ProgressBar(True, len(found), "train scenes", verb="ranking") as advance:
        for k, (image, target, like) in enumerate(found):
            boxes, rows = ranking_features(project, image, like)
            features.append(rows)
            overlaps.append(box_iou(np.array(target), boxes) if len(boxes) else np.zeros(0))
            groups.append(np.full(len(rows), k))
            advance(1)
    arrays = {"features": np.concatenate(features), "iou": np.concatenate(overlaps),
              "scene": np.concatenate(groups)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        np.savez(handle, **arrays)
    return arrays


def kind_classifier() -> KindClassifier:
    """Article types from the look head's train-scene crops and train catalogue photos."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_look_head import catalogue_photos, scene_crops

    frame = load_products_frame()
    type_of = dict(zip(frame["id"].astype(str), frame["article_type"].fillna("").astype(str)))
    embedder = create(EMBEDDER)
    crops = scene_crops(frame, embedder, 2500, 0, 320)
    photos, photo_ids = catalogue_photos(frame, embedder)
    ids = np.concatenate([crops["ids"].astype(str), photo_ids])
    if any(product_split(i, "train") != "train" for i in ids):
        raise SystemExit("a kind-classifier example outside the train split")
    return KindClassifier.fit(np.concatenate([crops["vectors"], photos]), [type_of[i] for i in ids])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGED)
    parser.add_argument("--scenes", type=int, default=2000, help="scenes per kind")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation")
    parser.add_argument("--kind-weight", type=float, default=1.0,
                        help="weight of log P(like's category) from the kind classifier")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    head = packaged_look_head(EMBEDDER, 1280)
    if head is None or packaged_segmenter() is None:
        raise SystemExit("the look ranker needs the packaged look head and segmenter")
    segmenter = weights_digest(SEGMENTER)
    rows = training_rows(args.scenes, args.seed, head.digest, segmenter)
    ranker = LookRanker.fit(rows["features"], rows["iou"], EMBEDDER, head.digest, C=args.C)
    ranker.kinds, ranker.kind_weight = kind_classifier(), args.kind_weight
    ranker.save(args.out, extra={"trained_on": {
        "split": "train", "scenes_per_kind": args.scenes, "scene_seed": args.seed,
        "split_seed": SPLIT_SEED, "spec": EVALUATION_SPEC.to_json(),
        "kind_classifier": "article_type, on the look head's 2,500 train scenes' crops (seed 0, "
                           "segmenter proposals at 320 px) and the train catalogue photos",
        "segmenter": segmenter, "segmenter_side": SEGMENTER_SIDE, "gallery": GALLERY,
        "embedder": EMBEDDER,
        "scenes_with_a_proposal_on_target": int(len(np.unique(
            rows["scene"][rows["iou"] >= 0.5])))}})
    print(f"wrote {args.out}: {ranker.training}")


if __name__ == "__main__":
    main()
