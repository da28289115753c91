"""The training contract: what an embedder that learns takes, declared by the class it derives.

Every learning embedder (``needs_fit``) keeps :meth:`~lookalike.models.base.Embedder.fit` on
PIL images. A family that trains faster from other input says so by deriving one of these, each
with exactly one entry point, instead of being recognised by the methods it happens to have:

- :class:`TensorLearner` -- :meth:`~TensorLearner.fit_tensors` on uint8
  :class:`~lookalike.models.datasets.ImageTensors` at the model's ``image_size``/``channels``
  (``cnn``, ``cnn-hash``, ``finetune``, the autoencoders, InfoGAN), with checkpoints and resume;
- :class:`VectorLearner` -- :meth:`~VectorLearner.fit_vectors` on the unit vectors of the
  model's ``base`` embedder (``pca``, ``projection``).

:func:`training_input` names the family of a class; ``Project.train`` dispatches on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

    from lookalike.models.base import Embedder
    from lookalike.models.datasets import ImageTensors

#: What a learning embedder trains on: ``vectors`` of a base, uint8 ``tensors``, or ``images``.
TrainingInput = Literal["vectors", "tensors", "images"]


class TensorLearner(ABC):
    """An embedder that trains on decoded uint8 image tensors."""

    image_size: tuple[int, int]
    channels: int

    @abstractmethod
    def fit_tensors(self, data: ImageTensors, checkpoint_dir: str | Path | None = None,
                    resume: bool = False, **options: Any) -> TensorLearner:
        """Train on ``data`` (``[n, channels, height, width]`` at ``image_size``, labels when the
        method needs them); with ``checkpoint_dir`` every epoch is kept there and ``resume``
        continues a stopped run. ``options`` are the method's training settings."""


class VectorLearner(ABC):
    """An embedder that learns a map of its ``base`` embedder's vectors."""

    base: Embedder

    @abstractmethod
    def fit_vectors(self, vectors: np.ndarray, labels: Sequence[Any] | None = None,
                    **options: Any) -> VectorLearner:
        """Fit on the base's unit vectors ``[n, base.dim]`` (and labels when needed)."""


def training_input(cls: type) -> TrainingInput:
    """The input family an embedder class trains on (``images`` unless it derives a learner)."""
    if issubclass(cls, VectorLearner):
        return "vectors"
    if issubclass(cls, TensorLearner):
        return "tensors"
    return "images"
