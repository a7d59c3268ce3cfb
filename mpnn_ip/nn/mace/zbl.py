"""mace-torch's ZBL pair repulsion (``ZBLBasis``), with its own constants, for imported models.

``species [n_atoms]``, ``edge_index [2, n_edges]``, ``lengths [n_edges]`` Å -> atomic energies ``[n_atoms]`` eV.
Differs from :class:`mpnn_ip.nn.ZBLRepulsion` in its rounded constants (14.3996 eV Å, 0.529 Å,
4-digit coefficients), its screening length ``a_prefactor · 0.529 / (Z_i^a_exp + Z_j^a_exp)``
and where the model adds it (mace's ScaleShiftMACE scales it with the atomic energies).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase.data import covalent_radii

#: exponents of the four screening terms (mace's ``ZBLBasis``)
SCREENING_EXPONENTS = (3.2, 0.9423, 0.4028, 0.2016)


class MACEZBLRepulsion(torch.nn.Module):
    """``V_i = Σ_j ½ 14.3996 Z_i Z_j / r φ(r/a) u(r; r_c, p)``, ``r_c`` the sum of covalent radii.

    Args:
        atomic_numbers: the model's species (atomic numbers).
        p: exponent of the polynomial envelope u (mace uses its ``num_polynomial_cutoff``).
    Buffers (the importer copies mace's): ``coefficients`` [4], ``a_exp``, ``a_prefactor``.
    """

    def __init__(self, atomic_numbers: Sequence[int], p: int = 5):
        super().__init__()
        dtype = torch.get_default_dtype()
        self.p = float(p)
        self.register_buffer("z", torch.tensor([float(z) for z in atomic_numbers], dtype=dtype))
        self.register_buffer("radii", torch.tensor([covalent_radii[int(z)] for z in atomic_numbers], dtype=dtype))
        self.register_buffer("coefficients", torch.tensor([0.1818, 0.5099, 0.2802, 0.02817], dtype=dtype))
        self.register_buffer("a_exp", torch.tensor(0.300, dtype=dtype))
        self.register_buffer("a_prefactor", torch.tensor(0.4543, dtype=dtype))

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        si, sj = species[edge_index[0]], species[edge_index[1]]
        zi, zj = self.z[si], self.z[sj]
        a = self.a_prefactor * 0.529 / (torch.pow(zi, self.a_exp) + torch.pow(zj, self.a_exp))
        x = lengths / a
        phi = sum(c * torch.exp(-d * x) for c, d in zip(self.coefficients.unbind(), SCREENING_EXPONENTS))
        r = lengths / (self.radii[si] + self.radii[sj])
        p = self.p
        envelope = (
            1.0 - (p + 1.0) * (p + 2.0) / 2.0 * r**p + p * (p + 2.0) * r ** (p + 1) - p * (p + 1.0) / 2 * r ** (p + 2)
        )
        envelope = envelope * (r < 1.0)
        pair = 0.5 * 14.3996 * zi * zj / lengths * phi * envelope
        return torch.zeros(species.shape[0], dtype=lengths.dtype, device=lengths.device).index_add(
            0, edge_index[0], pair
        )
