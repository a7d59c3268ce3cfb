"""A smooth, invariant reference potential that must pass every physics check (tests only).

It validates the checks in ``tests/physics.py`` and the base class before (and beside) the
learned models: a Morse pair term plus an angular three-body term, both multiplied by the
package's polynomial cutoff envelope so that energy and forces vanish smoothly at r_max.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch_geometric.utils import scatter

from mpnn_ip.models.base import Potential
from mpnn_ip.nn.radial import PolynomialCutoff


class PairThreeBodyPotential(Potential):
    """E_i = ½ Σ_j φ_{s_i s_j}(r_ij) + λ_{s_i} Σ_{j<k} g(r_ij) g(r_ik) (cos θ_jik − cos θ₀)² (eV).

    φ_ab(r) = D_ab (e^{−2α_ab (r − r₀_ab)} − 2 e^{−α_ab (r − r₀_ab)}) u(r) is a Morse pair with
    the polynomial envelope u (zero beyond r_max); g(r) = e^{−r / 1.5 Å} u(r).

    Args:
        species: chemical symbols or atomic numbers.
        r_max: cutoff (Å).
        e0s: per-species isolated-atom energy (eV).
        seed: seeds the species-pair parameters.
    """

    def __init__(self, species: Sequence[int | str], r_max: float, e0s: Mapping | None = None, seed: int = 0):
        super().__init__(species, r_max, e0s)
        generator = torch.Generator().manual_seed(seed)
        n = self.num_species

        def symmetric(low: float, high: float) -> torch.Tensor:
            values = low + (high - low) * torch.rand(n, n, generator=generator)
            return 0.5 * (values + values.T)

        self.pair_depth = torch.nn.Parameter(symmetric(0.2, 1.0))  # eV
        self.pair_stiffness = torch.nn.Parameter(symmetric(1.0, 2.0))  # 1/Å
        self.pair_equilibrium = torch.nn.Parameter(symmetric(1.0, 2.5))  # Å
        self.angular_strength = torch.nn.Parameter(0.1 + 0.4 * torch.rand(n, generator=generator))  # eV
        self.angular_cosine = torch.nn.Parameter(torch.tensor(-1.0 / 3.0))
        self.cutoff_envelope = PolynomialCutoff(r_max, p=6)

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        centre, neighbour = edge_index
        lengths = torch.linalg.norm(edge_vectors, dim=-1)
        envelope = self.cutoff_envelope(lengths)
        a, b = species[centre], species[neighbour]
        shift = lengths - self.pair_equilibrium[a, b]
        morse = torch.exp(-2 * self.pair_stiffness[a, b] * shift) - 2 * torch.exp(-self.pair_stiffness[a, b] * shift)
        pair = 0.5 * self.pair_depth[a, b] * morse * envelope
        node_energy = scatter(pair, centre, dim=0, dim_size=species.shape[0], reduce="sum")

        same_centre = centre.unsqueeze(0) == centre.unsqueeze(1)
        first, second = torch.nonzero(torch.triu(same_centre, diagonal=1), as_tuple=True)
        radial = torch.exp(-lengths / 1.5) * envelope
        cosine = (edge_vectors[first] * edge_vectors[second]).sum(-1) / (lengths[first] * lengths[second])
        angular = radial[first] * radial[second] * (cosine - self.angular_cosine) ** 2
        angular = self.angular_strength[species[centre[first]]] * angular
        return node_energy + scatter(angular, centre[first], dim=0, dim_size=species.shape[0], reduce="sum")
