"""The copy descriptor: the embedder contract, what it learns, and what it was never shown."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import lookalike
from lookalike.catalogue.copies import CopyMatcher, CopySettings
from lookalike.catalogue.copy_edits import edit_copy, random_edits
from lookalike.catalogue.fingerprints import Fingerprints, fingerprint
from lookalike.errors import LookalikeError, ModelMismatchError
from lookalike.models.base import create, load
from lookalike.models.copy_descriptor import CopyDescriptorEmbedder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """60 real test-split demo photos, one per distinct image (never trained on)."""
    frame = pd.read_parquet(Path(lookalike.__file__).parent / "data" / "demo.parquet")
    frame = frame[frame["split"] == "test"].drop_duplicates("image_jpeg").sort_values("id")
    return [Image.open(io.BytesIO(b)).convert("RGB") for b in frame["image_jpeg"][:60]]


@pytest.fixture(scope="module")
def copies(photos: list[Image.Image]) -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [edit_copy(photo, random_edits(rng, 4)) for photo in photos]


def test_the_packaged_descriptor_gives_unit_rows_and_finds_four_edit_copies(
        photos, copies) -> None:
    model = create("copy-descriptor")
    assert model.trained
    originals = model.embed(photos)
    edited = model.embed(copies)
    assert originals.dtype == np.float32 and originals.shape == (len(photos), model.dim)
    assert np.allclose(np.linalg.norm(originals, axis=1), 1.0, atol=1e-4)
    nearest = (edited @ originals.T).argmax(axis=1)
    assert (nearest == np.arange(len(photos))).mean() >= 0.9


def test_fit_save_and_load_round_trip(photos, copies, tmp_path: Path) -> None:
    model = CopyDescriptorEmbedder(dim=32, hidden=16, weights=None)
    with pytest.raises(LookalikeError, match="no trained head"):
        model.embed(photos[:2])
    model.fit(photos[:40], epochs=2, batch=16, random_negatives=8, progress=False)
    folder = model.save(tmp_path / "head")
    assert (folder / "weights.safetensors").is_file() and (folder / "config.json").is_file()
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pt"))
    again = load(folder)
    assert again.embedder_id == model.embedder_id
    assert np.allclose(again.embed(copies[:5]), model.embed(copies[:5]), atol=1e-5)


def test_wrong_weights_are_refused() -> None:
    model = CopyDescriptorEmbedder(dim=32, hidden=16, weights=None)
    with pytest.raises(ModelMismatchError, match="lack"):
        model.load_state_tensors({"linear.weight": np.zeros((32, 2560), np.float32)})
    tensors = create("copy-descriptor").state_tensors()
    with pytest.raises(ModelMismatchError, match="expected"):
        model.load_state_tensors(tensors)
    with pytest.raises(LookalikeError, match="packaged"):
        CopyDescriptorEmbedder(weights="somewhere")


def test_a_matcher_with_descriptors_finds_a_copy_and_learns_new_items(photos, copies) -> None:
    model = create("copy-descriptor")
    prints = [fingerprint(photo) for photo in photos[:30]]
    fingerprints = Fingerprints([f"p{n}" for n in range(30)], np.stack([p[0] for p in prints]),
                                np.stack([p[1] for p in prints]), np.stack([p[2] for p in prints]))
    matcher = CopyMatcher(fingerprints, CopySettings(), descriptors=model.embed(photos[:30]),
                          describe=model.embed_one)
    found = [matcher.find(copies[n]) for n in range(30)]
    assert sum(bool(f) and f[0][0] == f"p{n}" for n, f in enumerate(found)) >= 25
    assert matcher.find(copies[40]) == [] or matcher.find(copies[40])[0][0] != "p40"
    matcher.add("p40", photos[40])
    assert matcher.find(copies[40])[0][0] == "p40"
    with pytest.raises(LookalikeError, match="descriptors for"):
        CopyMatcher(fingerprints, CopySettings(), descriptors=model.embed(photos[:3]),
                    describe=model.embed_one)


def test_the_packaged_head_never_saw_test_products_nor_the_validation_copies(
        products_parquet: Path) -> None:
    """The rows benchmarks/copy_descriptor_train.py trains on are disjoint from the test split
    and from the originals dedup_bench.py copies for validation; the results JSON agrees."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import copy_descriptor_train as script
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    frame = pd.read_parquet(products_parquet, columns=["id", "split"])
    train, probe, _ = script.split_rows(frame, None)
    held = script.held_out_rows(frame)
    assert not np.intersect1d(train, held["test"]).size
    assert not np.intersect1d(train, held["validation-full"]).size
    assert not np.intersect1d(train, held["validation-quick"]).size
    assert not np.intersect1d(train, probe).size
    assert (frame["split"].to_numpy()[train] == "train").all()
    saved = json.loads((ROOT / "benchmarks/results/copy_descriptor_train.json").read_text())
    assert saved["training_photos"] == len(train)
    assert saved["held_out"] == {name: len(rows) for name, rows in held.items()}
