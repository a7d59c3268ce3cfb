"""Behler–Parrinello atom-centred symmetry functions, in torch so that forces and stress follow by autograd.

Behler & Parrinello, PRL 98, 146401 (2007); Behler, J. Chem. Phys. 134, 074106 (2011).
With Behler's cutoff ``fc(r) = 0.5 (cos(π r / r_c) + 1)`` (0 beyond r_c), for centre atom i:

- radial, per neighbour species s:
  ``G2 = Σ_{j ∈ s} exp(-η (r_ij - R_s)²) fc(r_ij)``, one per (η, R_s) pair;
- angular, per unordered neighbour-species pair {s, s'}, summed over unordered neighbour pairs {j, k}:
  ``G4 = 2^{1-ζ} Σ (1 + λ cos θ_jik)^ζ exp(-η (r_ij² + r_ik² + r_jk²)) fc(r_ij) fc(r_ik) fc(r_jk)``,
  ``G5`` the same without the r_jk terms; one per (η, ζ, λ).

Distances in Å, η in Å⁻², R_s in Å. Triplets are built from the edge list (all ordered pairs of
edges sharing a centre, each unordered pair counted once by a factor 1/2), so periodic images
are handled exactly as the radius graph handles them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch_geometric.utils import scatter

from mpnn_ip.nn.radial import cosine_cutoff


def edge_pairs_around_centres(centres: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (e1, e2), e1 != e2, of edges with the same centre atom.

    ``centres: [n_edges]`` (edge_index[0]) -> two ``[n_triplets]`` edge indices.
    Memory is Σ_i n_i (n_i - 1) for n_i edges at atom i.
    """
    order = torch.argsort(centres, stable=True)
    counts = torch.bincount(centres, minlength=num_nodes)
    first_edge = torch.cumsum(counts, 0) - counts
    sorted_centres = centres[order]
    partners = counts[sorted_centres]
    first = torch.repeat_interleave(torch.arange(centres.shape[0], device=centres.device), partners)
    start_of_block = torch.cumsum(partners, 0) - partners
    local = torch.arange(first.shape[0], device=centres.device) - torch.repeat_interleave(start_of_block, partners)
    second = first_edge[sorted_centres[first]] + local
    keep = first != second
    return order[first[keep]], order[second[keep]]


class SymmetryFunctions(torch.nn.Module):
    """G2 + G4 (or G5) features per atom, resolved by neighbour species.

    Args:
        num_species: S; neighbour species channels.
        r_max: cutoff r_c (Å).
        radial_etas, radial_shifts: G2 for every (η, R_s) in their product (Å⁻², Å).
        angular_etas, zetas, lambdas: G4/G5 for every (η, ζ, λ) in their product.
        angular: ``"g4"`` (with the r_jk terms) or ``"g5"``.
    Forward: ``species [n_atoms]`` (index), ``edge_index [2, n_edges]``, ``edge_vectors [n_edges, 3]`` Å
    -> ``[n_atoms, num_features]``, radial block (species-major) then angular block (pair-major).
    """

    def __init__(
        self,
        num_species: int,
        r_max: float,
        radial_etas: Sequence[float],
        radial_shifts: Sequence[float],
        angular_etas: Sequence[float],
        zetas: Sequence[float],
        lambdas: Sequence[float],
        angular: str = "g4",
    ):
        super().__init__()
        if angular not in ("g4", "g5"):
            raise ValueError(f"SymmetryFunctions: angular must be 'g4' or 'g5', got {angular!r}")
        self.num_species = int(num_species)
        self.r_max = float(r_max)
        self.angular = angular
        radial = list(itertools.product(radial_etas, radial_shifts))
        ang = list(itertools.product(angular_etas, zetas, lambdas))
        self.register_buffer("radial_eta", torch.tensor([p[0] for p in radial], dtype=torch.float64))
        self.register_buffer("radial_shift", torch.tensor([p[1] for p in radial], dtype=torch.float64))
        self.register_buffer("angular_eta", torch.tensor([p[0] for p in ang], dtype=torch.float64))
        self.register_buffer("zeta", torch.tensor([p[1] for p in ang], dtype=torch.float64))
        self.register_buffer("lam", torch.tensor([p[2] for p in ang], dtype=torch.float64))
        pair_channel = torch.zeros(num_species, num_species, dtype=torch.long)
        for channel, (a, b) in enumerate(itertools.combinations_with_replacement(range(num_species), 2)):
            pair_channel[a, b] = pair_channel[b, a] = channel
        self.register_buffer("pair_channel", pair_channel, persistent=False)
        self.num_pairs = num_species * (num_species + 1) // 2
        self.num_radial = len(radial)
        self.num_angular = len(ang)
        self.num_features = self.num_species * self.num_radial + self.num_pairs * self.num_angular

    def forward(self, species, edge_index, edge_vectors):
        num_atoms = species.shape[0]
        dtype = edge_vectors.dtype
        centre, neighbour = edge_index[0], edge_index[1]
        lengths = torch.linalg.norm(edge_vectors, dim=-1)
        fc = cosine_cutoff(lengths, self.r_max)

        eta, shift = self.radial_eta.to(dtype), self.radial_shift.to(dtype)
        g2_edges = torch.exp(-eta * (lengths.unsqueeze(-1) - shift) ** 2) * fc.unsqueeze(-1)
        g2 = scatter(
            g2_edges,
            centre * self.num_species + species[neighbour],
            dim=0,
            dim_size=num_atoms * self.num_species,
            reduce="sum",
        )

        e1, e2 = edge_pairs_around_centres(centre, num_atoms)
        v1, v2 = edge_vectors[e1], edge_vectors[e2]
        r1, r2 = lengths[e1], lengths[e2]
        cos_angle = (v1 * v2).sum(-1) / (r1 * r2)
        squares = r1**2 + r2**2
        radial_weight = fc[e1] * fc[e2]
        if self.angular == "g4":
            r3 = torch.linalg.norm(v2 - v1, dim=-1)
            squares = squares + r3**2
            radial_weight = radial_weight * cosine_cutoff(r3, self.r_max)
        zeta, lam, a_eta = self.zeta.to(dtype), self.lam.to(dtype), self.angular_eta.to(dtype)
        # 2^{1-ζ} (1 + λ cos)^ζ / 2: the 1/2 counts each unordered pair {j, k} once.
        angular_part = 2.0 ** (-zeta) * (1.0 + lam * cos_angle.unsqueeze(-1)) ** zeta
        g_ang_triplets = angular_part * torch.exp(-a_eta * squares.unsqueeze(-1)) * radial_weight.unsqueeze(-1)
        channel = self.pair_channel[species[neighbour[e1]], species[neighbour[e2]]]
        g_ang = scatter(
            g_ang_triplets,
            centre[e1] * self.num_pairs + channel,
            dim=0,
            dim_size=num_atoms * self.num_pairs,
            reduce="sum",
        )
        return torch.cat([g2.reshape(num_atoms, -1), g_ang.reshape(num_atoms, -1)], dim=-1)
