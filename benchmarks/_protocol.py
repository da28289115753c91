"""The selection protocol shared by the learned-quality benchmarks (``--select``).

Choices are made on a validation split carved from train (``lookalike.evaluate.splits``, saved
under ``benchmarks/results/splits/``); the chosen config is then trained with several seeds on
the full train split and the test split is read once per seed. This module holds the parts that
do not depend on the model: the saved split, the per-seed summary and the candidate ranking.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, write_results

from lookalike.evaluate.splits import ValidationSplit, saved_validation_split, stratified_sample

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


def select_then_test(*, name: str, dataset: str, train_ids: Sequence[str],
                     train_labels: Sequence[str], test_labels: Sequence[str],
                     candidates: Sequence[str], variants: Sequence[str],
                     fit: Callable[[str, np.ndarray, int], Any],
                     embed: Callable[[Any, str, str, np.ndarray], np.ndarray],
                     seeds: Sequence[int], select_items: int, quick: bool,
                     extra: dict[str, Any] | None = None) -> Path:
    """The protocol for one model family, written to ``benchmarks/results/<name>.json``.

    ``fit(candidate, train_rows, seed)`` trains a candidate config on those rows of the train
    split; ``embed(model, variant, split, rows)`` gives unit vectors of rows of ``"train"`` or
    ``"test"`` under an evaluation-time ``variant`` (e.g. test-time flip on/off). Candidates x
    variants are scored on validation queries against a stratified sample of train-minus-
    validation (the candidates' training set and gallery); the best one is trained on the full
    train split with every seed and read on test once per seed.
    """
    from lookalike.evaluate.retrieval import evaluate_retrieval

    def score(queries, query_labels, gallery, gallery_labels) -> dict[str, float]:
        report = evaluate_retrieval(queries, list(query_labels), gallery, list(gallery_labels),
                                    ks=(1, 10), map_at=100, class_column="label")
        return {"P@10": report.metrics["P@10"], "mAP@100": report.metrics["mAP@100"]}

    started = time.perf_counter()
    split, split_path = validation(dataset, train_ids, train_labels)
    fit_labels = [train_labels[i] for i in split.fit]
    sample = split.fit[stratified_sample(fit_labels, select_items, seed=0)]
    sample_labels = [train_labels[i] for i in sample]
    val_labels = [train_labels[i] for i in split.validation]
    print(f"{dataset}: {len(split.fit):,} train-minus-validation ({len(sample):,} sampled for "
          f"selection), {len(split.validation):,} validation, {len(test_labels):,} test",
          flush=True)
    rows = []
    for candidate in candidates:
        model = fit(candidate, sample, 0)
        for variant in variants:
            rows.append({"config": candidate, "variant": variant,
                         **score(embed(model, variant, "train", split.validation), val_labels,
                                 embed(model, variant, "train", sample), sample_labels)})
            print(f"  validation {candidate} [{variant}]: P@10 {rows[-1]['P@10']:.4f}", flush=True)
    chosen = best(rows)
    print(f"chosen on validation: {chosen['config']} [{chosen['variant']}]", flush=True)
    everything = np.arange(len(train_labels))
    per_seed = []
    for seed in seeds:
        model = fit(chosen["config"], everything, seed)
        per_seed.append({"seed": seed, **score(
            embed(model, chosen["variant"], "test", np.arange(len(test_labels))), test_labels,
            embed(model, chosen["variant"], "train", everything), train_labels)})
        print(f"  test seed {seed}: P@10 {per_seed[-1]['P@10']:.4f}", flush=True)
    return write_results(name, {
        "protocol": "choose on validation (10% of train per class, seeded, saved), train the "
                    "choice on the full train split per seed, test queries vs train gallery "
                    "read once per seed (exact cosine)",
        "dataset": dataset,
        "validation_split": {"file": str(split_path.relative_to(split_path.parents[3])),
                             "seed": split.seed, "fraction": split.fraction,
                             "validation_items": int(len(split.validation)),
                             "fit_items": int(len(split.fit))},
        "selection": {"split": "validation", "metric": "P@10",
                      "candidates_trained_on": f"stratified sample of {len(sample):,} "
                                               "train-minus-validation items (also the gallery)",
                      "rows": rows,
                      "chosen": {"config": chosen["config"], "variant": chosen["variant"]}},
        "test": {"split": "test", "read": "once per seed", "trained_on": f"all {len(train_labels):,} train items"
                 + (" (the quick run's train sample)" if quick else " (the full train split)"),
                 "per_seed": per_seed,
                 **{metric: summary([row[metric] for row in per_seed])
                    for metric in ("P@10", "mAP@100")}},
        **(extra or {}), "seconds": round(time.perf_counter() - started, 1)},
        quick=quick, seeds=list(seeds))
