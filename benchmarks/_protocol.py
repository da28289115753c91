"""The selection protocol shared by the learned-quality benchmarks (``--select``).

Choices are made on a validation split carved from train (``lookalike.evaluate.splits``, saved
under ``benchmarks/results/splits/``); the chosen config is then trained with several seeds on
the full train split and the test split is read once per seed. This module holds the parts that
do not depend on the model: the saved split, the per-seed summary and the candidate ranking.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import RESULTS

from lookalike.evaluate.splits import ValidationSplit, saved_validation_split

SPLITS = RESULTS / "splits"


def validation(dataset: str, ids: Sequence[str], labels: Sequence[object],
               fraction: float = 0.1, seed: int = 0) -> tuple[ValidationSplit, Path]:
    """The saved validation split of ``dataset``'s train split (made on first use)."""
    path = SPLITS / f"{dataset}-validation-s{seed}.json"
    return saved_validation_split(path, ids, labels, fraction, seed), path


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample sd (0 for one value) and the values, rounded to 4 places."""
    values = [float(v) for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "sd": round(sd, 4),
            "per_seed": [round(v, 4) for v in values]}


def best(rows: list[dict[str, Any]], metric: str = "P@10") -> dict[str, Any]:
    """The candidate row with the highest validation ``metric`` (first one on a tie)."""
    return max(rows, key=lambda row: row[metric])
