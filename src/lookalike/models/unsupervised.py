"""The shared base of the embedders that learn without labels (autoencoders, InfoGAN).

It follows :class:`~lookalike.models.cnn.CNNEmbedder`'s contract so the registry, ``Project``
and ``lookalike train`` treat every learned embedder alike: ``needs_fit = True``,
``default_training`` (:class:`~lookalike.models.training.TrainConfig` overrides),
``fit(images, labels=None, **train_options)`` and the fast path
``fit_tensors(data, checkpoint_dir=None, resume=False, **options)``. Labels are accepted and
ignored: these models never see them (the validation share is a plain seeded permutation).

A subclass supplies the network (:meth:`build_module`), what the trainer optimises
(:meth:`make_task`), how a batch becomes features (:meth:`encode`) and its own settings
(:meth:`model_config`); saving, loading, fingerprints and shape checks live here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from lookalike.errors import ModelMismatchError
from lookalike.models.base import Embedder, l2_normalise
from lookalike.models.weights import state_arrays, restore_module
from lookalike.models.cnn import TRAINING_FILE, NotTrainedError
from lookalike.models.datasets import (
    PRODUCT_SIZE,
    ImageTensors,
    channel_stats,
    images_to_tensor,
    to_float,
)
from lookalike.models.learners import TensorLearner
from lookalike.models.training import Task, TrainConfig, TrainResult, train


def _size_pair(image_size: Sequence[int] | int, who: str) -> tuple[int, int]:
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ModelMismatchError(f"{who}: image_size must be (width, height) in pixels, "
                                 f"got {image_size!r}")
    width, height = (int(v) for v in pair)
    if min(width, height) < 8:
        raise ModelMismatchError(f"{who}: image_size {width}x{height} is too small (min 8x8)")
    return width, height


class UnsupervisedEmbedder(TensorLearner, Embedder):
    """A torch network trained without labels; ``encode`` of a normalised batch is the embedding.

    ``mean``/``std`` (per channel, [0, 1] units) are set by ``fit`` and saved, so a loaded model
    preprocesses exactly as it was trained.
    """

    needs_fit: ClassVar[bool] = True
    #: ``Project.train`` gives these every training item, labelled or not.
    needs_labels: ClassVar[bool] = False
    batch_size = 256
    #: TrainConfig overrides of this embedder's default run (subclasses set their own).
    default_training: ClassVar[dict[str, Any]] = {}
    option_choices = dict(TrainConfig.CHOICES)

    @classmethod
    def training_options(cls) -> dict[str, Any]:
        """:class:`TrainConfig` fields with this method's defaults."""
        return TrainConfig.settings(cls.default_training)

    def __init__(self, image_size: Sequence[int] | int = PRODUCT_SIZE, channels: int = 3,
                 mean: Sequence[float] = (), std: Sequence[float] = (), seed: int = 0) -> None:
        if channels not in (1, 3):
            raise ModelMismatchError(f"{self.kind}: channels must be 1 (grey) or 3 (RGB), "
                                     f"got {channels}")
        self.image_size = _size_pair(image_size, self.kind)
        self.channels = int(channels)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.seed = int(seed)
        self.training_result: TrainResult | None = None
        self._module: nn.Module | None = None
        self._fingerprint: str | None = None

    # ---- what subclasses provide ----------------------------------------------------------------
    def model_config(self) -> dict[str, Any]:
        """The subclass's own JSON-able settings (merged into :meth:`config`)."""
        return {}

    def make_module(self) -> nn.Module:
        """A new network for the current config (called inside a seeded RNG scope)."""
        raise NotImplementedError

    def make_task(self, module: nn.Module) -> Task:
        """What the trainer optimises."""
        raise NotImplementedError

    def encode(self, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """Raw features ``[n, dim]`` of a normalised float batch (module in eval mode)."""
        raise NotImplementedError

    def normalisation(self, data: ImageTensors) -> tuple[list[float], list[float]]:
        """Per-channel mean and std used to turn uint8 batches into network inputs."""
        return channel_stats(data.images, seed=self.seed)

    def after_fit(self, module: nn.Module, data: ImageTensors) -> None:
        """Hook run once training has finished (e.g. to refresh statistics on real data)."""

    # ---- identity -------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "channels": self.channels,
                **self.model_config(), "mean": self.mean, "std": self.std, "seed": self.seed}

    def _weights_fingerprint(self) -> dict[str, str]:
        if self._module is None:
            return {"weights": "untrained"}
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, array in sorted(self.state_tensors().items()):
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(array).tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return {"weights": self._fingerprint}

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            raise NotTrainedError(f"{self.name}: not trained yet; call fit() or load a saved model")
        return self._module

    def build_module(self) -> nn.Module:
        """A freshly initialised network (seeded; the caller's RNG is left untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.make_module()

    # ---- learning -------------------------------------------------------------------------------
    def fit(self, images: Sequence[Image.Image], labels: Sequence[Any] | None = None,
            **options: Any) -> "UnsupervisedEmbedder":
        """Train on PIL images (resized/padded to ``image_size``). ``labels`` are ignored.

        ``options`` are :class:`TrainConfig` fields plus ``checkpoint_dir`` and ``resume``.
        """
        tensor = images_to_tensor(images, self.image_size, self.channels)
        return self.fit_tensors(ImageTensors(tensor), **options)

    def fit_tensors(self, data: ImageTensors, checkpoint_dir: str | Path | None = None,
                    resume: bool = False, **options: Any) -> "UnsupervisedEmbedder":
        """Train on decoded uint8 :class:`ImageTensors` (labels, if any, are not used)."""
        self._check_shape(data.images, "training data")
        config = TrainConfig.from_dict({"seed": self.seed, **self.default_training, **options})
        unlabelled = ImageTensors(data.images)
        self.mean, self.std = self.normalisation(unlabelled)
        module = self.build_module()
        self.training_result = train(self.make_task(module), unlabelled, config,
                                     checkpoint_dir=checkpoint_dir, resume=resume)
        self.after_fit(module, unlabelled)
        self._module = module.eval()
        self._fingerprint = None
        return self

    # ---- inference ------------------------------------------------------------------------------
    def _check_shape(self, images: torch.Tensor, what: str) -> None:
        width, height = self.image_size
        expected = (self.channels, height, width)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ModelMismatchError(
                f"{self.name}: {what} is {images.dtype} {tuple(images.shape)} but the model takes "
                f"uint8 [n, {self.channels}, {height}, {width}]; create it with "
                f"image_size=[width, height] and channels matching the data")

    def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        return self._features(images_to_tensor(images, self.image_size, self.channels))

    @torch.no_grad()
    def _features(self, batch: torch.Tensor) -> np.ndarray:
        module = self.module
        module.eval()
        return self.encode(module, to_float(batch, self.mean, self.std)).numpy()

    def embed_tensors(self, images: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """Embed uint8 ``[n, c, h, w]`` tensors (already at the model's size) to unit rows."""
        self._check_shape(images, "the input")
        size = batch_size or self.batch_size
        out = [self._features(images[start:start + size]) for start in range(0, len(images), size)]
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalise(np.concatenate(out))

    # ---- persistence ----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, np.ndarray]:
        return state_arrays(self._module)

    def load_state_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        if not tensors:
            return
        module = restore_module(self.build_module(), tensors, self.name)
        self._module = module.eval()
        self._fingerprint = None

    def save(self, folder: str | Path) -> Path:
        """``config.json`` + ``weights.safetensors``, plus ``training.json`` (the run's history)."""
        folder = super().save(folder)
        if self.training_result is not None:
            from lookalike.storage import atomic_write_text

            atomic_write_text(Path(folder) / TRAINING_FILE,
                              json.dumps(self.training_result.to_json(), indent=1))
        return folder
