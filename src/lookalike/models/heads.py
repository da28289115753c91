"""Classifier heads shared by the learned embedders (cnn, finetune, projection).

A cosine classifier (NormFace / CosFace) scores ``scale * cos(x, w_c)``: features and class
weights are normalised, so training pulls each class onto one direction, which is exactly what
cosine retrieval over the embedding rewards; a plain linear softmax also rewards feature *length*,
which retrieval ignores. ``margin_loss`` adds CosFace's margin (the true class must win by
``margin`` in cosine), which tightens the classes further.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("softmax", "cosine")


class CosineClassifier(nn.Module):
    """Logits ``scale * cos(x, w_c)`` (normalised features and class weights, as in NormFace /
    CosFace); a margin, if any, is applied by :func:`margin_loss` in the loss only."""

    def __init__(self, in_features: int, classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def make_classifier(kind: str, in_features: int, classes: int, scale: float = 16.0) -> nn.Module:
    """``cosine``: :class:`CosineClassifier`; ``softmax``: a linear layer."""
    if kind == "cosine":
        return CosineClassifier(in_features, classes, scale)
    return nn.Linear(in_features, classes)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, margin_logit: float = 0.0,
                label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy with ``margin_logit`` taken off each true class's logit (CosFace)."""
    if margin_logit:
        logits = logits - margin_logit * F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
