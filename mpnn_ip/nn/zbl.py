"""Ziegler-Biersack-Littmark (ZBL) universal screened nuclear repulsion, smoothly cut off.

``species [n_atoms]``, ``edge_index [2, n_edges]``, ``lengths [n_edges]`` Å -> atomic energies ``[n_atoms]`` eV.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ase.data import covalent_radii
from torch_geometric.utils import scatter

from mpnn_ip.nn.radial import PolynomialCutoff

#: e^2 / (4 pi epsilon_0) in eV Å
COULOMB_EV_ANGSTROM = 14.399645
#: Bohr radius (Å)
BOHR_ANGSTROM = 0.52917721
#: universal screening function phi(x) = sum_k c_k exp(-d_k x) (Ziegler, Biersack & Littmark 1985)
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)


class ZBLRepulsion(torch.nn.Module):
    """Pair repulsion ``V(r) = k Z_i Z_j / r * phi(r / a) * u(r / r_c)`` summed into atomic energies.

    ``a = 0.8854 a_0 / (Z_i^0.23 + Z_j^0.23)`` is the universal screening length and ``u`` the
    polynomial cutoff envelope (``p`` continuous derivatives) that takes the repulsion smoothly
    to zero at ``r_c = covalent_radius(Z_i) + covalent_radius(Z_j)`` (ASE's covalent radii, as
    MACE does), capped at ``r_max``. The network learns the rest; this term only keeps atoms
    from collapsing onto each other where there is no training data.

    Args:
        atomic_numbers: Z of each model species, in species-index order.
        p: smoothness of the envelope.
        r_max: optional cap on the pair cutoff (Å), normally the model's cutoff.
    Inputs ``species: [n_atoms]``, ``edge_index: [2, n_edges]`` (both directions of every pair
    present), ``lengths: [n_edges]`` (Å) -> atomic energies ``[n_atoms]`` (eV), half of each
    pair's energy to each atom.
    """

    def __init__(self, atomic_numbers: Sequence[int], p: float = 6, r_max: float | None = None):
        super().__init__()
        z = torch.tensor([float(v) for v in atomic_numbers], dtype=torch.get_default_dtype())
        radii = torch.tensor([covalent_radii[int(v)] for v in atomic_numbers], dtype=torch.get_default_dtype())
        pair_cutoff = radii[:, None] + radii[None, :]
        if r_max is not None:
            pair_cutoff = pair_cutoff.clamp(max=float(r_max))
        screening = 0.8854 * BOHR_ANGSTROM / (z[:, None] ** 0.23 + z[None, :] ** 0.23)
        self.register_buffer("charge_product", COULOMB_EV_ANGSTROM * z[:, None] * z[None, :])
        self.register_buffer("screening_length", screening)
        self.register_buffer("pair_cutoff", pair_cutoff)
        self.register_buffer("coefficients", torch.tensor(ZBL_COEFFICIENTS, dtype=torch.get_default_dtype()))
        self.register_buffer("exponents", torch.tensor(ZBL_EXPONENTS, dtype=torch.get_default_dtype()))
        self.envelope = PolynomialCutoff(1.0, p)

    def pair_energy(self, species_i: torch.Tensor, species_j: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Full repulsion energy (eV) of each pair: species ``[n_pairs]``, ``lengths [n_pairs]`` (Å)."""
        x = lengths / self.screening_length[species_i, species_j]
        phi = (self.coefficients * torch.exp(-self.exponents * x.unsqueeze(-1))).sum(-1)
        switch = self.envelope(lengths / self.pair_cutoff[species_i, species_j])
        return self.charge_product[species_i, species_j] / lengths * phi * switch

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        centre, neighbour = edge_index[0], edge_index[1]
        edge_energy = 0.5 * self.pair_energy(species[centre], species[neighbour], lengths)
        return scatter(edge_energy, centre, dim=0, dim_size=species.shape[0], reduce="sum")
