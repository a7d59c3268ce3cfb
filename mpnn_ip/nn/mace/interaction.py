"""MACE's interaction: the atomic basis A from neighbours' features, edge harmonics and radii.

Same function as MACE's ``RealAgnosticResidualInteractionBlock`` (Batatia et al. 2022):
linear up on the node features; per edge the "uvu" tensor product of the neighbour's features
with the edge spherical harmonics, one weight per path and channel from a radial MLP; sum over
neighbours at the centre, linear, divided by ``avg_num_neighbors``; and a species-dependent
linear skip connection of the incoming features.
Channels-last ``node_features [n_atoms, irreps_node.dim]``, ``edge_sh [n_edges, irreps_sh.dim]``,
``radial_embedding [n_edges, num_basis]`` (of lengths in Å) -> ``atomic_basis [n_atoms, irreps_target.dim]``.

The edge tensor product is written for speed on CPU instead of calling ``o3.TensorProduct``:
per edge the Clebsch-Gordan coefficients are contracted with the harmonics first
(``coupling [n_edges, rows, D_in]`` from one matmul), then one batched matmul with the
neighbour's features ``[n_edges, D_in, C]`` gives every path at once, and the radial weights
multiply the rows of their path. Paths and coefficients (``sqrt(2 l_out + 1) * wigner_3j``,
those of ``o3.TensorProduct`` with MACE's instructions, each path its own output) come from
:mod:`mpnn_ip.nn.couplings`, shared with NequIP's e3nn-layout product (which says why the
kernels stay apart); tests/test_mace.py compares with ``o3.TensorProduct``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3

from mpnn_ip.nn.constants import DtypeConstants
from mpnn_ip.nn.couplings import CouplingBlock, check_reachable, coupling_tensor, tensor_product_paths
from mpnn_ip.nn.edge_chunks import EdgeChunking
from mpnn_ip.nn.mace.linear import ChannelsLastLinear, SpeciesChannelsLastLinear
from mpnn_ip.nn.radial_mlp import RadialMLP


class MACEInteraction(torch.nn.Module):
    """Atomic basis ``A_i = linear(Σ_j R(r_ij) (W h_j) ⊗ Y(r̂_ij)) / avg_num_neighbors`` and the skip.

    Args:
        irreps_node: incoming node features, ``C x (...)`` one multiplicity for all irreps.
        irreps_sh: edge spherical harmonics, e.g. ``0e+1o+2e+3o``.
        irreps_target: irreps of A, e.g. ``C x (0e+1o+2e+3o)``; each needs a path.
        irreps_skip: output irreps of the species-dependent skip (the next hidden irreps), or
            None for no skip (the first layer, so that a lone atom has energy E0).
        num_species: S.
        num_basis: size of the radial embedding.
        radial_mlp: hidden widths of the radial MLP, e.g. ``[64, 64, 64]``.
        avg_num_neighbors: divides the sum over neighbours.
        species_linear_basis: follow A by a species-dependent linear map ``A -> A`` (mace-torch's
            ``RealAgnosticInteractionBlock``, whose ``skip_tp`` acts on the message; for imported models).
    Forward (channels-last features, see :mod:`mpnn_ip.nn.mace.linear`):
    ``node_features [n_atoms, irreps_node.dim]``, ``species [n_atoms]``, ``edge_sh [n_edges, irreps_sh.dim]``,
    ``radial_embedding [n_edges, num_basis]``, ``edge_index [2, n_edges]`` (row 0 centre i, row 1
    neighbour j) -> ``(atomic_basis [n_atoms, irreps_target.dim], skip [n_atoms, irreps_skip.dim] or None)``.
    """

    def __init__(
        self,
        irreps_node,
        irreps_sh,
        irreps_target,
        irreps_skip,
        num_species: int,
        num_basis: int,
        radial_mlp: Sequence[int] = (64, 64, 64),
        avg_num_neighbors: float = 1.0,
        species_linear_basis: bool = False,
    ):
        super().__init__()
        self.irreps_node = o3.Irreps(irreps_node)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.irreps_target = o3.Irreps(irreps_target)
        self.irreps_skip = None if irreps_skip is None else o3.Irreps(irreps_skip)
        muls = {mul for mul, _ in self.irreps_node}
        if len(muls) != 1 or any(mul != 1 for mul, _ in self.irreps_sh):
            raise ValueError(
                f"MACEInteraction: node irreps {self.irreps_node} need one common multiplicity and edge irreps "
                f"{self.irreps_sh} multiplicity one"
            )
        if avg_num_neighbors <= 0:
            raise ValueError(f"MACEInteraction: avg_num_neighbors must be positive, got {avg_num_neighbors}")
        self.num_channels = muls.pop()
        self.avg_num_neighbors = float(avg_num_neighbors)
        check_reachable(self.irreps_node, self.irreps_sh, self.irreps_target, type(self).__name__)
        paths = tensor_product_paths(self.irreps_node, self.irreps_sh, self.irreps_target)
        self.num_paths = len(paths)
        self.dim_node = sum(ir.dim for _, ir in self.irreps_node)
        coupling, row_path, self.irreps_mid = self._coupling(paths)
        self.constants = DtypeConstants({"coupling": coupling, "row_path": row_path})
        self.num_rows = row_path.shape[0]

        self.linear_up = ChannelsLastLinear(self.irreps_node, self.irreps_node)
        self.radial_mlp = RadialMLP(num_basis, radial_mlp, self.num_paths * self.num_channels)
        self.linear = ChannelsLastLinear(self.irreps_mid, self.irreps_target)
        self.skip = (
            None if irreps_skip is None else SpeciesChannelsLastLinear(self.irreps_node, self.irreps_skip, num_species)
        )
        self.species_linear = (
            SpeciesChannelsLastLinear(self.irreps_target, self.irreps_target, num_species)
            if species_linear_basis
            else None
        )
        #: how the edge sum is split into recomputed chunks (:mod:`mpnn_ip.nn.edge_chunks`)
        self.edge_chunking = EdgeChunking(self.floats_per_edge())

    def floats_per_edge(self) -> int:
        """Estimated floats per edge that autograd keeps for the backward pass: the coupling
        matrices, the gathered features, the messages and expanded weights, the radial weights
        and the radial MLP's hidden activations."""
        C, hidden = self.num_channels, sum(int(h) for h in self.radial_mlp.net.hs[1:-1])
        return (
            self.num_rows * self.dim_node + self.dim_node * C + 3 * self.num_rows * C + 2 * self.num_paths * C + hidden
        )

    def _coupling(self, paths):
        """``coupling [dim_sh, rows * dim_node]``, ``row_path [rows]``, irreps of the summed messages.

        Message rows are grouped by output irrep (in ``irreps_target`` order), then component m,
        then path k, so that each output irrep's block is ``[2l+1, K * C]`` channels-last.
        """
        node_start = [s.start for s in o3.Irreps([(1, ir) for _, ir in self.irreps_node]).slices()]
        sh_start = [s.start for s in self.irreps_sh.slices()]
        blocks, row_path, mid, rows = [], [], [], 0
        for _, ir_out in self.irreps_target:
            on_this = [(p, path) for p, path in enumerate(paths) if path.ir_out == ir_out]
            for k, (_, (i, j, _)) in enumerate(on_this):
                out_rows = [rows + m * len(on_this) + k for m in range(ir_out.dim)]
                blocks.append(
                    CouplingBlock(
                        self.irreps_node[i].ir.l, self.irreps_sh[j].ir.l, ir_out.l, node_start[i], sh_start[j], out_rows
                    )
                )
            row_path += [p for _ in range(ir_out.dim) for p, _ in on_this]
            mid.append((len(on_this) * self.num_channels, ir_out))
            rows += ir_out.dim * len(on_this)
        coupling = coupling_tensor(blocks, self.irreps_sh.dim, self.dim_node, rows).transpose(1, 2)  # [sh, rows, D_in]
        return coupling.reshape(self.irreps_sh.dim, -1), torch.tensor(row_path, dtype=torch.long), o3.Irreps(mid)

    def edge_messages(
        self, features: torch.Tensor, edge_sh: torch.Tensor, path_weights: torch.Tensor, neighbour: torch.Tensor
    ) -> torch.Tensor:
        """Per-edge tensor-product messages ``[n_edges, rows, C]`` (rows: output irrep, m, path).

        ``features [n_atoms, D_in, C]`` (after ``linear_up``), ``edge_sh [n_edges, dim_sh]``,
        ``path_weights [n_edges, num_paths, C]``, ``neighbour [n_edges]`` (atom j of each edge).
        """
        c = self.constants.get(features.dtype, features.device)
        coupling = (edge_sh @ c["coupling"]).reshape(edge_sh.shape[0], self.num_rows, self.dim_node)
        neighbour_features = features.index_select(0, neighbour)  # [n_edges, D_in, C]
        if self.dim_node == 1:
            # scalar inputs: weight the (few) paths first, then one pass over the rows
            weighted = path_weights * neighbour_features  # [n_edges, paths, C]
            return coupling * weighted.index_select(1, c["row_path"])
        messages = torch.bmm(coupling, neighbour_features)
        return messages * path_weights.index_select(1, c["row_path"])

    def forward(
        self,
        node_features: torch.Tensor,
        species: torch.Tensor,
        edge_sh: torch.Tensor,
        radial_embedding: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n_atoms, C = node_features.shape[0], self.num_channels
        skip = None if self.skip is None else self.skip(node_features, species)
        features = self.linear_up(node_features).reshape(n_atoms, self.dim_node, C)

        def edge_sum(features, sh, radial, centre, neighbour, n_centres: int):
            path_weights = self.radial_mlp(radial).reshape(sh.shape[0], self.num_paths, C)
            messages = self.edge_messages(features, sh, path_weights, neighbour)
            return messages.new_zeros(n_centres, self.num_rows, C).index_add_(0, centre, messages)

        summed = self.edge_chunking.sum(
            edge_sum, (features,), (edge_sh, radial_embedding), edge_index, n_atoms, self.radial_mlp.parameters
        )
        atomic_basis = self.linear(summed.reshape(n_atoms, self.num_rows * C)) * (1.0 / self.avg_num_neighbors)
        if self.species_linear is not None:
            atomic_basis = self.species_linear(atomic_basis, species)
        return atomic_basis, skip

    def extra_repr(self) -> str:
        return f"{self.irreps_node} x {self.irreps_sh} -> {self.irreps_target}, skip -> {self.irreps_skip}, paths={self.num_paths}"
