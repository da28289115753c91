"""Training the ``copy-descriptor`` head (see :mod:`.copy_descriptor`).

Each catalogue photo gets ``copies_per_image`` random copies (1 to 4 edits at once with random
strengths, :mod:`lookalike.catalogue.copy_edits`). Both views of originals and copies go through
the frozen backbone once; then only the head learns, with an InfoNCE loss in which every copy
must pick its original out of the batch's originals, each original's ``hard_negatives`` nearest
look-alikes in the catalogue and ``random_negatives`` more, all projected live.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lookalike.errors import LookalikeError


@dataclass(frozen=True)
class TrainingOptions:
    """How the head is trained (defaults: the settings of the packaged head)."""

    copies_per_image: int = 1
    epochs: int = 8
    temperature: float = 0.05
    batch: int = 512
    learning_rate: float = 1e-3
    hard_negatives: int = 8
    random_negatives: int = 1024
    seed: int = 0
    progress: bool = True

    def check(self) -> "TrainingOptions":
        if self.copies_per_image < 1 or self.epochs < 1 or self.batch < 2:
            raise LookalikeError("copy-descriptor: copies_per_image and epochs must be >= 1 and "
                                 "batch >= 2")
        if not 0 < self.temperature <= 1:
            raise LookalikeError(f"copy-descriptor: temperature in (0, 1], not {self.temperature}")
        return self


def random_copies(images: Sequence[Image.Image], per_image: int,
                  rng: np.random.Generator) -> tuple[list[Image.Image], np.ndarray]:
    """``per_image`` random copies of each image (1 to 4 edits each) and their sources."""
    from lookalike.catalogue.copy_edits import edit_copy, random_edits

    copies, sources = [], []
    for _ in range(per_image):
        for n, image in enumerate(images):
            copies.append(edit_copy(image, random_edits(rng, int(rng.integers(1, 5)))))
            sources.append(n)
    return copies, np.asarray(sources, dtype=np.int64)


def _features(embedder, images: Sequence[Image.Image], label: str, progress: bool) -> np.ndarray:
    from lookalike.models.embed_pipeline import ProgressBar

    with ProgressBar(progress, len(images), label) as advance:
        return embedder.image_features(images, progress=advance)


def _network(features: int, dim: int, hidden: int, originals) -> Any:
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(features, dim)
            self.hidden = nn.Linear(features, hidden)
            self.out = nn.Linear(hidden, dim)
            self.act = nn.GELU(approximate="tanh")

        def forward(self, x):
            return self.linear(x) + self.out(self.act(self.hidden(x)))

    head = Head()
    with torch.no_grad():  # start from PCA: the originals' main directions, scaled by spread
        mean = originals.mean(0)
        q = min(dim, len(originals))  # fewer photos than dimensions: the rest stay random
        _, spread, basis = torch.pca_lowrank(originals - mean, q=q, center=False)
        head.linear.weight[:q] = basis.T * (spread[0] / spread.clamp_min(1e-6))[:, None]
        head.linear.bias.copy_(-(head.linear.weight @ mean))
        nn.init.zeros_(head.out.weight)
        nn.init.zeros_(head.out.bias)
    return head


def train_head(embedder, images: list[Image.Image], options: TrainingOptions,
               on_epoch: Callable[[int, float, dict[str, np.ndarray]], None] | None = None,
               features: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The trained head's tensors (names as :func:`~.copy_descriptor.head_forward` reads).
    ``on_epoch(epoch, mean loss, tensors so far)`` is called after every epoch; ``features``
    are the images' view features when already computed."""
    import torch

    options.check()
    if len(images) < 2:
        raise LookalikeError("copy-descriptor: training needs at least 2 photos")
    rng = np.random.default_rng(options.seed)
    torch.manual_seed(options.seed)
    copies, sources = random_copies(images, options.copies_per_image, rng)
    if features is None:
        features = _features(embedder, images, "originals", options.progress)
    originals = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    edited = torch.from_numpy(_features(embedder, copies, "copies", options.progress))
    head = _network(originals.shape[1], embedder.dim, embedder.hidden, originals)
    optimiser = torch.optim.AdamW(head.parameters(), lr=options.learning_rate, weight_decay=1e-4)
    target = torch.from_numpy(sources)
    negatives = hard_negatives(originals, options.hard_negatives)
    for epoch in range(options.epochs):
        loss = _epoch(head, optimiser, originals, edited, target, negatives, options)
        if on_epoch is not None:
            on_epoch(epoch, loss, _tensors(head))
    return _tensors(head)


def _tensors(head) -> dict[str, np.ndarray]:
    return {name: value.detach().numpy().astype(np.float32).copy()
            for name, value in head.state_dict().items()}


def hard_negatives(originals, count: int) -> Any:
    """``[n, count]``: each original's nearest other originals (on a 256-d PCA of the views):
    the look-alike products a copy must not be mistaken for."""
    import faiss
    import torch

    count = min(count, len(originals) - 1)
    mean = originals.mean(0)
    _, _, basis = torch.pca_lowrank(originals - mean, q=min(256, *originals.shape),
                                    center=False)
    reduced = torch.nn.functional.normalize((originals - mean) @ basis, dim=1).numpy()
    index = faiss.IndexFlatIP(reduced.shape[1])
    index.add(np.ascontiguousarray(reduced, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(reduced, dtype=np.float32), count + 1)
    return torch.from_numpy(found[:, 1:].astype(np.int64))


def _epoch(head, optimiser, originals, edited, target, negatives,
           options: TrainingOptions) -> float:
    """One pass over the copies. Each batch's candidates are its copies' originals, their hard
    negatives and as many random originals, all projected live (with gradients)."""
    import torch
    from torch.nn.functional import cross_entropy, normalize

    order = torch.randperm(len(edited))
    total = 0.0
    for start in range(0, len(order), options.batch):
        rows = order[start:start + options.batch]
        mine = target[rows]
        pool = torch.cat([mine, negatives[mine].reshape(-1),
                          torch.randint(len(originals), (options.random_negatives,))])
        pool, where = torch.unique(pool, return_inverse=True)
        query = normalize(head(edited[rows]), dim=1)
        candidates = normalize(head(originals[pool]), dim=1)
        loss = cross_entropy(query @ candidates.T / options.temperature, where[:len(rows)])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * len(rows)
    return total / len(order)


__all__ = ["TrainingOptions", "random_copies", "train_head"]
