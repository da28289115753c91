"""The validation split every benchmark choice is made on, carved from train (never from test).

:func:`validation_split` takes a stratified, seeded share of each class out of a train split;
:func:`saved_validation_split` does the same but keeps the chosen ids in a JSON file, so a later
run (or another benchmark) reuses exactly the same split, and refuses a file made from other
data. :func:`stratified_sample` draws a smaller seeded sample with every class kept, for the
cheap selection runs.

The protocol these serve: candidates (configs, heads, thresholds, test-time flips, epochs) are
trained on train-minus-validation and scored with validation queries against the
train-minus-validation gallery; the chosen one is retrained on the full train split and the test
split is read once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lookalike.errors import LookalikeError


#: Mixed into :func:`stratified_sample`'s seed so its draws are independent of the split's.
_SAMPLE_STREAM = 0x5A3B1E


class SplitError(LookalikeError):
    """A validation split that cannot be made or does not fit the data it is used with."""


@dataclass(frozen=True)
class ValidationSplit:
    """Row positions into the train split: ``fit`` (train minus validation) and ``validation``."""

    fit: np.ndarray
    validation: np.ndarray
    seed: int
    fraction: float


def _by_class(labels: Sequence[object]) -> dict[str, np.ndarray]:
    names = np.array([str(label) for label in labels])
    return {name: np.flatnonzero(names == name) for name in sorted(set(names.tolist()))}


def validation_split(labels: Sequence[object], fraction: float = 0.1, seed: int = 0
                     ) -> ValidationSplit:
    """Hold out ``fraction`` of every class (rounded, at least one item of any class with two or
    more; a class of one stays in ``fit``), chosen by ``seed``; positions come back sorted."""
    if not 0.0 < fraction < 1.0:
        raise SplitError(f"the validation fraction must be between 0 and 1, not {fraction}")
    if len(labels) < 2:
        raise SplitError(f"a validation split needs at least 2 labelled items, got {len(labels)}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for rows in _by_class(labels).values():
        if len(rows) < 2:
            continue
        take = min(len(rows) - 1, max(1, int(round(fraction * len(rows)))))
        held.append(rng.permutation(rows)[:take])
    validation = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    fit = np.setdiff1d(np.arange(len(labels)), validation)
    return ValidationSplit(fit, validation, int(seed), float(fraction))


def stratified_sample(labels: Sequence[object], size: int, seed: int = 0) -> np.ndarray:
    """About ``size`` sorted positions, every class's share proportional to its size (at least one
    item of each class), chosen by ``seed`` independently of :func:`validation_split`'s draw."""
    if size >= len(labels):
        return np.arange(len(labels))
    # its own random stream: with the validation split's seed, a plain default_rng(seed) would
    # draw the same per-class permutations, and the sample would start with the validation items
    rng = np.random.default_rng([seed, _SAMPLE_STREAM])
    share = size / len(labels)
    picked = [rng.permutation(rows)[:max(1, int(round(share * len(rows))))]
              for rows in _by_class(labels).values()]
    return np.sort(np.concatenate(picked))


def _digest(ids: Sequence[str], labels: Sequence[object]) -> str:
    digest = hashlib.sha256()
    for item, label in zip(ids, labels):
        digest.update(f"{item}\t{label}\n".encode())
    return digest.hexdigest()[:16]


def saved_validation_split(path: str | Path, ids: Sequence[str], labels: Sequence[object],
                           fraction: float = 0.1, seed: int = 0) -> ValidationSplit:
    """:func:`validation_split` of ``ids``/``labels``, kept as JSON at ``path`` (the validation
    ids, seed, fraction and a digest of the train split). An existing file is reused when it was
    made from the same train split, seed and fraction; otherwise :class:`SplitError`."""
    from lookalike.storage import atomic_write_text

    ids = [str(item) for item in ids]
    if len(ids) != len(labels) or len(set(ids)) != len(ids):
        raise SplitError("ids must be unique and as many as labels")
    path = Path(path)
    data = _digest(ids, labels)
    if path.is_file():
        saved = json.loads(path.read_text())
        if (saved.get("train_digest"), saved.get("seed"), saved.get("fraction")) != (
                data, int(seed), float(fraction)):
            raise SplitError(f"{path} was made from other train data or another seed/fraction; "
                             "delete it to carve a new split")
        position = {item: i for i, item in enumerate(ids)}
        validation = np.sort(np.array([position[item] for item in saved["validation_ids"]],
                                      dtype=np.int64))
        fit = np.setdiff1d(np.arange(len(ids)), validation)
        return ValidationSplit(fit, validation, int(seed), float(fraction))
    split = validation_split(labels, fraction, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({
        "seed": int(seed), "fraction": float(fraction), "train_items": len(ids),
        "train_digest": data, "validation_items": int(len(split.validation)),
        "validation_ids": [ids[i] for i in split.validation]}))
    return split
