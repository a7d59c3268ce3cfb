"""Radial MLP: invariant edge-length features -> per-edge tensor-product weights.

``radial_embedding [n_edges, num_basis]`` -> ``[n_edges, num_out]`` (dimensionless).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet

from mpnn_ip.nn.activations import activation


class RadialMLP(torch.nn.Module):
    """Bias-free MLP on the radial embedding, one output per tensor-product weight.

    Uses e3nn's ``FullyConnectedNet`` (weights ~ N(0, 1) divided by sqrt(fan-in), activation
    rescaled to unit second moment), the radial network of NequIP and MACE. Without biases a
    radial embedding that vanishes at r_max gives weights that vanish there too, so messages
    switch off smoothly at the cutoff.

    Args:
        num_basis: size of the radial embedding (number of Bessel functions).
        hidden: widths of the hidden layers, e.g. ``[64, 64]``.
        num_out: number of outputs (``TensorProduct.weight_numel``).
        nonlinearity: name of the activation ("silu", "tanh", "ssp", ...).
    Input ``radial_embedding: [n_edges, num_basis]`` (and optionally ``columns [k]``, long) ->
    ``[n_edges, num_out]``, or ``[n_edges, k]``: those output columns in that order, selected
    from the last layer's weights rather than gathered from the per-edge output.
    """

    def __init__(self, num_basis: int, hidden: Sequence[int], num_out: int, nonlinearity: str = "silu"):
        super().__init__()
        self.num_basis = int(num_basis)
        self.num_out = int(num_out)
        self.irreps_in = o3.Irreps(f"{self.num_basis}x0e")
        self.irreps_out = o3.Irreps(f"{self.num_out}x0e")
        self.net = FullyConnectedNet(
            [self.num_basis, *[int(h) for h in hidden], self.num_out], activation(nonlinearity)
        )

    def forward(self, radial_embedding: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        if columns is None:
            return self.net(radial_embedding)
        *hidden_layers, last = list(self.net)
        hidden = radial_embedding
        for layer in hidden_layers:
            hidden = layer(hidden)
        # e3nn's output layer (no activation): weight / sqrt(fan-in * var_in / var_out)
        return hidden @ (last.weight.index_select(1, columns) / (last.h_in * last.var_in / last.var_out) ** 0.5)
