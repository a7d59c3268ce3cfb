"""Embeddings of the inputs: species as invariant node features, edges as lengths, spherical
harmonics and radial basis.

``species [n_atoms]`` (long, index into the model's species list) -> ``[n_atoms, F]`` (``F x 0e``);
``edge_vectors [n_edges, 3]`` (Å) -> lengths ``[n_edges]``, ``[n_edges, irreps_sh.dim]``, ``[n_edges, num_basis]``.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3


class SpeciesEmbedding(torch.nn.Module):
    """Species index -> one-hot -> linear map to ``num_features x 0e`` node features.

    Equivalent to ``o3.Linear(f"{num_species}x0e", f"{num_features}x0e")`` applied to the one-hot
    vector (same weight shape ``[num_species, num_features]``, same ``1/sqrt(num_species)``
    normalisation), computed as a row lookup instead of a matrix product.

    Args:
        num_species: number of chemical species S the model knows.
        num_features: number of scalar output channels F.
    Input ``species: [n_atoms]`` long (index into the model's species list) ->
    ``node_features: [n_atoms, F]`` in the module's dtype.
    """

    def __init__(self, num_species: int, num_features: int):
        super().__init__()
        self.num_species = int(num_species)
        self.num_features = int(num_features)
        self.irreps_in = o3.Irreps(f"{self.num_species}x0e")
        self.irreps_out = o3.Irreps(f"{self.num_features}x0e")
        self.weight = torch.nn.Parameter(torch.randn(self.num_species, self.num_features))
        self.normalization = 1.0 / math.sqrt(self.num_species)

    def one_hot(self, species: torch.Tensor) -> torch.Tensor:
        """``species: [n_atoms]`` -> one-hot ``[n_atoms, S]`` in the module's dtype."""
        return torch.nn.functional.one_hot(species, self.num_species).to(self.weight.dtype)

    def forward(self, species: torch.Tensor) -> torch.Tensor:
        return self.weight[species] * self.normalization

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}"


def embed_edges(spherical_harmonics, radial_embedding, edge_vectors: torch.Tensor):
    """``(lengths [E] Å, edge_sh [E, irreps_sh.dim], radial [E, num_basis])`` of ``edge_vectors [E, 3]``
    through a model's ``o3.SphericalHarmonics`` and :class:`~mpnn_ip.nn.RadialEmbedding`."""
    lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
    return lengths, spherical_harmonics(edge_vectors), radial_embedding(lengths)
