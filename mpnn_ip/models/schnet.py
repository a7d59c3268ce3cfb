"""SchNet: invariant message passing with continuous-filter convolutions (Schütt et al. 2017, 2018).

The line that began with the deep tensor neural network (DTNN): a species embedding, distances
expanded in Gaussians, interaction blocks (atom-wise Dense -> continuous-filter convolution ->
Dense, shifted softplus, Dense; residual update), and an atom-wise output network
(Dense, ssp, Dense) whose output is scaled and shifted per species.

An atom's energy is measured from the same network's output for an isolated atom of its
species (no neighbours), and the per-species shift applies only to atoms with neighbours
(:func:`~mpnn_ip.nn.neighbour_gate`), so an isolated atom gets exactly its ``E0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mpnn_ip.models.base import Potential
from mpnn_ip.models.energy_head import EnergyHead
from mpnn_ip.nn import (
    GaussianBasis,
    PolynomialCutoff,
    SchNetInteraction,
    cosine_cutoff,
    shifted_softplus,
)

CUTOFFS = ("cosine", "polynomial")


class SchNet(EnergyHead, Potential):
    """SchNet potential.

    Args:
        species: chemical symbols or atomic numbers.
        r_max: cutoff radius (Å).
        num_features: atom feature channels (SchNet's ``n_atom_basis``).
        num_interactions: interaction blocks.
        num_gaussians: Gaussians of the distance expansion, centres evenly in [0, r_max].
        num_filters: channels of the continuous filters.
        cutoff: ``"cosine"`` (0.5 (cos(π r / r_max) + 1), the original) or ``"polynomial"`` (p = 6).
        avg_num_neighbors: divides the neighbour sum of each convolution.
        e0s, energy_scale, energy_shift, zbl: isolated-atom energies added by the base class and the shared,
            trained energy head (eV; :meth:`~mpnn_ip.models.energy_head.EnergyHead.build_energy_head`).
    """

    def __init__(
        self,
        species: Sequence[int | str],
        r_max: float = 5.0,
        num_features: int = 64,
        num_interactions: int = 3,
        num_gaussians: int = 50,
        num_filters: int = 64,
        cutoff: str = "cosine",
        e0s: Mapping | None = None,
        avg_num_neighbors: float = 1.0,
        energy_scale: float = 1.0,
        energy_shift: float | Sequence[float] | Mapping = 0.0,
        zbl: bool | str = False,
    ):
        super().__init__(species, r_max, e0s)
        if cutoff not in CUTOFFS:
            raise ValueError(f"SchNet: unknown cutoff {cutoff!r}; choose one of {CUTOFFS}")
        self.cutoff_kind = cutoff
        self.polynomial_cutoff = PolynomialCutoff(self.r_max, p=6)
        self.embedding = torch.nn.Embedding(self.num_species, num_features)
        self.radial_basis = GaussianBasis(self.r_max, num_gaussians)
        self.interactions = torch.nn.ModuleList(
            SchNetInteraction(num_features, num_filters, num_gaussians, avg_num_neighbors)
            for _ in range(num_interactions)
        )
        self.output_hidden = torch.nn.Linear(num_features, max(num_features // 2, 1))
        self.output = torch.nn.Linear(max(num_features // 2, 1), 1)
        self.build_energy_head(energy_scale, energy_shift, trainable=True, zbl=zbl)

    def cutoff_envelope(self, lengths: torch.Tensor) -> torch.Tensor:
        """Smooth cutoff ``[n_edges]`` Å -> ``[n_edges]`` (1 at r = 0, value and slope 0 at r_max)."""
        if self.cutoff_kind == "cosine":
            return cosine_cutoff(lengths, self.r_max)
        return self.polynomial_cutoff(lengths)

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        num_atoms = species.shape[0]
        # One neighbourless reference atom per species, appended after the real atoms.
        reference = torch.arange(self.num_species, device=species.device)
        node_features = self.embedding(torch.cat([species, reference]))
        lengths = torch.linalg.norm(edge_vectors, dim=-1)
        radial_basis = self.radial_basis(lengths)
        cutoff = self.cutoff_envelope(lengths)
        for interaction in self.interactions:
            node_features = interaction(node_features, radial_basis, cutoff, edge_index)
        raw = self.output(shifted_softplus(self.output_hidden(node_features))).squeeze(-1)
        relative = raw[:num_atoms] - raw[num_atoms:][species]
        return self.head_energies(relative, species, edge_index, lengths)
