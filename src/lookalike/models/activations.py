"""Activation functions compared in paper 000 (Table 2 / Fig. 5), including its LReLU-Softplus.

LReLU-Softplus (paper 000, eq. 6) is ``a * x`` for ``x <= 0`` and ``ln(1 + e^x) - ln 2`` for
``x > 0``. Both pieces are 0 at ``x = 0``, so the function is continuous there; its slope jumps
from ``a`` (left) to ``1/2`` (right), so despite the paper's wording it is not smooth at 0.

Stability: the softplus piece goes through :func:`torch.nn.functional.softplus`, which switches to
the identity above a threshold, so ``e^x`` never overflows; :func:`torch.where` picks one piece per
element and the unused piece is finite everywhere, so no NaN leaks into the gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lookalike.errors import UnknownNameError

LN2 = math.log(2.0)

#: The activations of paper 000's comparison, in the paper's table order.
ACTIVATIONS: tuple[str, ...] = ("relu", "softplus", "tanh", "sigmoid", "lrelu", "lrelu-softplus")

#: Default negative slope ``a`` for LReLU and LReLU-Softplus ("a constant close to 0").
DEFAULT_NEGATIVE_SLOPE = 0.01


def lrelu_softplus(x: torch.Tensor, negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> torch.Tensor:
    """Paper 000's eq. 6: ``a*x`` for ``x <= 0``, ``softplus(x) - ln 2`` for ``x > 0``."""
    # softplus(x) - ln 2 = ln((1 + e^x) / 2); F.softplus is exact and overflow-free for any x.
    positive = F.softplus(x) - LN2
    return torch.where(x > 0, positive, x * negative_slope)


class LReLUSoftplus(nn.Module):
    """Module form of :func:`lrelu_softplus`."""

    def __init__(self, negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrelu_softplus(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


def make_activation(name: str, negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> nn.Module:
    """A fresh activation module by name (one of :data:`ACTIVATIONS`)."""
    builders: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU,
        "softplus": nn.Softplus,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "lrelu": lambda: nn.LeakyReLU(negative_slope),
        "lrelu-softplus": lambda: LReLUSoftplus(negative_slope),
    }
    if name not in builders:
        raise UnknownNameError(f"unknown activation {name!r}; available: {', '.join(ACTIVATIONS)}")
    return builders[name]()


def activation_function(name: str, negative_slope: float = DEFAULT_NEGATIVE_SLOPE
                        ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Functional form of :func:`make_activation` (for code that does not hold modules)."""
    functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": F.relu,
        "softplus": F.softplus,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "lrelu": lambda x: F.leaky_relu(x, negative_slope),
        "lrelu-softplus": lambda x: lrelu_softplus(x, negative_slope),
    }
    if name not in functions:
        raise UnknownNameError(f"unknown activation {name!r}; available: {', '.join(ACTIVATIONS)}")
    return functions[name]
