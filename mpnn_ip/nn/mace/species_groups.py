"""Atoms grouped by species, for per-species weights without a per-atom copy of the weights.

Rows ``[n_atoms, ...]`` sorted by ``species [n_atoms]``; ``batched_matmul`` ``[B, n_atoms, J] x [B, S, J, K] -> [B, n_atoms, K]``.
"""

from __future__ import annotations

import torch

from mpnn_ip.nn.tracing import is_tracing


class SpeciesGroups:
    """Sort atoms by species once; apply one weight matrix per species with one matmul per group.

    A per-atom gather of species weights (``W[species]``) would copy a [C, J, K] matrix per atom;
    grouping the atoms of each species instead costs one ``index_select`` in, one out and S
    batched matmuls. While a tracer (``torch.compile``, ``torch.export``, ``make_fx``) records the
    model (group sizes are data-dependent there), every species' matmul runs on all atoms and a
    mask keeps the right one: S times the work, but static shapes.

    Args:
        species: [n_atoms] species index.
        num_species: S.
    """

    def __init__(self, species: torch.Tensor, num_species: int):
        self.num_species = int(num_species)
        self.species = species
        self.order = None
        self.sorted_species = species
        if self.num_species > 1 and not is_tracing():
            self.order = torch.argsort(species, stable=True)
            self.inverse = torch.empty_like(self.order)
            self.inverse[self.order] = torch.arange(self.order.shape[0], device=species.device)
            self.sorted_species = species[self.order]
            self.counts = torch.bincount(species, minlength=self.num_species).tolist()

    def sort(self, x: torch.Tensor) -> torch.Tensor:
        """``x [n_atoms, ...]`` -> rows in species order."""
        return x if self.order is None else x.index_select(0, self.order)

    def unsort(self, x: torch.Tensor) -> torch.Tensor:
        """Rows in species order -> original atom order."""
        return x if self.order is None else x.index_select(0, self.inverse)

    def batched_matmul(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x [B, n_atoms, J]`` (atoms in species order) times ``weights [B, S, J, K]`` of each atom's species -> ``[B, n_atoms, K]``."""
        if self.num_species == 1:
            return torch.bmm(x, weights[:, 0])
        if self.order is None:
            out = 0
            for s in range(self.num_species):
                mask = (self.species == s).to(x.dtype).view(1, -1, 1)
                out = out + mask * torch.bmm(x, weights[:, s])
            return out
        chunks = x.split(self.counts, dim=1)
        return torch.cat([torch.bmm(chunk, weights[:, s]) for s, chunk in enumerate(chunks)], dim=1)
