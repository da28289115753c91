"""Build the bundled demo catalogue, src/lookalike/data/demo.parquet, from the products Parquet.

A proportionally stratified slice: classes (article_type) with fewer than --min-class items in
the full catalogue are dropped (the rare types would leave one or two demo items, too few to
find a match for); every other class keeps its share of --size items, with at least --floor
each, so the demo looks like the real catalogue (Tshirts common, Ties rare). Within a class the
train/test split is kept in proportion. Same columns as the source; deterministic for a --seed.

    python scripts/make_demo_catalogue.py [--source PATH] [--size 2000] [--min-class 100]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lookalike.catalogue.sources import require_products_parquet

OUT = Path(__file__).resolve().parents[1] / "src" / "lookalike" / "data" / "demo.parquet"


def class_quotas(class_sizes: pd.Series, size: int, floor: int) -> pd.Series:
    """Items per class: proportional to the class's share, at least ``floor``, at most all."""
    quotas = np.maximum(floor, np.round(class_sizes / class_sizes.sum() * size)).astype(int)
    return np.minimum(quotas, class_sizes)


def stratified_slice(frame: pd.DataFrame, size: int, min_class: int, seed: int,
                     floor: int = 8) -> pd.DataFrame:
    sizes = frame["article_type"].value_counts()
    kept = sizes[sizes >= min_class]
    quotas = class_quotas(kept, size, floor)
    rng = np.random.default_rng(seed)
    parts = []
    for article_type in sorted(kept.index):
        group = frame[frame["article_type"] == article_type]
        take = int(quotas[article_type])
        test = group[group["split"] == "test"]
        n_test = int(round(take * len(test) / len(group)))
        n_test = min(n_test, len(test))
        train = group[group["split"] != "test"]
        for part, n in ((train, take - n_test), (test, n_test)):
            if n:
                parts.append(part.iloc[np.sort(rng.choice(len(part), size=n, replace=False))])
    return pd.concat(parts).sort_values("id").reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None,
                        help="products Parquet (default: $LOOKALIKE_PRODUCTS_PARQUET or "
                             "../shared/data/fashion-products-small.parquet)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--min-class", type=int, default=100)
    parser.add_argument("--floor", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    source = require_products_parquet(args.source)
    table = pq.read_table(source)
    frame = table.to_pandas()
    demo = stratified_slice(frame, args.size, args.min_class, args.seed, args.floor)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out_table = pa.Table.from_pandas(demo, schema=table.schema, preserve_index=False)
    pq.write_table(out_table, args.out, compression="zstd")
    classes = demo["article_type"].value_counts()
    print(f"wrote {args.out}: {len(demo)} items, {len(classes)} article types "
          f"(largest {classes.max()}, smallest {classes.min()}), "
          f"{(demo['split'] == 'train').sum()} train / {(demo['split'] == 'test').sum()} test, "
          f"{args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
