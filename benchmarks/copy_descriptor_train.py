"""Train the packaged ``copy-descriptor`` head on the products catalogue's train split.

    python benchmarks/copy_descriptor_train.py            # writes src/lookalike/data/copy-descriptor
    python benchmarks/copy_descriptor_train.py --limit 3000 --out /tmp/head   # a quick look

Held out by construction (and checked by tests/test_copy_descriptor.py):

* every test-split product (the copies benchmark reports on copies of those);
* the originals that benchmarks/dedup_bench.py --combined copies for its *validation* set (quick
  and full, seed 101), where the copy thresholds are chosen;
* a probe set of 1,000 more train products, whose 4-edit copies (seed 7) measure the descriptor
  here: the rank of the original among every training and probe photo (recall@1/5/20), for the
  plain full-size embedding, both views side by side, and the trained head after each epoch.

Writes ``benchmarks/results/copy_descriptor_train.json`` with those numbers and the held-out ids.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
import _dedup_combined as combined  # noqa: E402

from lookalike.catalogue.copy_edits import edit_copy, random_edits  # noqa: E402
from lookalike.catalogue.sources import load_products_frame  # noqa: E402
from lookalike.models.copy_descriptor import PACKAGED, CopyDescriptorEmbedder  # noqa: E402
from lookalike.models.copy_training import TrainingOptions, train_head  # noqa: E402

VALIDATION_SEED = 101  # benchmarks/_dedup_combined.py: seeds["validation"] with --seed 0
PROBE_SIZE, PROBE_SEED = 1000, 7


def held_out_rows(frame) -> dict[str, np.ndarray]:
    """Frame rows no training step may see: test split, the copies benchmark's validation
    originals (quick and full)."""
    out = {"test": np.flatnonzero(frame["split"].to_numpy() != "train")}
    for name, (n_catalogue, n_copies) in {"validation-quick": (1500, 400),
                                          "validation-full": (100_000, 2000)}.items():
        _, rows, originals = combined.draw_set(frame, "train", n_catalogue, n_copies,
                                               VALIDATION_SEED)
        out[name] = rows[originals]
    return out


def split_rows(frame, limit: int | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(training rows, probe rows, held-out facts)."""
    held = held_out_rows(frame)
    banned = np.unique(np.concatenate(list(held.values())))
    free = np.setdiff1d(np.arange(len(frame)), banned)
    rng = np.random.default_rng(PROBE_SEED)
    free = rng.permutation(free)
    probe, train = np.sort(free[:PROBE_SIZE]), np.sort(free[PROBE_SIZE:])
    if limit:
        train = train[:limit]
    facts = {name: int(len(rows)) for name, rows in held.items()}
    return train, probe, facts


def photo(frame, row: int) -> Image.Image:
    return Image.open(io.BytesIO(frame["image_jpeg"].iat[int(row)])).convert("RGB")


def recall(gallery: np.ndarray, queries: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Recall@1/5/20 of each query's target row in ``gallery`` (exact inner product)."""
    import faiss

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), 20)
    return {f"R@{k}": round(float((found[:, :k] == targets[:, None]).any(1).mean()), 4)
            for k in (1, 5, 20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="train on this many photos")
    parser.add_argument("--epochs", type=int, default=TrainingOptions().epochs)
    parser.add_argument("--out", default=str(PACKAGED))
    parser.add_argument("--name", default="copy_descriptor_train")
    args = parser.parse_args()
    started = time.perf_counter()
    frame = load_products_frame()
    train, probe, held = split_rows(frame, args.limit)
    print(f"training on {len(train)} photos; probe {len(probe)}; held out {held}")
    images = [photo(frame, r) for r in train]
    rng = np.random.default_rng(PROBE_SEED)
    probe_images = [photo(frame, r) for r in probe]
    probe_copies = [edit_copy(image, random_edits(rng, 4)) for image in probe_images]
    model = CopyDescriptorEmbedder(weights=None)
    gallery = model.image_features(images + probe_images)
    queries = model.image_features(probe_copies)
    targets = np.arange(len(train), len(train) + len(probe))
    full = slice(0, 1280)
    before = {"full view (the default embedding)": recall(gallery[:, full], queries[:, full],
                                                          targets),
              "both views side by side": recall(gallery / np.sqrt(2), queries / np.sqrt(2),
                                                targets)}
    print(before)
    epochs: list[dict[str, Any]] = []

    def on_epoch(epoch: int, loss: float, tensors: dict[str, np.ndarray]) -> None:
        model.load_state_tensors(tensors)
        row = {"epoch": epoch + 1, "loss": round(loss, 4),
               **recall(model.embed_features(gallery), model.embed_features(queries), targets)}
        epochs.append(row)
        print(row, flush=True)

    options = TrainingOptions(epochs=args.epochs)
    model.load_state_tensors(train_head(model, images, options, on_epoch,
                                        features=gallery[:len(train)]))
    after = recall(model.embed_features(gallery), model.embed_features(queries), targets)
    print("trained head:", after)
    folder = model.save(args.out)
    payload = {"training_photos": int(len(train)), "probe_photos": int(len(probe)),
               "held_out": held, "options": vars(options), "probe_recall_4_edits": {
                   **before, "trained head": after},
               "epochs": epochs, "saved_to": str(folder), "embedder_id": model.embedder_id,
               "seconds": round(time.perf_counter() - started, 1)}
    print(write_results(args.name, payload, quick=bool(args.limit),
                        seeds=[options.seed, PROBE_SEED, VALIDATION_SEED]))


if __name__ == "__main__":
    main()
