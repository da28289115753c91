"""Can keypoints verify copies on 60 x 80 product photos? ORB + RANSAC (scikit-image) probe.

Copies of test-split photos with 4 combined edits (crop, resize, brightness, JPEG) are matched
against their originals (positives) and against other products of the same article type
(negatives), after upscaling both photos ``--upscale`` times (ORB needs more pixels than 60 x 80).
Records keypoints per photo, detection and verification milliseconds, and the RANSAC inlier
counts of positives and negatives: whether an inlier threshold separates them.

    python benchmarks/orb_probe.py            # 40 copies, 5 negatives each
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from lookalike.catalogue.sources import load_products_frame  # noqa: E402
from lookalike.catalogue.copy_edits import edit_copy, random_edits  # noqa: E402


def features(image: Image.Image, upscale: int):
    from skimage.feature import ORB

    grey = np.asarray(image.convert("L").resize((60 * upscale, 80 * upscale),
                                                Image.Resampling.BICUBIC), dtype=np.float32) / 255
    orb = ORB(n_keypoints=150, fast_threshold=0.05, downscale=1.2, n_scales=6)
    try:
        orb.detect_and_extract(grey)
    except RuntimeError:  # no keypoints at all
        return np.zeros((0, 2)), np.zeros((0, 256), dtype=bool)
    return orb.keypoints, orb.descriptors


def inliers(a, b) -> int:
    from skimage.feature import match_descriptors
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform

    (ka, da), (kb, db) = a, b
    if len(ka) < 3 or len(kb) < 3:
        return 0
    matches = match_descriptors(da, db, cross_check=True, max_ratio=0.9)
    if len(matches) < 3:
        return len(matches)
    src, dst = ka[matches[:, 0]][:, ::-1], kb[matches[:, 1]][:, ::-1]
    _, kept = ransac((src, dst), SimilarityTransform, min_samples=3, residual_threshold=4,
                     max_trials=200, rng=0)
    return 0 if kept is None else int(kept.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--upscale", type=int, default=3)
    parser.add_argument("--seed", type=int, default=303)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    frame = load_products_frame(split="test")
    types = frame["article_type"].to_numpy()
    common = frame["article_type"].map(frame["article_type"].value_counts()).to_numpy() > 5
    rows = rng.choice(np.flatnonzero(common), size=args.copies, replace=False)
    photo = lambda r: Image.open(io.BytesIO(frame["image_jpeg"].iat[r])).convert("RGB")  # noqa
    detect, verify, positives, negatives, keypoints = [], [], [], [], []
    for r in rows:
        copy = features(edit_copy(photo(r), random_edits(rng, 4)), args.upscale)
        started = time.perf_counter()
        original = features(photo(r), args.upscale)
        detect.append(time.perf_counter() - started)
        keypoints.append(len(original[0]))
        same_type = rng.choice(np.flatnonzero((types == types[r]) & (np.arange(len(frame)) != r)),
                               size=5, replace=False)
        started = time.perf_counter()
        positives.append(inliers(copy, original))
        verify.append(time.perf_counter() - started)
        negatives += [inliers(copy, features(photo(o), args.upscale)) for o in same_type]
    positives, negatives = np.asarray(positives), np.asarray(negatives)
    best = max(range(0, 60), key=lambda t: (positives >= t).mean() - (negatives >= t).mean())
    payload = {"copies": args.copies, "negatives_per_copy": 5, "upscale": args.upscale,
               "keypoints_mean": round(float(np.mean(keypoints)), 1),
               "detect_ms_mean": round(1000 * float(np.mean(detect)), 1),
               "verify_ms_mean": round(1000 * float(np.mean(verify)), 1),
               "inliers_positive_percentiles_0_10_25_50": np.percentile(
                   positives, [0, 10, 25, 50]).tolist(),
               "inliers_negative_percentiles_50_90_99_100": np.percentile(
                   negatives, [50, 90, 99, 100]).tolist(),
               "best_inlier_threshold": best,
               "recall_at_best": round(float((positives >= best).mean()), 3),
               "negatives_passing_at_best": round(float((negatives >= best).mean()), 3)}
    print(payload)
    print(write_results("orb_probe", payload, quick=True, seeds=[args.seed]))


if __name__ == "__main__":
    main()
