"""Train the box regressor that ships in the package (``src/lookalike/data/box-regressor``).

The recipe of the shipped weights: 600 generated scenes (5 train-split product photos each on
scikit-image's background photos, half of them cut out of their backdrop), 6 jittered boxes per
product (18,000 samples), 10 epochs, seed 0, on the products catalogue. It took 13 minutes on
the 2-core machine (while another benchmark ran). A shop trains its own with
``lookalike train-boxes``.

    python scripts/train_box_regressor.py                       # writes the packaged model
    python scripts/train_box_regressor.py --out /tmp/boxes --scenes 100 --epochs 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lookalike.catalogue.sources import load_products_frame
from lookalike.recommend.box_regression import PACKAGED, BoxRegressor, box_samples
from lookalike.recommend.scenes import decode_jpeg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGED)
    parser.add_argument("--scenes", type=int, default=600)
    parser.add_argument("--per-product", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    frame = load_products_frame()
    train = frame[frame["split"] == "train"]
    jpegs = dict(zip(train["id"].astype(str), train["image_jpeg"]))
    samples = box_samples(lambda item: decode_jpeg(jpegs[item]), list(jpegs), args.scenes,
                          args.seed, per_product=args.per_product)
    regressor = BoxRegressor(seed=args.seed)
    result = regressor.fit(samples, epochs=args.epochs, seed=args.seed, patience=0,
                           threads=args.threads)
    for row in result.history:
        print(f"epoch {row['epoch']}: val IoU {row['val_iou_before']:.3f} -> "
              f"{row['val_iou']:.3f} ({row['seconds']:.0f} s)")
    print(f"saved to {regressor.save(args.out)}")


if __name__ == "__main__":
    main()
