"""What the training loop trains: a :class:`Task` owns the module, its loss, its validation sums
and its optimizers; :class:`ClassificationTask` is cross-entropy (optional CosFace margin)."""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from lookalike.models.datasets import to_float
from lookalike.models.heads import margin_loss
from lookalike.models.train_config import TrainConfig, TrainingError, make_optimizer

class Task:
    """A module plus how to train and validate it. Subclass and override :meth:`loss`.

    ``mean``/``std`` normalise uint8 batches per channel (see :meth:`prepare`).
    """

    def __init__(self, module: nn.Module, mean: list[float], std: list[float]) -> None:
        self.module = module
        self.mean = list(mean)
        self.std = list(std)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> the float input of the module."""
        return to_float(images, self.mean, self.std)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The training loss of one batch."""
        raise NotImplementedError

    def validation_sums(self, inputs: torch.Tensor, labels: torch.Tensor | None
                        ) -> dict[str, float]:
        """Per-batch *sums* (e.g. summed loss, correct predictions); the trainer divides by the
        number of validation items and names them ``val_<key>``."""
        return {"loss": float(self.loss(inputs, labels)) * len(inputs)}

    def make_optimizers(self, config: TrainConfig) -> list[torch.optim.Optimizer]:
        """One optimizer over all parameters; tasks with several (GANs) override this."""
        return [make_optimizer(self.module.parameters(), config)]

    def training_step(self, inputs: torch.Tensor, labels: torch.Tensor | None,
                      optimizers: list[torch.optim.Optimizer]) -> float:
        """One update; returns the batch's loss. Multi-optimizer tasks override this."""
        loss = self.loss(inputs, labels)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        return float(loss.detach())


class ClassificationTask(Task):
    """Cross-entropy on the module's logits; validation reports loss and accuracy.

    The module's ``forward`` must return logits ``[n, classes]``.
    """

    def __init__(self, module: nn.Module, mean: list[float], std: list[float],
                 label_smoothing: float = 0.0, margin_logit: float = 0.0) -> None:
        super().__init__(module, mean, std)
        self.label_smoothing = label_smoothing
        #: CosFace margin in logit units (margin x scale of a cosine head; 0: plain softmax).
        self.margin_logit = float(margin_logit)

    def loss(self, inputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise TrainingError("classification needs labels")
        return margin_loss(self.module(inputs), labels, self.margin_logit, self.label_smoothing)

    def validation_sums(self, inputs: torch.Tensor, labels: torch.Tensor | None
                        ) -> dict[str, float]:
        if labels is None:
            raise TrainingError("classification needs labels")
        logits = self.module(inputs)
        return {"loss": float(F.cross_entropy(logits, labels, reduction="sum")),
                "accuracy": float((logits.argmax(dim=1) == labels).sum())}

