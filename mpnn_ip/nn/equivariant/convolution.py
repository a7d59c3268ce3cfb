"""Equivariant convolution (e3nn layout): node features ⊗ edge spherical harmonics, weighted by a radial MLP.

Node features ``[n_atoms, irreps.dim]`` in e3nn's layout, edge harmonics ``[n_edges, irreps_sh.dim]``,
radial embedding ``[n_edges, num_basis]`` (of lengths in Å); messages flow from neighbour
``edge_index[1]`` to centre ``edge_index[0]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3

from mpnn_ip.nn.couplings import check_reachable
from mpnn_ip.nn.edge_chunks import EdgeChunking
from mpnn_ip.nn.equivariant.tensor_product import ChannelwiseTensorProduct, convolution_paths
from mpnn_ip.nn.radial_mlp import RadialMLP

NEIGHBOR_NORMALIZATIONS = ("sqrt", "linear")


class TensorProductConvolution(torch.nn.Module):
    """One equivariant message-passing convolution (the NequIP / MACE interaction).

    ``linear_in`` (o3.Linear, irreps_in -> irreps_in) on the nodes; per edge the tensor product
    (:class:`~mpnn_ip.nn.equivariant.tensor_product.ChannelwiseTensorProduct`, equal to e3nn's
    ``o3.TensorProduct`` with "uvu" paths but faster; one weight per path and channel from
    :class:`RadialMLP`) of the neighbour's features with the edge spherical harmonics; messages from neighbour j
    (``edge_index[1]``) summed at centre i (``edge_index[0]``) and divided by
    ``sqrt(avg_num_neighbors)`` (``neighbor_normalization="sqrt"``, NequIP) or by
    ``avg_num_neighbors`` (``"linear"``, MACE); ``linear_out`` (o3.Linear, tensor-product output ->
    irreps_out).

    Args:
        irreps_in: node feature irreps.
        irreps_sh: edge spherical-harmonics irreps, e.g. ``o3.Irreps.spherical_harmonics(2)``.
        irreps_out: output irreps; each must be reachable from ``irreps_in x irreps_sh``.
        num_basis: size of the radial embedding.
        radial_mlp: hidden widths of the radial MLP.
        avg_num_neighbors: mean number of neighbours in the training data.
        neighbor_normalization: "sqrt" or "linear", see above.
        radial_nonlinearity: activation of the radial MLP.
    Forward: ``node_features [n_atoms, irreps_in.dim]``, ``edge_sh [n_edges, irreps_sh.dim]``,
    ``radial_embedding [n_edges, num_basis]``, ``edge_index [2, n_edges]`` ->
    ``[n_atoms, irreps_out.dim]``.
    """

    def __init__(
        self,
        irreps_in,
        irreps_sh,
        irreps_out,
        num_basis: int,
        radial_mlp: Sequence[int] = (64, 64),
        avg_num_neighbors: float = 1.0,
        neighbor_normalization: str = "sqrt",
        radial_nonlinearity: str = "silu",
    ):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.irreps_out = o3.Irreps(irreps_out)
        check_reachable(self.irreps_in, self.irreps_sh, self.irreps_out, type(self).__name__)
        if neighbor_normalization not in NEIGHBOR_NORMALIZATIONS:
            raise ValueError(
                f"neighbor_normalization must be one of {NEIGHBOR_NORMALIZATIONS}, got {neighbor_normalization!r}"
            )
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors}")
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.neighbor_normalization = neighbor_normalization
        power = 0.5 if neighbor_normalization == "sqrt" else 1.0
        self.message_scale = 1.0 / self.avg_num_neighbors**power

        self.irreps_mid, instructions = convolution_paths(self.irreps_in, self.irreps_sh, self.irreps_out)
        self.linear_in = o3.Linear(self.irreps_in, self.irreps_in)
        self.tensor_product = ChannelwiseTensorProduct(self.irreps_in, self.irreps_sh, self.irreps_mid, instructions)
        self.radial_mlp = RadialMLP(num_basis, radial_mlp, self.tensor_product.weight_numel, radial_nonlinearity)
        self.linear_out = o3.Linear(self.irreps_mid.simplify(), self.irreps_out)
        #: how the edge sum is split into recomputed chunks (:mod:`mpnn_ip.nn.edge_chunks`)
        self.edge_chunking = EdgeChunking(self.floats_per_edge())

    def floats_per_edge(self) -> int:
        """Estimated floats per edge that autograd keeps for the backward pass: the gathered
        features, the per-edge product, the expanded weights and the message (``irreps_mid.dim``
        each), the radial weights (twice) and the radial MLP's hidden activations."""
        tp = self.tensor_product
        hidden = sum(int(h) for h in self.radial_mlp.net.hs[1:-1])
        return 3 * tp.irreps_out.dim + tp.irreps_in.dim + 2 * tp.weight_numel + hidden

    def forward(
        self,
        node_features: torch.Tensor,
        edge_sh: torch.Tensor,
        radial_embedding: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        features = self.linear_in(node_features)

        def edge_sum(features, sh, radial, centre, neighbour, n_centres: int):
            weights = self.radial_mlp(radial, self.tensor_product.weight_columns(radial))
            return self.tensor_product.sum_messages(features, sh, weights, torch.stack([centre, neighbour]), n_centres)

        summed = self.edge_chunking.sum(
            edge_sum,
            (features,),
            (edge_sh, radial_embedding),
            edge_index,
            node_features.shape[0],
            self.radial_mlp.parameters,
        )
        return self.linear_out(summed * self.message_scale)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}, neighbor_normalization={self.neighbor_normalization!r}"
