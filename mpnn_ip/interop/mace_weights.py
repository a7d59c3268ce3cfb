"""Weight maps from mace-torch's (e3nn 0.4) blocks to our MACE blocks, exact in float64.

Every function takes records / tensors read by :mod:`mpnn_ip.interop.safe_pickle` and returns
tensors shaped as our modules' parameters. Layouts:
- e3nn ``o3.Linear``: one flat ``weight``, per instruction ``(i_in, i_out)`` a ``[mul_in, mul_out]``
  block in instruction order, normalised by ``1/sqrt(Σ mul_in)`` over the instructions of an output
  (our :class:`~mpnn_ip.nn.mace.linear.ChannelsLastLinear` keeps one ``[Σ mul_in, mul_out]`` block
  per output irrep, the inputs of that irrep stacked in instruction order: the same map);
- e3nn ``FullyConnectedTensorProduct`` with the species one-hot (``skip_tp``): per instruction
  ``[mul_1, S, mul_out]``, ours ``[mul_1, S * mul_out]``;
- the symmetric contraction: mace's ``U_matrix_ν [(2L+1,) D.., K]`` and weights ``[S, K, C]`` are
  projected onto our orthogonal symmetric basis (:func:`~mpnn_ip.nn.mace.symmetric_contraction.symmetric_coupling_basis`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from e3nn import o3

from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.records import irreps_of
from mpnn_ip.interop.safe_pickle import Record
from mpnn_ip.nn.mace.symmetric_contraction import symmetric_coupling_basis

#: largest allowed projection residual of a mace coupling onto our symmetric basis (float64)
PROJECTION_TOLERANCE = 1e-9


def _instruction(record) -> tuple:
    """``(i_in, i_out)`` or ``(i_in1, i_in2, i_out, mode)`` fields of an e3nn Instruction record (a NamedTuple)."""
    if isinstance(record, Record):
        return tuple(record.args)
    return tuple(record)


def linear_blocks(linear: Record, weight: torch.Tensor, where: str) -> dict[int, torch.Tensor]:
    """Per output index of an e3nn ``o3.Linear`` record: the ``[Σ mul_in, mul_out]`` weight block of
    all its instructions, stacked in instruction order (float64). Refuses biases."""
    irreps_in, irreps_out = irreps_of(linear.irreps_in), irreps_of(linear.irreps_out)
    if int(linear.get("bias_numel", 0) or 0):
        raise UnsupportedModelError(f"{where}: an e3nn Linear with biases is not converted")
    blocks: dict[int, list[torch.Tensor]] = {}
    offset = 0
    for ins in linear.instructions:
        i_in, i_out = int(_instruction(ins)[0]), int(_instruction(ins)[1])
        mul_in, mul_out = irreps_in[i_in].mul, irreps_out[i_out].mul
        blocks.setdefault(i_out, []).append(weight[offset : offset + mul_in * mul_out].reshape(mul_in, mul_out))
        offset += mul_in * mul_out
    if offset != weight.numel():
        raise UnsupportedModelError(f"{where}: weight has {weight.numel()} entries, its instructions need {offset}")
    return {i_out: torch.cat(parts, dim=0).to(torch.float64) for i_out, parts in blocks.items()}


def channels_last_linear(linear: Record, weight: torch.Tensor, irreps_out_ours, where: str) -> list[torch.Tensor]:
    """Weights of our ``ChannelsLastLinear`` (one per output irrep of ``irreps_out_ours``) from an e3nn Linear."""
    irreps_out = irreps_of(linear.irreps_out)
    blocks = linear_blocks(linear, weight, where)
    by_irrep = {irreps_out[i].ir: block for i, block in blocks.items()}
    out = []
    for mul, ir in o3.Irreps(irreps_out_ours):
        if ir not in by_irrep or by_irrep[ir].shape[1] != mul:
            raise UnsupportedModelError(
                f"{where}: no {mul}x{ir} output in the source's linear map {irreps_of(linear.irreps_in)} -> {irreps_out}"
            )
        out.append(by_irrep[ir])
    return out


def species_skip(tp: Record, weight: torch.Tensor, num_species: int, irreps_out_ours, where: str) -> list[torch.Tensor]:
    """Weights of our ``SpeciesChannelsLastLinear`` from mace's ``skip_tp`` (``FullyConnectedTensorProduct``
    of features with the ``S x 0e`` species one-hot): per present output irrep ``[mul_in, S * mul_out]``."""
    irreps_in1, irreps_in2, irreps_out = irreps_of(tp.irreps_in1), irreps_of(tp.irreps_in2), irreps_of(tp.irreps_out)
    if irreps_in2 != o3.Irreps(f"{num_species}x0e"):
        raise UnsupportedModelError(f"{where}: second input {irreps_in2} is not the {num_species}x0e species one-hot")
    found: dict[o3.Irrep, torch.Tensor] = {}
    offset = 0
    for ins in tp.instructions:
        i1, i2, i_out, mode = _instruction(ins)[:4]
        mul1, mul2, mul_out = irreps_in1[i1].mul, irreps_in2[i2].mul, irreps_out[i_out].mul
        if mode != "uvw" or irreps_in1[i1].ir != irreps_out[i_out].ir or irreps_out[i_out].ir in found:
            raise UnsupportedModelError(f"{where}: unexpected skip instruction {(i1, i2, i_out, mode)}")
        block = weight[offset : offset + mul1 * mul2 * mul_out].reshape(mul1, mul2, mul_out)
        found[irreps_out[i_out].ir] = block.reshape(mul1, mul2 * mul_out).to(torch.float64)
        offset += mul1 * mul2 * mul_out
    if offset != weight.numel():
        raise UnsupportedModelError(f"{where}: weight has {weight.numel()} entries, its instructions need {offset}")
    return [found[ir] for _, ir in o3.Irreps(irreps_out_ours) if ir in found]


def edge_path_order(tp: Record, ours: Sequence, where: str) -> list[int]:
    """For each of the source's ``conv_tp`` instructions (its weight order), the index of our path.

    mace sorts its instructions by output irrep; the messages of one output irrep must still come
    in our path order (the following linear map reads them in that order), which is checked.
    """
    irreps_out = irreps_of(tp.irreps_out)
    mine = {(p.i_in, p.i_sh, p.ir_out): k for k, p in enumerate(ours)}
    order, slots = [], {}
    for ins in tp.instructions:
        i1, i2, i_out, mode, has_weight = _instruction(ins)[:5]
        if mode != "uvu" or not has_weight:
            raise UnsupportedModelError(
                f"{where}: edge tensor-product instruction {(i1, i2, i_out, mode, has_weight)} is not a weighted 'uvu' path"
            )
        key = (int(i1), int(i2), irreps_out[int(i_out)].ir)
        if key not in mine:
            raise UnsupportedModelError(f"{where}: edge tensor-product path {key} is not among ours")
        order.append(mine[key])
        slots.setdefault(key[2], []).append((int(i_out), mine[key]))
    if sorted(order) != list(range(len(ours))):
        raise UnsupportedModelError(
            f"{where}: the source's edge tensor product has {len(order)} paths, ours {len(ours)}"
        )
    for ir, pairs in slots.items():
        if [k for _, k in sorted(pairs)] != sorted(k for _, k in pairs):
            raise UnsupportedModelError(f"{where}: messages of {ir} are stored in another order than ours")
    return order


def _symmetrise(u: torch.Tensor, nu: int) -> torch.Tensor:
    """Mean over the permutations of the ν feature axes (axes 1..ν of ``[M, D.., K]``)."""
    perms = list(itertools.permutations(range(1, nu + 1)))
    return sum(u.permute(0, *p, nu + 1) for p in perms) / len(perms)


def contraction_weights(
    u_matrix: torch.Tensor, weights: torch.Tensor, nu: int, coupling_irreps, ir_out, where: str
) -> torch.Tensor | None:
    """Our species weights ``[S, P, C]`` for correlation ν of one output irrep, or None (no coupling).

    ``u_matrix``: mace's ``U_matrix_ν`` (``[D]*ν + [K]`` for L = 0, ``[2L+1] + [D]*ν + [K]`` otherwise);
    ``weights``: mace's ``[S, K, C]``. Each of mace's K couplings enters the function only through
    its part symmetric in the ν factors of A; that part lies in our basis' span (checked: the
    residual must vanish), so ``w_ours[s, p, c] = Σ_k coef[k, p] w[s, k, c]`` gives the same function.
    """
    ir = o3.Irrep(ir_out)
    u = u_matrix.to(torch.float64)
    if ir.l == 0 and u.dim() == nu + 1:
        u = u.unsqueeze(0)
    basis = symmetric_coupling_basis(coupling_irreps, nu, ir)  # [P, M, D..]
    if not torch.any(u != 0):
        return None
    if u.shape[:-1] != basis.shape[1:]:
        raise UnsupportedModelError(
            f"{where}: U_matrix_{nu} has shape {tuple(u.shape)}, expected {tuple(basis.shape[1:])} + [K]"
        )
    if basis.shape[0] == 0:
        raise UnsupportedModelError(f"{where}: correlation {nu} coupling to {ir} has no symmetric part in our basis")
    symmetric = _symmetrise(u, nu).movedim(-1, 0).reshape(u.shape[-1], -1)  # [K, M*D^nu]
    flat = basis.reshape(basis.shape[0], -1)  # [P, M*D^nu], rows orthogonal with squared norm 2L+1
    coefficients = symmetric @ flat.T / ir.dim  # [K, P]
    residual = (symmetric - coefficients @ flat).abs().max().item() if symmetric.numel() else 0.0
    if residual > PROJECTION_TOLERANCE * max(1.0, symmetric.abs().max().item()):
        raise UnsupportedModelError(
            f"{where}: U_matrix_{nu} is not in the span of the symmetric couplings (residual {residual:.2e})"
        )
    w = weights.to(torch.float64)
    if w.shape[1] != coefficients.shape[0]:
        raise UnsupportedModelError(
            f"{where}: weights of shape {tuple(w.shape)} do not match U_matrix_{nu}'s K = {coefficients.shape[0]}"
        )
    return torch.einsum("kp,skc->spc", coefficients, w)
