"""Training small heads on precomputed feature vectors (seconds, not minutes).

The image trainer (:mod:`lookalike.models.training`) feeds uint8 image batches; the fine-tuning
head (stage 1 of ``finetune``) and the learned ``projection`` instead learn from float vectors
that were computed once (pooled backbone features, a base embedder's output). This is the same
recipe on a ``[n, d]`` float tensor: the same seeded per-class validation share as the image
trainer (:func:`~lookalike.models.datasets.stratified_split`), Adam, early stopping on
validation accuracy and the best epoch's weights at the end, no global RNG or thread changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.models.datasets import stratified_split
from lookalike.models.training import TrainingError, module_tensors
from lookalike.threads import torch_threads

LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class VectorTrainResult:
    """Per-epoch history (``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``,
    ``val_top3``), the best epoch by validation accuracy, and the split sizes."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = float("nan")
    train_size: int = 0
    validation_size: int = 0


def train_on_vectors(module: nn.Module, vectors: torch.Tensor, labels: torch.Tensor, *,
                     epochs: int = 10, batch_size: int = 256, learning_rate: float = 1e-3,
                     weight_decay: float = 0.0, validation_fraction: float = 0.1,
                     patience: int = 3, seed: int = 0, threads: int | None = 2,
                     loss_function: LossFunction | None = None,
                     on_epoch: Callable[[dict[str, float]], None] | None = None
                     ) -> VectorTrainResult:
    """Train ``module`` (float ``[n, d]`` in, class logits out) with Adam on ``vectors``.

    ``loss_function(logits, labels)`` defaults to cross-entropy (a margin head passes its own).
    The validation rows are the ones the image trainer would hold out for the same
    ``validation_fraction`` and ``seed``, so a later image-level stage validates on the same
    items. The module ends in eval mode with the weights of the best validation epoch.
    """
    if epochs < 1:
        raise TrainingError(f"epochs must be >= 1, got {epochs}")
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise TrainingError(f"need [n, d] vectors with n labels, got {tuple(vectors.shape)} and "
                            f"{len(labels)} labels")
    loss_function = loss_function or F.cross_entropy
    train_rows, val_rows = stratified_split(labels, len(vectors), validation_fraction, seed)
    if len(val_rows) == 0 or len(train_rows) == 0:
        raise TrainingError(f"{len(vectors)} vectors are too few for a validation share of "
                            f"{validation_fraction}")
    train_x, train_y = vectors[train_rows], labels[train_rows]
    val_x, val_y = vectors[val_rows], labels[val_rows]
    result = VectorTrainResult(train_size=len(train_rows), validation_size=len(val_rows))
    with torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad],
                                     lr=learning_rate, weight_decay=weight_decay)
        best_weights, bad_epochs = None, 0
        for epoch in range(epochs):
            module.train()
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(len(train_x), generator=generator)
            loss_sum = 0.0
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                loss = loss_function(module(train_x[rows]), train_y[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(rows)
            if not math.isfinite(loss_sum):
                raise TrainingError(f"the training loss became {loss_sum} in epoch "
                                    f"{epoch + 1}; lower the learning rate")
            row = {"epoch": epoch + 1, "train_loss": loss_sum / len(train_x),
                   **_validate(module, val_x, val_y)}
            result.history.append(row)
            if on_epoch is not None:
                on_epoch(dict(row))
            if math.isnan(result.best_value) or row["val_accuracy"] > result.best_value:
                result.best_value, result.best_epoch = row["val_accuracy"], epoch + 1
                best_weights, bad_epochs = module_tensors(module), 0
            else:
                bad_epochs += 1
                if patience and bad_epochs >= patience:
                    break
        if best_weights is not None:
            module.load_state_dict(best_weights)
    module.eval()
    return result


@torch.no_grad()
def _validate(module: nn.Module, vectors: torch.Tensor, labels: torch.Tensor,
              batch_size: int = 4096) -> dict[str, float]:
    module.eval()
    loss = correct = top3 = 0.0
    for start in range(0, len(vectors), batch_size):
        logits = module(vectors[start:start + batch_size])
        target = labels[start:start + batch_size]
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += float((logits.argmax(1) == target).sum())
        k = min(3, logits.shape[1])
        top3 += float((logits.topk(k, dim=1).indices == target[:, None]).any(1).sum())
    n = max(1, len(vectors))
    return {"val_loss": loss / n, "val_accuracy": correct / n, "val_top3": top3 / n}
