"""NequIP 0.19's scalar MLP: bias-free linear layers with a fixed weight scale, activations between them.

``x [n, dims[0]]`` -> ``[n, dims[-1]]`` (any scalar features; the per-atom energy readout of
:class:`~mpnn_ip.models.nequip.NequIP` with ``readout_mlp``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mpnn_ip.nn.activations import activation


class ScalarMLP(torch.nn.Module):
    """``h_{k+1} = act(h_k @ (alpha_k W_k))``, no activation after the last layer, no biases.

    The weights ``W_k [dims[k], dims[k+1]]`` start uniform with unit variance and are scaled by
    ``alpha_k = gain_k / sqrt(dims[k])`` with ``gain_0 = 1`` and ``gain_k = sqrt(2)`` after an
    activation (NequIP's ``ScalarMLPFunction`` with ``forward_weight_init=True``), so its
    weights are taken over from a NequIP model unchanged.

    Args:
        dims: widths ``[in, hidden..., out]`` (at least two).
        nonlinearity: activation name (:data:`~mpnn_ip.nn.activations.ACTIVATIONS`), or None for a
            deep linear map.
    Input ``[n, dims[0]]`` -> ``[n, dims[-1]]``.
    """

    def __init__(self, dims: Sequence[int], nonlinearity: str | None = "silu"):
        super().__init__()
        self.dims = [int(d) for d in dims]
        if len(self.dims) < 2:
            raise ValueError(f"ScalarMLP needs at least input and output widths, got dims={self.dims}")
        self.nonlinearity = nonlinearity
        self.act = activation(nonlinearity) if nonlinearity is not None else None
        self.weights = torch.nn.ParameterList()
        self.alphas = []
        for k, (h_in, h_out) in enumerate(zip(self.dims, self.dims[1:])):
            gain = 1.0 if (self.act is None or k == 0) else math.sqrt(2.0)
            self.alphas.append(gain / math.sqrt(h_in))
            self.weights.append(torch.nn.Parameter(torch.empty(h_in, h_out).uniform_(-math.sqrt(3.0), math.sqrt(3.0))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for k, (weight, alpha) in enumerate(zip(self.weights, self.alphas)):
            x = x @ (weight * alpha)
            if self.act is not None and k != last:
                x = self.act(x)
        return x

    def extra_repr(self) -> str:
        return f"dims={self.dims}, nonlinearity={self.nonlinearity!r}"
