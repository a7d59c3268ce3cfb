"""Species-dependent self-interaction: one equivariant linear map per chemical species.

``node_features [n_atoms, irreps_in.dim]`` (e3nn layout), ``species [n_atoms]`` -> ``[n_atoms, irreps_out.dim]``.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3


class SpeciesSelfInteraction(torch.nn.Module):
    """``x_i -> W[s_i] x_i``: an equivariant linear map chosen by the species of atom i.

    The same function as NequIP's self-connection ``o3.FullyConnectedTensorProduct(irreps_in,
    f"{S}x0e", irreps_out)`` with the species one-hot as second input (same weights, same
    ``1/sqrt(mul_in * S)`` normalisation), computed faster: one ``o3.Linear`` from ``irreps_in``
    to S copies of each output irrep, then each atom keeps the copy of its own species. No
    loop over species; cost is S linear maps of the node features.

    Output irreps absent from ``irreps_in`` are zero (as in the tensor-product form); at least
    one output irrep must be present in ``irreps_in``.

    Args:
        irreps_in: node feature irreps.
        num_species: number of species S.
        irreps_out: output irreps.
    Forward: ``node_features [n_atoms, irreps_in.dim]``, ``species [n_atoms]`` -> ``[n_atoms, irreps_out.dim]``.
    """

    def __init__(self, irreps_in, num_species: int, irreps_out):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.num_species = int(num_species)
        if not any(ir in self.irreps_in for _, ir in self.irreps_out):
            raise ValueError(
                f"SpeciesSelfInteraction: no irrep of output irreps {self.irreps_out} is in input irreps {self.irreps_in}"
            )
        per_species = o3.Irreps([(self.num_species * mul, ir) for mul, ir in self.irreps_out])
        self.linear = o3.Linear(self.irreps_in, per_species)
        # o3.Linear divides by sqrt(mul_in); the one-hot tensor product also sums over S species
        self.species_normalization = 1.0 / math.sqrt(self.num_species)
        self._blocks = [(mul, ir.dim) for mul, ir in self.irreps_out]

    def forward(self, node_features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        all_species = self.linear(node_features)
        n_atoms = node_features.shape[0]
        atoms = torch.arange(n_atoms, device=species.device)
        out, start = [], 0
        for mul, dim in self._blocks:
            size = self.num_species * mul * dim
            block = all_species[:, start : start + size].reshape(n_atoms, self.num_species, mul * dim)
            out.append(block[atoms, species])
            start += size
        return torch.cat(out, dim=-1) * self.species_normalization

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out} per species (S={self.num_species})"
