"""Real products for the shop-the-look scene tests: the 8 commonest article types, up to 600
per catalogue split (shared by test_look_splits.py and test_look_segmenter.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def common_products(parquet: Path) -> pd.DataFrame:
    data = pd.read_parquet(parquet, columns=["id", "split", "article_type", "base_colour",
                                             "image_jpeg"])
    data["id"] = data["id"].astype(str)
    common = data["article_type"].value_counts().index[:8]
    data = data[data["article_type"].isin(common)].sort_values("id")
    return data.groupby("split").head(600).reset_index(drop=True)
