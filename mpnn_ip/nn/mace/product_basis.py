"""MACE's product basis block: symmetric contraction, linear, plus the interaction's skip.

Channels-last ``atomic_basis [n_atoms, irreps_in.dim]``, ``species [n_atoms]`` -> ``[n_atoms, irreps_out.dim]``.
"""

from __future__ import annotations

import torch
from e3nn import o3

from mpnn_ip.nn.edge_chunks import AtomChunking
from mpnn_ip.nn.mace.linear import ChannelsLastLinear
from mpnn_ip.nn.mace.symmetric_contraction import SymmetricContraction


class ProductBasis(torch.nn.Module):
    """``h_new = linear(B(A)) + skip`` (MACE's ``EquivariantProductBasisBlock`` with ``use_sc``).

    Args:
        irreps_in: atomic basis A, ``C x (0e+1o+...)``.
        irreps_out: new hidden features (same C), e.g. ``64x0e+64x1o``, or ``64x0e`` for the last layer.
        correlation: body order ν of the symmetric contraction (1 to 3).
        num_species: S.
    Forward (channels-last): ``atomic_basis [n_atoms, irreps_in.dim]``, ``species [n_atoms]``,
    ``skip [n_atoms, irreps_out.dim]`` or None -> ``[n_atoms, irreps_out.dim]``.
    """

    def __init__(self, irreps_in, irreps_out, correlation: int, num_species: int):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.symmetric_contraction = SymmetricContraction(self.irreps_in, self.irreps_out, correlation, num_species)
        self.linear = ChannelsLastLinear(self.irreps_out, self.irreps_out)
        #: large graphs are evaluated in recomputed atom chunks (:class:`~mpnn_ip.nn.edge_chunks.AtomChunking`)
        self.atom_chunking = AtomChunking(self.floats_per_atom())

    def floats_per_atom(self) -> int:
        """Estimated floats per atom autograd keeps: the symmetric contraction's
        (:meth:`SymmetricContraction.floats_per_atom`), the linear's output and the sum with the skip."""
        return self.symmetric_contraction.floats_per_atom() + 2 * self.irreps_out.dim

    def forward(
        self, atomic_basis: torch.Tensor, species: torch.Tensor, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.atom_chunking.map(self._forward, atomic_basis, species, skip)

    def _forward(self, atomic_basis: torch.Tensor, species: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        features = self.linear(self.symmetric_contraction(atomic_basis, species))
        return features if skip is None else features + skip
