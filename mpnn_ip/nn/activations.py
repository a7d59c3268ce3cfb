"""Activation functions by name, so that model configs stay plain strings.

All act elementwise: any shape in, the same shape out.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus(x) - log 2 (SchNet's activation; zero at x = 0)."""
    return torch.nn.functional.softplus(x) - math.log(2.0)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": torch.nn.functional.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "abs": torch.abs,
    "ssp": shifted_softplus,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown nonlinearity {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]
