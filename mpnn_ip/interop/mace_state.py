"""The state dict of our MACE from a mace-torch model's tensors (see :mod:`mpnn_ip.interop.mace`).

:func:`converted_state` maps every parameter block by block with :mod:`mpnn_ip.interop.mace_weights`
and re-sets in float64 the buffers our constructor made in the default dtype (scale, shift, element
tables), from the file where it holds them.
"""

from __future__ import annotations

import math

import torch

from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.mace_weights import (
    channels_last_linear,
    contraction_weights,
    edge_path_order,
    linear_blocks,
    species_skip,
)
from mpnn_ip.interop.records import irreps_of
from mpnn_ip.interop.safe_pickle import Record, module_children
from mpnn_ip.models.heads import per_head_values
from mpnn_ip.nn.couplings import tensor_product_paths


def f64(tensor: torch.Tensor) -> torch.Tensor:
    """A detached float64 copy."""
    return tensor.detach().to(torch.float64)


def refuse(option: str, detail: str = "") -> UnsupportedModelError:
    """The error for a source option we do not convert, naming it (and what is supported)."""
    return UnsupportedModelError(
        f"mace-torch model: {option} is not supported by mpnn-import"
        + (f" ({detail})" if detail else "")
        + "; supported: ScaleShiftMACE/MACE with RealAgnostic(Residual)InteractionBlock, Bessel or Gaussian radial basis, "
        "no/Agnesi/Soft distance transform, optional ZBL pair repulsion"
    )


def children_list(record: Record, name: str) -> list[Record]:
    """The modules of the ``ModuleList`` child ``name`` of ``record``, in index order."""
    container = module_children(record).get(name)
    return (
        []
        if container is None
        else [module_children(container)[k] for k in sorted(module_children(container), key=int)]
    )


def converted_state(ours, tensors, interactions, products, readouts, radial_buffers, mlp_width) -> dict:
    """Our MACE's state dict (float64) from mace's ``tensors`` (``module_tensors`` of the whole model).

    Args:
        ours: the freshly built :class:`~mpnn_ip.models.MACE`, with the source's heads; interactions, products,
            readouts: the mace block records, in order; radial_buffers: the radial embedding's buffers by our
            name; mlp_width: hidden width of one head's last readout (or None).
    """
    state: dict[str, torch.Tensor] = {}
    num_species, num_heads = ours.num_species, ours.num_heads
    state["species_embedding.weight"] = f64(tensors["node_embedding.linear.weight"]).reshape(num_species, -1)
    # buffers our constructor made in the default dtype are set again in float64, from the file where it has them
    for name, argument in (("scale", "energy_scale"), ("shift", "energy_shift")):
        values = per_head_values(ours.config[argument], ours.heads)
        rows = torch.tensor([[float(v)] * num_species for v in values], dtype=torch.float64)
        state[f"scale_shift.{name}"] = rows[0] if num_heads == 1 else rows
    species = torch.tensor(ours.species)
    for module, key in (
        ("radial_embedding.distance_transform.", "radial_embedding."),
        ("pair_repulsion_fn.", "pair_repulsion."),
    ):
        if module + "covalent_radii" in tensors and key + "radii" in ours.state_dict():
            state[key + "radii"] = f64(tensors[module + "covalent_radii"])[species]
    if ours.pair_repulsion is not None:
        state["pair_repulsion.z"] = species.to(torch.float64)
    prefix = (
        "radial_embedding.basis." if "radial_embedding.basis.frequencies" in ours.state_dict() else "radial_embedding."
    )
    for name, value in radial_buffers.items():
        if name == "_width":
            if abs(float(value) - ours.radial_embedding.width) > 1e-12 * ours.radial_embedding.width:
                raise refuse(f"Gaussian width {float(value)} (ours {ours.radial_embedding.width})")
            continue
        state[prefix + name] = f64(value)
    if ours.pair_repulsion is not None:
        state["pair_repulsion.coefficients"] = f64(tensors["pair_repulsion_fn.c"])
        state["pair_repulsion.a_exp"] = f64(tensors["pair_repulsion_fn.a_exp"]).reshape(())
        state["pair_repulsion.a_prefactor"] = f64(tensors["pair_repulsion_fn.a_prefactor"]).reshape(())
        if int(tensors["pair_repulsion_fn.p"]) != int(ours.pair_repulsion.p):
            raise refuse(f"ZBL envelope p={int(tensors['pair_repulsion_fn.p'])} differing from the radial cutoff's")

    for index, (block, interaction) in enumerate(zip(interactions, ours.interactions)):
        state.update(_interaction_state(block, interaction, index, tensors, num_species))
    for index, (block, product) in enumerate(zip(products, ours.products)):
        state.update(_product_state(block, product, index, tensors))
    for index, block in enumerate(readouts):
        state.update(_readout_state(block, index, tensors, num_heads, mlp_width))
    return state


def _interaction_state(block: Record, interaction, index: int, tensors: dict, num_species: int) -> dict:
    """Our ``MACEInteraction`` weights from mace's interaction block ``index``."""
    state: dict[str, torch.Tensor] = {}
    where = f"interaction {index}"
    parts = module_children(block)
    src = f"interactions.{index}."
    dst = f"interactions.{index}."
    theirs = (irreps_of(block.node_feats_irreps), irreps_of(block.target_irreps))
    if theirs != (interaction.irreps_node, interaction.irreps_target):
        raise refuse(
            f"{where} with node irreps {theirs[0]} and atomic-basis irreps {theirs[1]}",
            f"ours would be {interaction.irreps_node} and {interaction.irreps_target}",
        )
    for i, w in enumerate(
        channels_last_linear(
            parts["linear_up"], tensors[src + "linear_up.weight"], interaction.irreps_node, where + " linear_up"
        )
    ):
        state[f"{dst}linear_up.weights.{i}"] = w
    paths = _edge_paths(interaction)
    order = edge_path_order(parts["conv_tp"], paths, where)
    fc = module_children(parts["conv_tp_weights"])
    layers = sorted(fc, key=lambda name: int(name.removeprefix("layer")))
    for n, layer in enumerate(layers):
        weight = f64(tensors[f"{src}conv_tp_weights.{layer}.weight"])
        if n == len(layers) - 1:
            C = interaction.num_channels
            columns = weight.reshape(weight.shape[0], len(paths), C)
            weight = torch.empty_like(columns)
            weight[:, order] = columns
            # mace's edge vector is r_i - r_j (ours r_j - r_i): Y_l changes sign for odd l
            sign = torch.tensor([(-1.0) ** interaction.irreps_sh[p.i_sh].ir.l for p in paths], dtype=torch.float64)
            weight = (weight * sign.view(1, -1, 1)).reshape(columns.shape[0], -1)
        state[f"{dst}radial_mlp.net.{layer}.weight"] = weight
    for i, w in enumerate(
        channels_last_linear(
            parts["linear"], tensors[src + "linear.weight"], interaction.irreps_target, where + " linear"
        )
    ):
        state[f"{dst}linear.weights.{i}"] = w
    skip = species_skip(
        parts["skip_tp"],
        f64(tensors[src + "skip_tp.weight"]),
        num_species,
        interaction.irreps_target if interaction.species_linear is not None else interaction.irreps_skip,
        where + " skip_tp",
    )
    target = "species_linear" if interaction.species_linear is not None else "skip"
    for i, w in enumerate(skip):
        state[f"{dst}{target}.weights.{i}"] = w
    return state


def _product_state(block: Record, product, index: int, tensors: dict) -> dict:
    """Our ``ProductBasis`` weights from mace's ``EquivariantProductBasisBlock`` ``index``."""
    state: dict[str, torch.Tensor] = {}
    where = f"product {index}"
    parts = module_children(block)
    src = f"products.{index}."
    sc = product.symmetric_contraction
    contractions = children_list(parts["symmetric_contractions"], "contractions")
    for j, ((_, ir), contraction) in enumerate(zip(sc.irreps_out, contractions)):
        base = f"{src}symmetric_contractions.contractions.{j}."
        correlation = int(contraction.correlation)
        weights = {correlation: tensors.get(base + "weights_max")}
        for k in range(correlation - 1):
            weights[correlation - 1 - k] = tensors.get(f"{base}weights.{k}")
        for nu in range(1, correlation + 1):
            converted = contraction_weights(
                tensors[f"{base}U_matrix_{nu}"], weights[nu], nu, sc.coupling_irreps, ir, f"{where} irrep {ir}"
            )
            key = f"correlation{nu}_{ir}"
            if converted is None:
                if key in sc.weights:
                    state[f"products.{index}.symmetric_contraction.weights.{key}"] = torch.zeros_like(sc.weights[key])
                continue
            if key not in sc.weights:
                raise refuse(f"{where}: a coupling of correlation {nu} to {ir} that our basis lacks")
            state[f"products.{index}.symmetric_contraction.weights.{key}"] = converted
    for i, w in enumerate(
        channels_last_linear(parts["linear"], tensors[src + "linear.weight"], product.irreps_out, where + " linear")
    ):
        state[f"products.{index}.linear.weights.{i}"] = w
    return state


def _readout_state(block: Record, index: int, tensors: dict, num_heads: int, mlp_width: int | None) -> dict:
    """Our readout ``index`` (every head's column) from mace's linear or non-linear readout block."""
    state: dict[str, torch.Tensor] = {}
    parts = module_children(block)
    src = f"readouts.{index}."
    if block.class_name == "LinearReadoutBlock":
        (w,) = linear_blocks(parts["linear"], f64(tensors[src + "linear.weight"]), f"readout {index}").values()
        state[f"readouts.{index}.linear.weight"] = w.reshape(-1)  # [C, heads], as ours
        return state
    (w1,) = linear_blocks(
        parts["linear_1"], f64(tensors[src + "linear_1.weight"]), f"readout {index} linear_1"
    ).values()
    (w2,) = linear_blocks(
        parts["linear_2"], f64(tensors[src + "linear_2.weight"]), f"readout {index} linear_2"
    ).values()
    # mace's hidden unit h * width + k belongs to head h (the others' are masked), as ours [C, heads, width]
    state[f"readouts.{index}.linear_in.weight"] = w1.reshape(-1)
    # only head h's block of linear_2 reaches head h's output; e3nn normalises it by 1/sqrt(num_heads * width),
    # ours by 1/sqrt(width)
    own = torch.stack([w2[h * mlp_width : (h + 1) * mlp_width, h] for h in range(num_heads)])
    state[f"readouts.{index}.linear_out.weight"] = (own / math.sqrt(num_heads)).reshape(-1)
    return state


def _edge_paths(interaction):
    """Our paths of an interaction's edge tensor product, in our order."""
    return tensor_product_paths(interaction.irreps_node, interaction.irreps_sh, interaction.irreps_target)
