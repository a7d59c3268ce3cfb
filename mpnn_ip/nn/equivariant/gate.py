"""Gated equivariant nonlinearity (e3nn ``Gate``).

``[n_atoms, irreps_in.dim]`` (scalars, gate scalars, gated irreps; e3nn layout) -> ``[n_atoms, irreps_out.dim]``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3

from mpnn_ip.nn.activations import activation

DEFAULT_SCALAR_NONLINEARITIES = {"e": "silu", "o": "tanh"}
DEFAULT_GATE_NONLINEARITIES = {"e": "silu", "o": "tanh"}


def _by_parity(names: Mapping[str, str], irreps: o3.Irreps, what: str) -> list:
    acts = []
    for _, ir in irreps:
        key = "e" if ir.p == 1 else "o"
        if key not in names:
            raise ValueError(
                f"EquivariantGate: {what} has no nonlinearity for parity {key!r} (needed by {ir}); got {dict(names)}"
            )
        acts.append(activation(names[key]))
    return acts


class EquivariantGate(torch.nn.Module):
    """Scalars through a pointwise nonlinearity; each l > 0 channel multiplied by its own gate scalar.

    Input layout (``irreps_in``): ``irreps_scalars + irreps_gates + irreps_gated`` where
    ``irreps_gates`` has one scalar of parity ``gate_parity`` per gated channel. Output
    (``irreps_out``): ``irreps_scalars + irreps_gated``.

    Args:
        irreps_scalars: scalar (l = 0) irreps that pass through ``nonlinearity_scalars``.
        irreps_gated: l > 0 irreps, each channel scaled by ``nonlinearity_gates(gate)``.
        gate_parity: "0e" or "0o", the irrep of the gate scalars.
        nonlinearity_scalars: {"e": name, "o": name} for even / odd scalars (odd needs an odd function).
        nonlinearity_gates: {"e": name, "o": name} for the gates.
    Input ``[n_atoms, irreps_in.dim]`` -> ``[n_atoms, irreps_out.dim]``.
    """

    def __init__(
        self,
        irreps_scalars,
        irreps_gated,
        gate_parity: str = "0e",
        nonlinearity_scalars: Mapping[str, str] = DEFAULT_SCALAR_NONLINEARITIES,
        nonlinearity_gates: Mapping[str, str] = DEFAULT_GATE_NONLINEARITIES,
    ):
        super().__init__()
        irreps_scalars, irreps_gated = o3.Irreps(irreps_scalars), o3.Irreps(irreps_gated)
        if any(ir.l != 0 for _, ir in irreps_scalars):
            raise ValueError(f"EquivariantGate: irreps_scalars {irreps_scalars} must all have l = 0")
        if any(ir.l == 0 for _, ir in irreps_gated):
            raise ValueError(f"EquivariantGate: irreps_gated {irreps_gated} must all have l > 0")
        gate_ir = o3.Irrep(gate_parity)
        if gate_ir.l != 0:
            raise ValueError(f"EquivariantGate: gate_parity must be 0e or 0o, got {gate_parity}")
        irreps_gates = o3.Irreps([(mul, gate_ir) for mul, _ in irreps_gated])
        self.gate = e3nn_nn.Gate(
            irreps_scalars,
            _by_parity(nonlinearity_scalars, irreps_scalars, "irreps_scalars"),
            irreps_gates,
            _by_parity(nonlinearity_gates, irreps_gates, "irreps_gates"),
            irreps_gated,
        )
        self.irreps_in = self.gate.irreps_in
        self.irreps_out = self.gate.irreps_out

    def forward(self, node_features: torch.Tensor) -> torch.Tensor:
        return self.gate(node_features)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"
