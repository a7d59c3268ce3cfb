"""NequIP 0.19's ZBL pair repulsion (``nequip.nn.pair_potential.ZBL``, LAMMPS ``pair_style zbl`` constants).

``species [n_atoms]``, ``edge_index [2, n_edges]``, ``lengths [n_edges]`` Å -> atomic energies ``[n_atoms]`` eV.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpnn_ip.nn.radial import PolynomialCutoff

#: e^2 / (4 pi epsilon_0) in eV Å (LAMMPS ``metal`` units' qqr2e)
COULOMB_EV_ANGSTROM = 14.399645
#: screening length constant a0 (Å) of ``x = (Z_i^0.23 + Z_j^0.23) r / a0``
SCREENING_A0 = 0.46850
#: phi(x) = sum_k c_k exp(d_k x)
COEFFICIENTS = (0.02817, 0.28022, 0.50986, 0.18175)
EXPONENTS = (-0.20162, -0.40290, -0.94229, -3.19980)


class NequIPZBL(torch.nn.Module):
    """``V(r) = k Z_i Z_j / r * phi(x) * u(r / r_max)`` per pair, half to each atom.

    Unlike :class:`~mpnn_ip.nn.ZBLRepulsion`, the envelope ``u`` (polynomial, exponent ``p``) cuts
    the repulsion off at the model's ``r_max`` for every pair, and the screening uses LAMMPS's
    ``a0 = 0.46850`` Å, as NequIP 0.19 does.

    Args:
        atomic_numbers: Z of each model species, in species-index order.
        r_max: cutoff (Å).
        p: exponent of the polynomial envelope.
    Inputs ``species: [n_atoms]``, ``edge_index: [2, n_edges]`` (both directions of every pair),
    ``lengths: [n_edges]`` (Å) -> ``[n_atoms]`` eV.
    """

    def __init__(self, atomic_numbers: Sequence[int], r_max: float, p: float = 6):
        super().__init__()
        self.register_buffer("atomic_numbers", torch.tensor([float(z) for z in atomic_numbers], dtype=torch.float64))
        self.envelope = PolynomialCutoff(r_max, p)

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        z = self.atomic_numbers.to(lengths.dtype)[species]
        z_i, z_j = z[edge_index[0]], z[edge_index[1]]
        x = (torch.pow(z_i, 0.23) + torch.pow(z_j, 0.23)) * lengths / SCREENING_A0
        phi = sum(c * torch.exp(d * x) for c, d in zip(COEFFICIENTS, EXPONENTS))
        edge_energy = 0.5 * COULOMB_EV_ANGSTROM * (z_i * z_j / lengths) * phi * self.envelope(lengths)
        return torch.zeros_like(z).index_add(0, edge_index[0], edge_energy)
