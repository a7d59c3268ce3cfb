"""Channel-wise ("uvu") tensor product of node features with edge spherical harmonics, fused for CPU speed.

Features in e3nn's layout (per irrep ``[mul, 2l+1]``). Computes exactly what
``e3nn.o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False,
internal_weights=False)`` computes for the "uvu" instructions of :func:`convolution_paths`
(same weight layout, same ``sqrt(2 l_out + 1)`` path normalisation), with far fewer, larger
tensor operations:

* input irreps with the same l and the same paths (e.g. ``1o`` and ``1e``) form one group;
* per group, all Clebsch-Gordan coefficients are folded with the spherical harmonics into one
  per-edge matrix ``T[e] = sh[e] · C`` ``[width, 2l+1]`` (one matrix product for all paths of
  the group), rows ordered by output width, then path, then component;
* the neighbours' features are gathered per group channels-last ``[2l+1, mul]`` and multiplied
  with ``T`` in one batched product; each path's weights ``[1, mul]`` then multiply its rows by
  broadcasting over the components (the radial MLP emits its weights in this path order,
  :meth:`ChannelwiseTensorProduct.weight_columns`), so no per-edge copy of the weights is made;
* messages stay in this grouped order; :meth:`ChannelwiseTensorProduct.sum_messages` sums each
  piece over edges and only then concatenates and reorders the columns into ``irreps_mid``
  order, on the (fewer) atoms.

e3nn's generic code instead slices and pads once per path, which dominates the cost of
forces and of the force loss's double backward on CPU. Paths and coefficients come from
:mod:`mpnn_ip.nn.couplings` (shared with MACE's channels-last product, which says why the two
kernels stay apart); the coefficients follow :mod:`mpnn_ip.nn.constants`' dtype policy.
"""

from __future__ import annotations

import torch
from e3nn import o3

from mpnn_ip.nn.constants import DtypeConstants
from mpnn_ip.nn.couplings import CouplingBlock, coupling_tensor, tensor_product_paths


def convolution_paths(irreps_in, irreps_sh, irreps_target) -> tuple[o3.Irreps, list[tuple]]:
    """Output irreps and e3nn "uvu" instructions of the message tensor product.

    Every path of :func:`~mpnn_ip.nn.couplings.tensor_product_paths` keeps the multiplicity of
    its input irrep. The outputs are sorted by irrep so that the following linear layer sees
    them grouped. Returns (irreps_mid sorted, not simplified; instructions ``(i, j, k, "uvu", True)``).
    """
    irreps_in = o3.Irreps(irreps_in)
    paths = tensor_product_paths(irreps_in, irreps_sh, irreps_target)
    irreps_mid, permutation, _ = o3.Irreps([(irreps_in[i].mul, ir_out) for i, _, ir_out in paths]).sort()
    return irreps_mid, [(i, j, permutation[k], "uvu", True) for k, (i, j, _) in enumerate(paths)]


class ChannelwiseTensorProduct(torch.nn.Module):
    """Per-edge "uvu" tensor product ``x_j ⊗ Y(r_ij)`` with per-edge, per-channel weights.

    Args:
        irreps_in: node feature irreps.
        irreps_sh: edge spherical-harmonics irreps.
        irreps_mid: output irreps (one entry per instruction, sorted) and
        instructions: ``(i_in, i_sh, i_out, "uvu", True)`` as from :func:`convolution_paths`.
    ``weight_numel`` weights per edge, laid out instruction by instruction (``mul_in`` each), as e3nn;
    :meth:`sum_messages` takes them reordered by :meth:`weight_columns` (the order of its groups and paths).
    """

    def __init__(self, irreps_in, irreps_sh, irreps_mid, instructions):
        super().__init__()
        self.irreps_in, self.irreps_sh, self.irreps_out = (
            o3.Irreps(irreps_in),
            o3.Irreps(irreps_sh),
            o3.Irreps(irreps_mid),
        )
        if any(ins[3] != "uvu" for ins in instructions):
            raise ValueError("ChannelwiseTensorProduct only implements 'uvu' instructions")
        weight_offsets, offset = [], 0
        for i_in, *_ in instructions:
            weight_offsets.append(offset)
            offset += self.irreps_in[i_in].mul
        self.weight_numel = offset

        # group the inputs that share l and the (sh irrep, l_out) sequence of their paths
        paths_of_input: dict[int, list[int]] = {}
        for index, ins in enumerate(instructions):
            paths_of_input.setdefault(ins[0], []).append(index)
        groups: dict[tuple, list[int]] = {}
        for i_in, indices in paths_of_input.items():
            key = (
                self.irreps_in[i_in].ir.l,
                tuple((instructions[k][1], self.irreps_out[instructions[k][2]].ir.l) for k in indices),
            )
            groups.setdefault(key, []).append(i_in)

        in_slices, sh_slices, mid_slices = self.irreps_in.slices(), self.irreps_sh.slices(), self.irreps_out.slices()
        #: per group: (input slices with their mul, mul_total, d_in, width, [(paths, 2l+1) per width class])
        self._groups = []
        constants, weight_columns = {}, []
        permutation = torch.empty(self.irreps_out.dim, dtype=torch.long)
        column = 0  # start of the group's piece in the concatenated node sums
        for group_index, ((l_in, path_keys), inputs) in enumerate(groups.items()):
            d_in = 2 * l_in + 1
            widths = [2 * l_out + 1 for _, l_out in path_keys]
            classes = sorted(set(widths))
            path_sequence = [p for w in classes for p in range(len(widths)) if widths[p] == w]
            row_start = {p: sum(widths[q] for q in path_sequence[: path_sequence.index(p)]) for p in path_sequence}
            width = sum(widths)
            blocks = [
                CouplingBlock(
                    l_in,
                    self.irreps_sh[i_sh].ir.l,
                    l_out,
                    0,
                    sh_slices[i_sh].start,
                    range(row_start[p], row_start[p] + widths[p]),
                )
                for p, (i_sh, l_out) in enumerate(path_keys)
            ]
            coupling = coupling_tensor(blocks, self.irreps_sh.dim, d_in, width).transpose(1, 2)  # [sh, width, d_in]
            constants[f"coupling_{group_index}"] = coupling.reshape(self.irreps_sh.dim, width * d_in)
            channels = [(i_in, u) for i_in in inputs for u in range(self.irreps_in[i_in].mul)]
            mul_total = len(channels)
            weight_columns += [
                weight_offsets[paths_of_input[i_in][p]] + u for p in path_sequence for i_in, u in channels
            ]
            for p in path_sequence:
                for m in range(widths[p]):
                    for u_total, (i_in, u) in enumerate(channels):
                        k = paths_of_input[i_in][p]
                        position = column + (row_start[p] + m) * mul_total + u_total
                        permutation[mid_slices[instructions[k][2]].start + u * widths[p] + m] = position
            pieces = [(sum(1 for q in path_sequence if widths[q] == w), w) for w in classes]
            self._groups.append(
                ([(in_slices[i], self.irreps_in[i].mul) for i in inputs], mul_total, d_in, width, pieces)
            )
            column += width * mul_total
        constants["permutation"] = permutation
        constants["weight_columns"] = torch.tensor(weight_columns, dtype=torch.long)
        self.constants = DtypeConstants(constants)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before the coefficients moved to DtypeConstants hold them as buffers of
        # this module (which has no state of its own); they follow from the irreps, so they are rebuilt.
        for key in [k for k in state_dict if k.startswith(prefix) and "." not in k[len(prefix) :]]:
            del state_dict[key]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weight_columns(self, like: torch.Tensor | None = None) -> torch.Tensor:
        """``[weight_numel]`` long: the e3nn-layout weight index of every weight :meth:`sum_messages`
        takes, on the device of ``like`` (the tensor the weights are computed from; default CPU)."""
        dtype, device = (torch.float64, torch.device("cpu")) if like is None else (like.dtype, like.device)
        return self.constants.get(dtype, device)["weight_columns"]

    def _pieces(self, node_features, edge_sh, path_weights, neighbour):
        """Yield the messages ``[n_edges, paths * (2l+1) * mul]`` of every (group, output width) piece."""
        n_edges = edge_sh.shape[0]
        c = self.constants.get(edge_sh.dtype, edge_sh.device)
        group_weights = path_weights.split(
            [mul_total * sum(n for n, _ in pieces) for _, mul_total, _, _, pieces in self._groups], dim=1
        )
        for index, ((inputs, mul_total, d_in, width, pieces), weights) in enumerate(zip(self._groups, group_weights)):
            rows = [node_features[:, s].reshape(-1, mul, d_in) for s, mul in inputs]
            x = (rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)).transpose(1, 2)  # [n, d_in, mul_total]
            if neighbour is not None:  # index_select: its backward is an index_add, not an accumulating index_put
                x = x.contiguous().index_select(0, neighbour)
            coupling = (edge_sh @ c[f"coupling_{index}"]).reshape(n_edges, width, d_in)
            path_counts = [n for n, _ in pieces]
            weights = weights.reshape(n_edges, sum(path_counts), mul_total)
            if d_in == 1:
                # scalar inputs: weight the paths first, then one pass over the components
                weighted = (weights * x).split(path_counts, dim=1)
                parts = coupling.split([n * w for n, w in pieces], dim=1)
                for part, w_part, (n, w) in zip(parts, weighted, pieces):
                    yield (part.reshape(n_edges, n, w, 1) * w_part.unsqueeze(2)).reshape(n_edges, n * w * mul_total)
                continue
            products = torch.bmm(coupling, x).split([n * w for n, w in pieces], dim=1)  # [n_edges, rows, mul_total]
            for product, w_part, (n, w) in zip(products, weights.split(path_counts, dim=1), pieces):
                yield (product.reshape(n_edges, n, w, mul_total) * w_part.unsqueeze(2)).reshape(
                    n_edges, n * w * mul_total
                )

    def sum_messages(
        self,
        node_features: torch.Tensor,
        edge_sh: torch.Tensor,
        path_weights: torch.Tensor,
        edge_index: torch.Tensor,
        n_centres: int | None = None,
    ) -> torch.Tensor:
        """``sum_j x_j ⊗ Y(r_ij)`` at every centre i: ``[n_centres, irreps_out.dim]`` in ``irreps_out`` order.

        ``node_features [n_atoms, irreps_in.dim]``, ``edge_sh [n_edges, irreps_sh.dim]``,
        ``path_weights [n_edges, weight_numel]``: the e3nn-layout weights' columns
        :meth:`weight_columns`, ``edge_index [2, n_edges]`` (centre i, neighbour j);
        ``n_centres`` (default ``n_atoms``): number of output rows, for a chunk of edges whose
        centres count from the chunk's first atom.
        Each piece is summed over edges separately, so the concatenation and the column
        reordering act on atoms rather than on the (many more) edges.
        """
        centre, neighbour = edge_index[0], edge_index[1]
        n_atoms = node_features.shape[0] if n_centres is None else n_centres
        # index_add_ with the 1-D centre index: its backward is one index_select, where a scatter
        # broadcasts the index to every column and differentiates to a gather over all of them
        sums = [
            m.new_zeros(n_atoms, m.shape[1]).index_add_(0, centre, m)
            for m in self._pieces(node_features, edge_sh, path_weights, neighbour)
        ]
        return self.to_irreps_layout(sums[0] if len(sums) == 1 else torch.cat(sums, dim=1))

    def to_irreps_layout(self, grouped: torch.Tensor) -> torch.Tensor:
        """Reorder the last dimension from grouped order to ``irreps_out`` order."""
        return grouped.index_select(-1, self.constants.get(grouped.dtype, grouped.device)["permutation"])

    def forward(self, edge_features: torch.Tensor, edge_sh: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Same call and result as the e3nn TensorProduct (e3nn-layout ``weights``): ``[n_edges, irreps_out.dim]``."""
        path_weights = weights.index_select(1, self.weight_columns(weights))
        messages = list(self._pieces(edge_features, edge_sh, path_weights, None))
        return self.to_irreps_layout(messages[0] if len(messages) == 1 else torch.cat(messages, dim=1))

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out} | {self.weight_numel} weights"
