"""Exact weight maps from NequIP 0.19's e3nn blocks onto ours, as dense per-irrep matrices.

Both sides use e3nn's ``o3.Linear`` (and NequIP its ``FullyConnectedTensorProduct``), but with
irreps that group channels differently (NequIP simplifies the convolution's output irreps, our
gate keeps scalars, gates and gated irreps apart; our self-connection is one linear map to S
copies of the output). Every equivariant linear map is a matrix per irrep ``ir`` from the input
channels of ``ir`` (in irreps order) to the output channels of ``ir``, independent of how the
irreps are split into entries; so each source weight is expanded into those effective matrices
(path normalisations included) and each of ours is filled from them (divided by our own
normalisations). The normalisations are read from e3nn modules built with the source's irreps,
the same code NequIP runs, never recomputed by hand.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3

#: per irrep, the effective matrix ``[input channels of ir, output channels of ir]``
DenseBlocks = dict[o3.Irrep, torch.Tensor]


def channel_starts(irreps: o3.Irreps) -> tuple[list[int], dict[o3.Irrep, int]]:
    """Start of each entry's channels within the channels of its irrep, and the channel count per irrep."""
    starts, totals = [], {}
    for mul, ir in irreps:
        starts.append(totals.get(ir, 0))
        totals[ir] = totals.get(ir, 0) + mul
    return starts, totals


def linear_dense(irreps_in, irreps_out, weight: torch.Tensor) -> DenseBlocks:
    """Effective matrices of an e3nn ``o3.Linear(irreps_in, irreps_out)`` (no biases) with flat ``weight``."""
    reference = o3.Linear(irreps_in, irreps_out)
    if weight.numel() != reference.weight_numel:
        raise ValueError(
            f"o3.Linear {irreps_in} -> {irreps_out} has {reference.weight_numel} weights, the file gives {weight.numel()}"
        )
    in_starts, in_totals = channel_starts(reference.irreps_in)
    out_starts, out_totals = channel_starts(reference.irreps_out)
    dense = {ir: weight.new_zeros(in_totals[ir], out_totals[ir]) for ir in in_totals if ir in out_totals}
    offset = 0
    for ins in reference.instructions:
        mul_in, mul_out = ins.path_shape
        block = weight[offset : offset + mul_in * mul_out].reshape(mul_in, mul_out) * ins.path_weight
        offset += mul_in * mul_out
        ir = reference.irreps_in[ins.i_in].ir
        r, c = in_starts[ins.i_in], out_starts[ins.i_out]
        dense[ir][r : r + mul_in, c : c + mul_out] = block
    return dense


def load_linear(linear: o3.Linear, dense: DenseBlocks, what: str) -> None:
    """Set ``linear.weight`` so that its effective matrices equal ``dense`` (irreps absent from ``dense`` get 0)."""
    in_starts, in_totals = channel_starts(linear.irreps_in)
    out_starts, out_totals = channel_starts(linear.irreps_out)
    for ir, block in dense.items():
        expected = (in_totals.get(ir, 0), out_totals.get(ir, 0))
        if tuple(block.shape) != expected and bool(block.abs().sum() > 0):
            raise ValueError(f"{what}: irrep {ir} maps {tuple(block.shape)} channels in the source, {expected} in ours")
    pieces = []
    for ins in linear.instructions:
        mul_in, mul_out = ins.path_shape
        ir = linear.irreps_in[ins.i_in].ir
        r, c = in_starts[ins.i_in], out_starts[ins.i_out]
        block = dense.get(ir)
        if block is None:
            pieces.append(torch.zeros(mul_in * mul_out, dtype=torch.float64))
            continue
        pieces.append((block[r : r + mul_in, c : c + mul_out] / ins.path_weight).reshape(-1))
    flat = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(flat.to(linear.weight.dtype))


def self_connection_dense(
    irreps_in, num_attrs: int, irreps_out, weight: torch.Tensor, attrs: torch.Tensor
) -> list[DenseBlocks]:
    """Per species, the effective matrices of NequIP's self-connection
    ``FullyConnectedTensorProduct(irreps_in, f"{num_attrs}x0e", irreps_out)(x, attrs[s])``.

    The second input of the tensor product is the species embedding (a constant per species), so
    the product is a linear map of x for each species: ``sum_v w[u, v, w] attrs[s, v]`` per path,
    times the path's normalisation. ``attrs: [S, num_attrs]`` (one row per species, in our order).
    """
    reference = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{num_attrs}x0e"), irreps_out)
    if weight.numel() != reference.weight_numel:
        raise ValueError(
            f"self-connection {irreps_in} x {num_attrs}x0e -> {irreps_out} has {reference.weight_numel} weights, the file gives {weight.numel()}"
        )
    in_starts, in_totals = channel_starts(reference.irreps_in1)
    out_starts, out_totals = channel_starts(reference.irreps_out)
    out = []
    for row in attrs.to(torch.float64):
        dense = {ir: weight.new_zeros(in_totals[ir], out_totals[ir]) for ir in in_totals if ir in out_totals}
        offset = 0
        for ins in reference.instructions:
            size = math.prod(ins.path_shape)
            mul_in, mul_attr, mul_out = ins.path_shape
            block = weight[offset : offset + size].reshape(mul_in, mul_attr, mul_out)
            offset += size
            ir = reference.irreps_in1[ins.i_in1].ir
            # e3nn couples l x 0e -> l with path_weight * wigner_3j(l, 0, l), a multiple of the identity
            ir_l = ir.l
            coupling = float(o3.wigner_3j(ir_l, 0, ir_l, dtype=torch.float64)[0, 0, 0]) * ins.path_weight
            effective = torch.einsum("uvw,v->uw", block, row) * coupling
            r, c = in_starts[ins.i_in1], out_starts[ins.i_out]
            dense[ir][r : r + mul_in, c : c + mul_out] += effective
        out.append(dense)
    return out


def species_linear_dense(
    per_species: list[DenseBlocks], irreps_out: o3.Irreps, species_normalization: float
) -> DenseBlocks:
    """The effective matrices of the one ``o3.Linear`` of :class:`~mpnn_ip.nn.SpeciesSelfInteraction`
    (outputs: S copies of every ``irreps_out`` entry, copy s at ``s * mul + w``) from one dense map per species."""
    num_species = len(per_species)
    out_starts, _ = channel_starts(irreps_out)
    expanded = o3.Irreps([(num_species * mul, ir) for mul, ir in irreps_out])
    exp_starts, exp_totals = channel_starts(expanded)
    irreps = {ir for _, ir in irreps_out}
    dense = {}
    for ir in irreps:
        rows = next((d[ir].shape[0] for d in per_species if ir in d), None)
        if rows is None:
            continue
        block = torch.zeros(rows, exp_totals[ir], dtype=torch.float64)
        for k, (mul, entry_ir) in enumerate(irreps_out):
            if entry_ir != ir:
                continue
            for s, species_dense in enumerate(per_species):
                source = species_dense[ir][:, out_starts[k] : out_starts[k] + mul]
                start = exp_starts[k] + s * mul
                block[:, start : start + mul] = source / species_normalization
        dense[ir] = block
    return dense


def activation_scale(act) -> float:
    """The constant e3nn's ``normalize2mom`` multiplies an activation by (1 when it is treated as the identity)."""
    if act is None or getattr(act, "_is_id", False):
        return 1.0
    return float(getattr(act, "cst", 1.0))


def load_radial_mlp(net, weights: list[torch.Tensor], input_scale: float) -> None:
    """Fill our radial MLP (e3nn ``FullyConnectedNet``: ``act(x @ W / sqrt(h_in var_in)) sqrt(var_out)``
    with the normalised activation ``c * silu``) from NequIP's ``ScalarMLPFunction`` (bias-free,
    ``silu(x @ W alpha)``, ``alpha = gain / sqrt(h_in)``, gain 1 for the first layer and sqrt(2) after).

    ``input_scale``: NequIP's radial embedding divided by ours. Each hidden layer of ours carries
    NequIP's activations times a known factor, which the next layer's weights divide out.
    """
    layers = list(net)
    if len(layers) != len(weights):
        raise ValueError(f"radial MLP: the source has {len(weights)} layers, ours {len(layers)}")
    ours_per_source = 1.0 / input_scale  # our layer input = source layer input * this
    for k, (layer, weight) in enumerate(zip(layers, weights)):
        if tuple(layer.weight.shape) != tuple(weight.shape):
            raise ValueError(
                f"radial MLP layer {k}: source weight {tuple(weight.shape)}, ours {tuple(layer.weight.shape)}"
            )
        h_in = weight.shape[0]
        alpha = (1.0 if k == 0 else math.sqrt(2.0)) / math.sqrt(h_in)
        if layer.act is not None:
            ours_norm = 1.0 / math.sqrt(layer.h_in * layer.var_in)
        else:
            ours_norm = 1.0 / math.sqrt(layer.h_in * layer.var_in / layer.var_out)
        with torch.no_grad():
            layer.weight.copy_(
                (weight.to(torch.float64) * alpha / (ours_norm * ours_per_source)).to(layer.weight.dtype)
            )
        if layer.act is not None:
            ours_per_source = activation_scale(layer.act) * math.sqrt(layer.var_out)
