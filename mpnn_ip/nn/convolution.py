"""Equivariant convolution: node features ⊗ edge spherical harmonics, weighted by a radial MLP."""

from __future__ import annotations

from typing import Sequence

import torch
from e3nn import o3

from mpnn_ip.nn.radial_mlp import RadialMLP
from mpnn_ip.nn.tensor_product import ChannelwiseTensorProduct

NEIGHBOR_NORMALIZATIONS = ("sqrt", "linear")


def tp_path_exists(irreps_in, irreps_sh, ir_out) -> bool:
    """Whether some irrep of ``irreps_in`` times some irrep of ``irreps_sh`` contains ``ir_out``."""
    ir_out = o3.Irrep(ir_out)
    return any(ir_out in ir1 * ir2 for _, ir1 in o3.Irreps(irreps_in) for _, ir2 in o3.Irreps(irreps_sh))


def convolution_paths(irreps_in, irreps_sh, irreps_target) -> tuple[o3.Irreps, list[tuple]]:
    """Output irreps and "uvu" instructions of the message tensor product.

    Every product ``irreps_in[i] x irreps_sh[j] -> ir_out`` with ``ir_out`` among ``irreps_target``
    becomes one path keeping the multiplicity of ``irreps_in[i]``. The outputs are sorted by
    irrep so that the following linear layer sees them grouped.
    Returns (irreps_mid sorted, not simplified; instructions ``(i, j, k, "uvu", True)``).
    """
    irreps_in, irreps_sh, irreps_target = o3.Irreps(irreps_in), o3.Irreps(irreps_sh), o3.Irreps(irreps_target)
    irreps_mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_sh:
                if ir_out in irreps_target:
                    instructions.append((i, j, len(irreps_mid), "uvu", True))
                    irreps_mid.append((mul, ir_out))
    irreps_mid, permutation, _ = o3.Irreps(irreps_mid).sort()
    instructions = [(i, j, permutation[k], mode, train) for i, j, k, mode, train in instructions]
    return irreps_mid, instructions


def convolution_output_irreps(irreps_in, irreps_sh, irreps_target) -> o3.Irreps:
    """The part of ``irreps_target`` that a convolution of ``irreps_in`` with ``irreps_sh`` can produce."""
    return o3.Irreps([(mul, ir) for mul, ir in o3.Irreps(irreps_target) if tp_path_exists(irreps_in, irreps_sh, ir)])


class TensorProductConvolution(torch.nn.Module):
    """One equivariant message-passing convolution (the NequIP / MACE interaction).

    ``linear_in`` (o3.Linear, irreps_in -> irreps_in) on the nodes; per edge the tensor product
    (:class:`~mpnn_ip.nn.tensor_product.ChannelwiseTensorProduct`, equal to e3nn's
    ``o3.TensorProduct`` with "uvu" paths but faster; one weight per path and channel from
    :class:`RadialMLP`) of
    the neighbour's features with the edge spherical harmonics; messages from neighbour j
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
        unreachable = [str(ir) for _, ir in self.irreps_out if not tp_path_exists(self.irreps_in, self.irreps_sh, ir)]
        if unreachable:
            raise ValueError(
                f"TensorProductConvolution: output irreps {self.irreps_out} contain {unreachable}, which no product "
                f"of input irreps {self.irreps_in} with edge irreps {self.irreps_sh} can produce"
            )
        if neighbor_normalization not in NEIGHBOR_NORMALIZATIONS:
            raise ValueError(f"neighbor_normalization must be one of {NEIGHBOR_NORMALIZATIONS}, got {neighbor_normalization!r}")
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

    def forward(
        self,
        node_features: torch.Tensor,
        edge_sh: torch.Tensor,
        radial_embedding: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        weights = self.radial_mlp(radial_embedding)
        summed = self.tensor_product.sum_messages(self.linear_in(node_features), edge_sh, weights, edge_index)
        return self.linear_out(summed * self.message_scale)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}, neighbor_normalization={self.neighbor_normalization!r}"
