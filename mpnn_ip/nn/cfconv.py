"""SchNet's continuous-filter convolution (Schütt et al., NeurIPS 2017; J. Chem. Phys. 2018).

Distances are expanded in Gaussians (:class:`GaussianBasis`), a small filter-generating
network turns that expansion into one filter per feature channel, multiplied by a smooth cutoff
(:func:`cosine_cutoff`), and neighbour features are multiplied element-wise by the filter and
summed at the centre atom.
"""

from __future__ import annotations

import math

import torch
from torch_geometric.utils import scatter

from mpnn_ip.nn.activations import shifted_softplus


def cosine_cutoff(lengths: torch.Tensor, r_max: float) -> torch.Tensor:
    """Behler's cutoff ``0.5 (cos(π r / r_max) + 1)`` for r < r_max, else 0; value and slope vanish at r_max.

    ``lengths: [n_edges]`` Å -> ``[n_edges]``.
    """
    inside = lengths < r_max
    safe = torch.where(inside, lengths, torch.zeros_like(lengths))
    return torch.where(inside, 0.5 * (torch.cos(math.pi * safe / r_max) + 1.0), torch.zeros_like(lengths))


class GaussianBasis(torch.nn.Module):
    """``exp(-(r - μ_k)² / (2 w²))`` with ``num_basis`` centres μ_k evenly in [0, r_max] and w their spacing.

    ``lengths: [n_edges]`` Å -> ``[n_edges, num_basis]``.
    """

    def __init__(self, r_max: float, num_basis: int = 50):
        super().__init__()
        if num_basis < 2:
            raise ValueError(f"GaussianBasis needs num_basis >= 2, got {num_basis}")
        centres = torch.linspace(0.0, float(r_max), int(num_basis), dtype=torch.float64)
        self.register_buffer("centres", centres)
        self.width = float(r_max) / (num_basis - 1)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * ((lengths.unsqueeze(-1) - self.centres.to(lengths.dtype)) / self.width) ** 2)


class ContinuousFilterConvolution(torch.nn.Module):
    """``m_i = Σ_j x_j ⊙ W(r_ij) fc(r_ij) / avg_num_neighbors`` with ``W = Dense ∘ ssp ∘ Dense`` of the radial basis.

    Args:
        num_filters: channels of the filter (and of ``x_j``).
        num_basis: length of the radial basis the filter network reads.
        avg_num_neighbors: divides the neighbour sum (1.0 = the original plain sum).
    Forward: ``node_features [n_atoms, num_filters]``, ``radial_basis [n_edges, num_basis]``,
    ``cutoff [n_edges]``, ``edge_index [2, n_edges]`` -> ``[n_atoms, num_filters]``.
    """

    def __init__(self, num_filters: int, num_basis: int, avg_num_neighbors: float = 1.0):
        super().__init__()
        self.filter_in = torch.nn.Linear(num_basis, num_filters)
        self.filter_out = torch.nn.Linear(num_filters, num_filters)
        self.avg_num_neighbors = float(avg_num_neighbors)

    def forward(self, node_features, radial_basis, cutoff, edge_index):
        filters = self.filter_out(shifted_softplus(self.filter_in(radial_basis))) * cutoff.unsqueeze(-1)
        messages = node_features[edge_index[1]] * filters
        summed = scatter(messages, edge_index[0], dim=0, dim_size=node_features.shape[0], reduce="sum")
        return summed / self.avg_num_neighbors


class SchNetInteraction(torch.nn.Module):
    """One interaction block: atom-wise Dense -> cfconv -> Dense, ssp, Dense; added to the features (residual).

    Forward: ``node_features [n_atoms, num_features]`` (+ basis, cutoff, edge_index as for
    :class:`ContinuousFilterConvolution`) -> updated ``[n_atoms, num_features]``.
    """

    def __init__(self, num_features: int, num_filters: int, num_basis: int, avg_num_neighbors: float = 1.0):
        super().__init__()
        self.features_to_filters = torch.nn.Linear(num_features, num_filters, bias=False)
        self.convolution = ContinuousFilterConvolution(num_filters, num_basis, avg_num_neighbors)
        self.filters_to_features = torch.nn.Linear(num_filters, num_features)
        self.atomwise = torch.nn.Linear(num_features, num_features)

    def forward(self, node_features, radial_basis, cutoff, edge_index):
        v = self.convolution(self.features_to_filters(node_features), radial_basis, cutoff, edge_index)
        v = self.atomwise(shifted_softplus(self.filters_to_features(v)))
        return node_features + v
