"""The look head: a small learned map under which a product seen *in a scene* (cut out or pasted,
cast, blurred, a box a little off) and a catalogue photo of the same kind of product (article
type and colour) are close.

A ``like`` query in shop-the-look compares each region of the scene with one catalogue photo. In
the embedder's own space a region is pulled towards its background and a different photo of the
same kind of product is often not the nearest; under the head, both sides are projected first
(``score = head(region) . head(like)``). The head is residual (``x + MLP(x)``, unit rows out),
so it starts as the identity and keeps the embedder's space.

It is trained with a supervised contrastive loss (Khosla et al. 2020) whose classes are
(article type, colour): each batch holds crops of products in generated **train** scenes
(:mod:`lookalike.recommend.scene_generator`, train backgrounds and train products only), the
catalogue photo of each, and as many random train catalogue photos. The package ships one head
for the default index embedder (``lookalike/data/look-head``, trained by
``scripts/train_look_head.py``); :func:`packaged_look_head` returns it only for an index of
that embedder. Saved as ``config.json`` + ``weights.safetensors``, never pickled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.caches import ProjectCaches
from lookalike.errors import LookalikeError
from lookalike.models.weights import WEIGHTS_FILE, weights_digest

KIND = "look-head"
PACKAGED = Path(__file__).resolve().parent.parent / "data" / KIND
#: Training defaults of the packaged head (scripts/train_look_head.py).
HIDDEN = 512
TEMPERATURE = 0.1
BATCH = 384
STEPS = 1500
LEARNING_RATE = 1e-3


class LookHeadError(LookalikeError):
    """A look head that cannot be loaded or trained."""


def _network(dim: int, hidden: int, seed: int) -> Any:
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Linear(dim, hidden)
            self.outer = nn.Linear(hidden, dim)
            nn.init.zeros_(self.outer.weight)  # the identity before training
            nn.init.zeros_(self.outer.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x + self.outer(nn.functional.gelu(self.inner(x)))
            return nn.functional.normalize(out, dim=1)

    torch.manual_seed(seed)
    return Residual()


def supervised_contrastive(z: Any, labels: Any, temperature: float) -> Any:
    """Mean over anchors with a positive of -log p(positive) over every other row (SupCon)."""
    import torch

    n = len(z)
    eye = torch.eye(n, dtype=torch.bool)
    logits = (z @ z.T / temperature).masked_fill(eye, -1e9)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    has = positive.any(dim=1)
    return -((log_p * positive).sum(dim=1)[has] / positive.sum(dim=1)[has]).mean()


class LookHead:
    """The head of one embedder (``embedder``: its registry name; ``dim``: its width)."""

    def __init__(self, embedder: str, dim: int, hidden: int = HIDDEN, seed: int = 0) -> None:
        self.config: dict[str, Any] = {"kind": KIND, "embedder": embedder, "dim": int(dim),
                                       "hidden": int(hidden), "seed": int(seed)}
        self.network = _network(int(dim), int(hidden), int(seed))
        self.network.eval()
        self.training: dict[str, Any] | None = None
        #: The saved weights' digest (:func:`~lookalike.models.weights.weights_digest`); "none"
        #: until saved and loaded.
        self.digest = "none"

    @property
    def embedder(self) -> str:
        return str(self.config["embedder"])

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Unit float32 rows ``[n, dim]`` of the embedder's vectors under the head."""
        import torch

        vectors = np.asarray(vectors, np.float32).reshape(-1, int(self.config["dim"]))
        with torch.no_grad():
            return self.network(torch.from_numpy(vectors)).numpy()

    def scorer(self, like_vector: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """Regions' embedder vectors -> their cosine to ``like_vector`` under the head."""
        target = self.project(like_vector)[0]
        return lambda vectors: self.project(vectors) @ target

    def fit(self, crops: np.ndarray, crop_labels: np.ndarray, crop_photos: np.ndarray,
            photos: np.ndarray, photo_labels: np.ndarray, bad: np.ndarray | None = None,
            steps: int = STEPS,
            batch: int = BATCH, learning_rate: float = LEARNING_RATE,
            temperature: float = TEMPERATURE, progress: Callable[[int], None] | None = None
            ) -> dict[str, Any]:
        """Train on scene ``crops`` (vectors, integer class labels, and the row of each one's
        own catalogue photo in ``photos``) and catalogue ``photos`` (vectors, labels). Each step
        draws ``batch`` crops, their photos and ``batch`` random photos, and half a batch of
        ``bad`` boxes' vectors (merged, fragments, too large: each its own class, so they are
        only ever negatives)."""
        import torch

        if len(crops) < batch or len(photos) < batch:
            raise LookHeadError(f"need at least {batch} crops and photos to train a look head")
        rng = np.random.default_rng(int(self.config["seed"]))
        crop_x, photo_x = torch.from_numpy(np.asarray(crops, np.float32)), \
            torch.from_numpy(np.asarray(photos, np.float32))
        optimiser = torch.optim.AdamW(self.network.parameters(), lr=learning_rate,
                                      weight_decay=1e-4)
        self.network.train()
        losses = []
        for _ in range(steps):
            rows = rng.choice(len(crops), batch, replace=False)
            others = np.concatenate([crop_photos[rows], rng.choice(len(photos), batch,
                                                                   replace=False)])
            inputs = [crop_x[rows], photo_x[others]]
            classes = [crop_labels[rows], photo_labels[others]]
            if bad is not None:
                inputs.append(torch.from_numpy(np.asarray(
                    bad[rng.choice(len(bad), batch // 2, replace=False)], np.float32)))
                classes.append(-1 - np.arange(batch // 2))
            loss = supervised_contrastive(self.network(torch.cat(inputs)),
                                          torch.from_numpy(np.concatenate(classes)), temperature)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(1)
        self.network.eval()
        self.training = {"steps": steps, "batch": batch, "learning_rate": learning_rate,
                         "temperature": temperature, "crops": int(len(crops)),
                         "photos": int(len(photos)),
                         "bad": 0 if bad is None else int(len(bad)), "first_loss": round(losses[0], 4),
                         "last_loss": round(float(np.mean(losses[-50:])), 4)}
        return self.training

    def save(self, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """``config.json`` + ``weights.safetensors`` into ``folder`` (each written atomically)."""
        from lookalike.models.weights import save_network

        return save_network(folder, self.network,
                            {**self.config, "training": self.training, **(extra or {})})

    @classmethod
    def load(cls, folder: str | Path) -> "LookHead":
        """A head saved with :meth:`save` (JSON and safetensors only; runs no code)."""
        from lookalike.models.weights import read_network, restore_module

        config, tensors = read_network(folder, KIND, "look head", LookHeadError)
        head = cls(config["embedder"], config["dim"], config.get("hidden", HIDDEN),
                   config.get("seed", 0))
        head.config.update({k: v for k, v in config.items() if k not in ("training",)})
        try:
            restore_module(head.network, tensors, f"{folder}: look head")
        except LookalikeError as error:
            raise LookHeadError(str(error)) from None
        head.network.eval()
        head.training = config.get("training")
        head.digest = weights_digest(folder)
        return head


def packaged_look_head(embedder: str, dim: int,
                       caches: ProjectCaches | None = None) -> LookHead | None:
    """The head shipped in the package when it was trained for ``embedder`` (a registry name)
    of width ``dim``; None otherwise, or when absent. Loaded once per ``caches``."""
    def load() -> LookHead | None:
        return LookHead.load(PACKAGED) if (PACKAGED / WEIGHTS_FILE).is_file() else None

    head = load() if caches is None else caches.look_heads.get_or_make(PACKAGED, load)
    if head is None or head.embedder != embedder or int(head.config["dim"]) != int(dim):
        return None
    return head
