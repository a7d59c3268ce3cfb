"""SchNet's continuous-filter convolution (Schütt et al., NeurIPS 2017; J. Chem. Phys. 2018).

Distances are expanded in Gaussians (:class:`~mpnn_ip.nn.radial.GaussianBasis`), a small
filter-generating network turns that expansion into one filter per feature channel, multiplied
by a smooth cutoff (:func:`~mpnn_ip.nn.radial.cosine_cutoff`), and neighbour features are
multiplied element-wise by the filter and summed at the centre atom. Features are invariant
``[n_atoms, channels]``; lengths in Å.
"""

from __future__ import annotations

import torch
from torch_geometric.utils import scatter

from mpnn_ip.nn.activations import shifted_softplus


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
