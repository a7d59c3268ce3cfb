"""Readouts: node features -> per-atom energies (before per-species scale and shift).

``[n_atoms, irreps_in.dim]`` -> ``[n_atoms, irreps_out.dim]`` (default ``1x0e``: one energy per atom, network
units). Scalar outputs read only the scalar inputs, which sit alike in the e3nn and channels-last
layouts, so MACE uses these readouts too.
"""

from __future__ import annotations

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3

from mpnn_ip.nn.activations import activation
from mpnn_ip.nn.wiring import check_linear_paths


class LinearReadout(torch.nn.Module):
    """Equivariant linear map (``o3.Linear``) of node features to ``irreps_out`` (default one even scalar).

    Only the input irreps equal to an output irrep contribute (the ``0e`` channels for an
    energy). Input ``node_features: [n_atoms, irreps_in.dim]`` -> ``[n_atoms, irreps_out.dim]``.
    """

    def __init__(self, irreps_in, irreps_out="1x0e"):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        check_linear_paths(self.irreps_in, self.irreps_out, type(self).__name__)
        self.linear = o3.Linear(self.irreps_in, self.irreps_out)

    def forward(self, node_features: torch.Tensor) -> torch.Tensor:
        return self.linear(node_features)


class MLPReadout(torch.nn.Module):
    """Linear to ``hidden_irreps`` scalars, nonlinearity, linear to ``irreps_out`` (MACE's last readout).

    Args:
        irreps_in: node feature irreps (only their scalars are read).
        hidden_irreps: scalar irreps of the hidden layer, e.g. ``"16x0e"``.
        nonlinearity: activation of even hidden scalars (odd ones get tanh).
        irreps_out: default one even scalar (the atomic energy).
    Input ``node_features: [n_atoms, irreps_in.dim]`` -> ``[n_atoms, irreps_out.dim]``.
    """

    def __init__(self, irreps_in, hidden_irreps="16x0e", nonlinearity: str = "silu", irreps_out="1x0e"):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.hidden_irreps = o3.Irreps(hidden_irreps)
        self.irreps_out = o3.Irreps(irreps_out)
        if any(ir.l != 0 for _, ir in self.hidden_irreps):
            raise ValueError(f"MLPReadout: hidden irreps {self.hidden_irreps} must be scalars (l = 0)")
        check_linear_paths(self.irreps_in, self.hidden_irreps, type(self).__name__)
        check_linear_paths(self.hidden_irreps, self.irreps_out, type(self).__name__)
        self.linear_in = o3.Linear(self.irreps_in, self.hidden_irreps)
        acts = [activation(nonlinearity) if ir.p == 1 else torch.tanh for _, ir in self.hidden_irreps]
        self.nonlinearity = e3nn_nn.Activation(self.hidden_irreps, acts)
        self.linear_out = o3.Linear(self.hidden_irreps, self.irreps_out)

    def forward(self, node_features: torch.Tensor) -> torch.Tensor:
        return self.linear_out(self.nonlinearity(self.linear_in(node_features)))
