"""Tensor-product paths and their Clebsch-Gordan coefficients, for both equivariant layouts.

A path couples irrep ``irreps_in[i_in]`` of the node features with irrep ``irreps_sh[i_sh]`` of
the edge spherical harmonics into an output irrep ``ir_out``. NequIP's
:class:`~mpnn_ip.nn.equivariant.tensor_product.ChannelwiseTensorProduct` (e3nn layout) and
MACE's :class:`~mpnn_ip.nn.mace.interaction.MACEInteraction` (channels-last layout) compute
the same "uvu" product, one output channel per input channel and one weight per path and
channel. Both list their paths with :func:`tensor_product_paths` and fill their coupling
matrices with :func:`coupling_tensor`: ``sqrt(2 l_out + 1) · wigner_3j(l_in, l_sh, l_out)``
(e3nn's "component" normalisation), in float64, handed out per dtype by
:class:`~mpnn_ip.nn.constants.DtypeConstants`.

Why the two products share paths and coefficients but not their kernel: both evaluate
``message[e] = (Y(r_e) · C) x_j`` as one batched matmul over edges, but NequIP stores a feature
as ``[mul, 2l+1]`` (e3nn) and multiplies ``x [mul, 2l+1] @ T [2l+1, width]``, while MACE stores
``[2l+1, C]`` (channels last, as its symmetric contraction needs) and multiplies
``T [rows, D] @ x [D, C]``. A common kernel would transpose an ``[n_edges, ...]`` tensor, the
largest of the model, in the forward and again in both backward passes of force training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
from e3nn import o3


class TensorProductPath(NamedTuple):
    """``irreps_in[i_in] x irreps_sh[i_sh] -> ir_out``."""

    i_in: int
    i_sh: int
    ir_out: o3.Irrep


def tensor_product_paths(irreps_in, irreps_sh, irreps_target) -> list[TensorProductPath]:
    """Every product ``irreps_in[i] x irreps_sh[j] -> ir_out`` with ``ir_out`` among ``irreps_target``.

    Ordered by input irrep, then harmonic irrep, then ``ir_out`` as ``ir_in * ir_sh`` lists them
    (e3nn's and MACE's order).
    """
    targets = {ir for _, ir in o3.Irreps(irreps_target)}
    return [
        TensorProductPath(i, j, ir_out)
        for i, (_, ir_in) in enumerate(o3.Irreps(irreps_in))
        for j, (_, ir_sh) in enumerate(o3.Irreps(irreps_sh))
        for ir_out in ir_in * ir_sh
        if ir_out in targets
    ]


def tp_path_exists(irreps_in, irreps_sh, ir_out) -> bool:
    """Whether some irrep of ``irreps_in`` times some irrep of ``irreps_sh`` contains ``ir_out``."""
    return bool(tensor_product_paths(irreps_in, irreps_sh, o3.Irreps([(1, o3.Irrep(ir_out))])))


def convolution_output_irreps(irreps_in, irreps_sh, irreps_target) -> o3.Irreps:
    """The part of ``irreps_target`` that a tensor product of ``irreps_in`` with ``irreps_sh`` can produce."""
    reachable = {path.ir_out for path in tensor_product_paths(irreps_in, irreps_sh, irreps_target)}
    return o3.Irreps([(mul, ir) for mul, ir in o3.Irreps(irreps_target) if ir in reachable])


def check_reachable(irreps_in, irreps_sh, irreps_out, who: str) -> None:
    """Raise ValueError naming all three irreps if some output irrep has no path."""
    irreps_out = o3.Irreps(irreps_out)
    reachable = {ir for _, ir in convolution_output_irreps(irreps_in, irreps_sh, irreps_out)}
    unreachable = [str(ir) for _, ir in irreps_out if ir not in reachable]
    if unreachable:
        raise ValueError(
            f"{who}: output irreps {irreps_out} contain {unreachable}, which no product of input irreps "
            f"{o3.Irreps(irreps_in)} with edge irreps {o3.Irreps(irreps_sh)} can produce"
        )


class CouplingBlock(NamedTuple):
    """Where one path's coefficients go in a coupling tensor: ``[sh, in, out]`` positions.

    ``in_start`` / ``sh_start`` are the first components of the path's input and harmonic
    irreps; ``out_index`` lists the ``2 l_out + 1`` output positions (any order, any stride).
    """

    l_in: int
    l_sh: int
    l_out: int
    in_start: int
    sh_start: int
    out_index: Sequence[int]


def coupling_tensor(blocks: Iterable[CouplingBlock], dim_sh: int, dim_in: int, dim_out: int) -> torch.Tensor:
    """float64 ``C [dim_sh, dim_in, dim_out]`` with ``sqrt(2 l_out + 1) · wigner_3j`` at every block, 0 elsewhere.

    ``(Y @ C.reshape(dim_sh, -1)).reshape(dim_in, dim_out)`` is then the per-edge map from input
    components to output components: the "uvu" tensor product with the harmonics ``Y`` for one channel.
    """
    coupling = torch.zeros(dim_sh, dim_in, dim_out, dtype=torch.float64)
    for b in blocks:
        d_in, d_sh = 2 * b.l_in + 1, 2 * b.l_sh + 1
        cg = o3.wigner_3j(b.l_in, b.l_sh, b.l_out, dtype=torch.float64) * math.sqrt(2 * b.l_out + 1)
        out_index = torch.as_tensor(b.out_index, dtype=torch.long)
        coupling[b.sh_start : b.sh_start + d_sh, b.in_start : b.in_start + d_in, out_index] = cg.permute(1, 0, 2)
    return coupling
