"""The activations of paper 000, above all LReLU-Softplus (eq. 6): values, gradients, extremes."""

from __future__ import annotations

import math

import pytest
import torch

from lookalike.errors import UnknownNameError
from lookalike.models.activations import (
    ACTIVATIONS,
    LReLUSoftplus,
    activation_function,
    lrelu_softplus,
    make_activation,
)

EXTREMES = [-1e4, -80.0, -1.0, -1e-6, 0.0, 1e-6, 1.0, 80.0, 1e4]


def reference(x: float, a: float = 0.01) -> float:
    """Eq. 6 in plain Python floats (log1p/exp are exact where they are used)."""
    if x <= 0:
        return a * x
    return x + math.log1p(math.exp(-x)) - math.log(2.0)  # ln(1 + e^x) written overflow-free


def test_values_match_equation_6_including_extremes() -> None:
    x = torch.tensor(EXTREMES, dtype=torch.float64)
    y = lrelu_softplus(x, 0.01)
    expected = torch.tensor([reference(v) for v in EXTREMES], dtype=torch.float64)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-15)
    # spot values: ln 2 - ln 2 at the origin, a*x on the left, ~x - ln 2 far right
    assert y[4].item() == 0.0
    assert y[0].item() == pytest.approx(-100.0)
    assert y[-1].item() == pytest.approx(1e4 - math.log(2.0))


def test_continuous_at_zero_but_slope_jumps() -> None:
    eps = 1e-7
    left = lrelu_softplus(torch.tensor(-eps, dtype=torch.float64)).item()
    right = lrelu_softplus(torch.tensor(eps, dtype=torch.float64)).item()
    assert abs(left) < 1e-8 and abs(right) < 1e-7  # both sides tend to 0
    x = torch.tensor([-eps, eps], dtype=torch.float64, requires_grad=True)
    lrelu_softplus(x, 0.01).sum().backward()
    assert x.grad[0].item() == pytest.approx(0.01)
    assert x.grad[1].item() == pytest.approx(0.5, abs=1e-6)  # sigmoid(0+)


def test_gradients_are_finite_at_extremes_and_match_analytic() -> None:
    x = torch.tensor(EXTREMES, dtype=torch.float64, requires_grad=True)
    lrelu_softplus(x, 0.02).sum().backward()
    grad = x.grad
    assert torch.isfinite(grad).all()
    expected = torch.where(x.detach() > 0, torch.sigmoid(x.detach()),
                           torch.full_like(x.detach(), 0.02))
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)


def test_gradcheck_away_from_the_kink() -> None:
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(64, dtype=torch.float64, generator=generator) * 5)
    x = x[x.abs() > 1e-3].clone().requires_grad_(True)  # finite differences straddling 0 are wrong
    assert torch.autograd.gradcheck(lambda t: lrelu_softplus(t, 0.01), (x,))
    assert torch.autograd.gradgradcheck(lambda t: lrelu_softplus(t, 0.01), (x,))


def test_float32_extremes_have_no_nan_or_inf() -> None:
    x = torch.tensor([-3e38, -1e4, -80.0, 0.0, 80.0, 88.8, 1e4, 3e38], requires_grad=True)
    y = lrelu_softplus(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_every_activation_builds_and_module_matches_functional() -> None:
    x = torch.linspace(-6, 6, 101)
    for name in ACTIVATIONS:
        module = make_activation(name, negative_slope=0.05)
        torch.testing.assert_close(module(x), activation_function(name, 0.05)(x))
    assert isinstance(make_activation("lrelu-softplus"), LReLUSoftplus)
    torch.testing.assert_close(make_activation("lrelu", 0.05)(torch.tensor([-2.0])),
                               torch.tensor([-0.1]))


def test_unknown_activation_is_a_clear_error() -> None:
    with pytest.raises(UnknownNameError, match="unknown activation 'swishy'"):
        make_activation("swishy")
