"""The validation split benchmarks choose on: stratified, seeded, saved, disjoint from test."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from lookalike.evaluate.splits import (
    SplitError,
    saved_validation_split,
    stratified_sample,
    validation_split,
)


def _catalogue(n: int = 400, seed: int = 1) -> tuple[list[str], list[str], list[str]]:
    """ids, labels and official split (train/test) of a made-up catalogue with uneven classes."""
    rng = np.random.default_rng(seed)
    labels = [f"class{int(c)}" for c in rng.choice(7, size=n, p=[.3, .2, .15, .15, .1, .07, .03])]
    ids = [f"item-{i:04d}" for i in range(n)]
    official = ["test" if rng.random() < 0.2 else "train" for _ in range(n)]
    return ids, labels, official


def test_validation_is_carved_from_train_and_disjoint_from_test(tmp_path) -> None:
    ids, labels, official = _catalogue()
    train = [i for i, s in enumerate(official) if s == "train"]
    test_ids = {ids[i] for i, s in enumerate(official) if s == "test"}
    train_ids = [ids[i] for i in train]
    split = saved_validation_split(tmp_path / "val.json", train_ids,
                                   [labels[i] for i in train], fraction=0.2, seed=3)
    validation = {train_ids[i] for i in split.validation}
    fit = {train_ids[i] for i in split.fit}
    assert validation and not validation & test_ids and not validation & fit
    assert validation | fit == set(train_ids)


def test_every_class_keeps_its_share() -> None:
    _, labels, _ = _catalogue()
    split = validation_split(labels, fraction=0.25, seed=0)
    counts, held = Counter(labels), Counter(labels[i] for i in split.validation)
    for name, count in counts.items():
        assert held[name] == max(1, round(0.25 * count))


def test_the_split_is_stable_for_a_seed_and_changes_with_it() -> None:
    _, labels, _ = _catalogue()
    a, b = validation_split(labels, 0.1, seed=5), validation_split(labels, 0.1, seed=5)
    assert np.array_equal(a.validation, b.validation)
    assert not np.array_equal(a.validation, validation_split(labels, 0.1, seed=6).validation)


def test_saved_split_is_reused_and_guards_its_data(tmp_path) -> None:
    ids, labels, _ = _catalogue()
    path = tmp_path / "splits" / "val.json"
    first = saved_validation_split(path, ids, labels, 0.1, seed=2)
    saved = json.loads(path.read_text())
    assert saved["validation_ids"] == [ids[i] for i in first.validation]
    # the file, not the RNG, decides the second time: edit it and the edit is honoured
    saved["validation_ids"] = saved["validation_ids"][:5]
    path.write_text(json.dumps(saved))
    again = saved_validation_split(path, ids, labels, 0.1, seed=2)
    assert [ids[i] for i in again.validation] == saved["validation_ids"]
    with pytest.raises(SplitError, match="other train data"):
        saved_validation_split(path, ids[:-1], labels[:-1], 0.1, seed=2)
    with pytest.raises(SplitError, match="another seed"):
        saved_validation_split(path, ids, labels, 0.1, seed=9)


def test_stratified_sample_keeps_every_class() -> None:
    _, labels, _ = _catalogue()
    rows = stratified_sample(labels, 40, seed=0)
    assert set(labels[i] for i in rows) == set(labels)
    assert 30 <= len(rows) <= 50 and len(set(rows.tolist())) == len(rows)


def test_bad_fraction_is_a_clear_error() -> None:
    with pytest.raises(SplitError, match="between 0 and 1"):
        validation_split(["a", "b"], fraction=1.5)


def test_a_sample_is_independent_of_the_validation_split() -> None:
    """Same seed, different draws: a sample must not start with the validation items."""
    _, labels, _ = _catalogue(n=2000)
    held = set(validation_split(labels, 0.1, seed=0).validation.tolist())
    sample = set(stratified_sample(labels, 300, seed=0).tolist())
    # independent draws overlap about 10% (the validation share); the same stream gave ~66%
    assert len(held & sample) < 0.2 * len(sample)
