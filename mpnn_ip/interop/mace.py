"""Convert a mace-torch 0.3.x ``.model`` (a pickled ``ScaleShiftMACE`` / ``MACE``) into our :class:`~mpnn_ip.models.MACE`.

The record tree of the file (never executed, see :mod:`mpnn_ip.interop.safe_pickle`) gives the
hyper-parameters; our MACE is built with the constructor arguments that compute the same function
(``first_interaction_skip``, ``shift_every_atom``, ``radial_type``, ``distance_transform``,
``pair_repulsion``), in float64, and every weight is mapped (:mod:`mpnn_ip.interop.mace_weights`).
Two conventions differ and are converted exactly:
- mace's edge vector points from the neighbour to the centre (ours the other way), so the
  spherical harmonics of odd l change sign: the radial-MLP outputs of those paths are negated;
- mace's symmetric contraction has a generic coupling basis ``U``; its symmetric part is projected
  onto ours.
Anything else is refused with :class:`~mpnn_ip.interop.errors.UnsupportedModelError` naming it:
every module of the file must be of a class listed in :data:`HANDLED_MODULES`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from e3nn import o3

from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.imported import ImportedModel
from mpnn_ip.interop.mace_state import children_list as _children_list
from mpnn_ip.interop.mace_state import converted_state
from mpnn_ip.interop.mace_state import refuse as _refuse
from mpnn_ip.interop.records import irreps_of, plain
from mpnn_ip.interop.safe_pickle import Record, module_children, module_tensors

RESIDUAL = "mace.modules.blocks.RealAgnosticResidualInteractionBlock"
PLAIN = "mace.modules.blocks.RealAgnosticInteractionBlock"

#: Every module class a convertible file may contain (others are refused by name).
HANDLED_MODULES = frozenset(
    {
        "mace.modules.models.ScaleShiftMACE",
        "mace.modules.models.MACE",
        "mace.modules.blocks.LinearNodeEmbeddingBlock",
        "mace.modules.blocks.RadialEmbeddingBlock",
        "mace.modules.blocks.AtomicEnergiesBlock",
        RESIDUAL,
        PLAIN,
        "mace.modules.blocks.EquivariantProductBasisBlock",
        "mace.modules.blocks.LinearReadoutBlock",
        "mace.modules.blocks.NonLinearReadoutBlock",
        "mace.modules.blocks.ScaleShiftBlock",
        "mace.modules.radial.BesselBasis",
        "mace.modules.radial.GaussianBasis",
        "mace.modules.radial.PolynomialCutoff",
        "mace.modules.radial.AgnesiTransform",
        "mace.modules.radial.SoftTransform",
        "mace.modules.radial.ZBLBasis",
        "mace.modules.symmetric_contraction.SymmetricContraction",
        "mace.modules.symmetric_contraction.Contraction",
        "mace.modules.irreps_tools.reshape_irreps",
        "e3nn.o3._linear.Linear",
        "e3nn.o3._tensor_product._tensor_product.TensorProduct",
        "e3nn.o3._tensor_product._sub.FullyConnectedTensorProduct",
        "e3nn.o3._spherical_harmonics.SphericalHarmonics",
        "e3nn.nn._fc.FullyConnectedNet",
        "e3nn.nn._fc._Layer",
        "e3nn.nn._activation.Activation",
        "e3nn.math._normalize_activation.normalize2mom",
        "torch.nn.modules.container.ModuleList",
        "torch.nn.modules.container.ParameterList",
        # opt_einsum's traced contraction code of mace's symmetric contraction (never run; U and the weights define it)
        "torch.fx.graph_module.reduce_graph_module",
    }
)


def _walk(record: Record, path: str = "model"):
    yield path, record
    modules = record.state.get("_modules") if isinstance(record.state, dict) else None
    for name, child in (modules or {}).items():
        if child is None:
            continue
        if not isinstance(child, Record):
            raise _refuse(f"submodule {path}.{name} of type {type(child).__name__}")
        yield from _walk(child, f"{path}.{name}")


def _check_modules(model: Record) -> None:
    for path, record in _walk(model):
        if record.qualname not in HANDLED_MODULES:
            raise _refuse(f"module {path} of class {record.qualname}")


def _global_name(obj: Any) -> str:
    return str(getattr(obj, "qualname", None) or f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__name__', obj)}")


def _check_options(model: Record, interactions: list[Record]) -> None:
    for flag in ("use_so3", "use_agnostic_product", "use_last_readout_only", "use_edge_irreps_first", "lammps_mliap"):
        if model.get(flag):
            raise _refuse(f"{flag}=True")
    if model.get("apply_cutoff", True) is False:
        raise _refuse("apply_cutoff=False")
    if model.get("edge_irreps") is not None:
        raise _refuse(f"edge_irreps={irreps_of(model.edge_irreps)}")
    if model.has("embedding_specs") or "joint_embedding" in module_children(model):
        raise _refuse("embedding_specs (charge/spin/extra embeddings)")
    for index, block in enumerate(interactions):
        for config in ("cueq_config", "oeq_config"):
            value = block.get(config)
            if value is not None and (not isinstance(value, Record) or value.get("enabled", True)):
                raise _refuse(
                    f"{config} (a cuequivariance/openequivariance-converted model) in interaction {index}",
                    "convert it back to e3nn with mace's own tools first",
                )
        if index > 0 and block.qualname != RESIDUAL:
            raise _refuse(
                f"interaction {index} of class {block.qualname}",
                "only the first interaction may be RealAgnosticInteractionBlock",
            )
        if block.get("edge_irreps") is not None and irreps_of(block.edge_irreps) != irreps_of(block.node_feats_irreps):
            raise _refuse(f"edge_irreps={irreps_of(block.edge_irreps)} in interaction {index}")


def _radial(model: Record) -> tuple[dict, dict]:
    """Radial kwargs of our MACE and the buffers to copy into its radial embedding."""
    embedding = module_children(model)["radial_embedding"]
    parts = module_children(embedding)
    tensors = module_tensors(embedding)
    basis = parts["bessel_fn"]
    if basis.class_name == "BesselBasis":
        radial_type, values = "bessel", tensors["bessel_fn.bessel_weights"]
    elif basis.class_name == "GaussianBasis":
        radial_type, values = "gaussian", tensors["bessel_fn.gaussian_weights"]
    else:
        raise _refuse(f"radial_type of class {basis.qualname}")
    transform = parts.get("distance_transform")
    distance_transform = (
        None if transform is None else {"AgnesiTransform": "agnesi", "SoftTransform": "soft"}.get(transform.class_name)
    )
    if transform is not None and distance_transform is None:
        raise _refuse(f"distance_transform of class {transform.qualname}")
    trainable = "bessel_weights" in (basis.get("_parameters") or {})
    kwargs = dict(
        num_bessel=int(embedding.out_dim),
        trainable_bessel=bool(trainable and radial_type == "bessel" and distance_transform is None),
        cutoff_p=int(tensors["cutoff_fn.p"]),
        radial_type=radial_type,
        distance_transform=distance_transform,
    )
    buffers = {"frequencies" if radial_type == "bessel" else "centres": values}
    if radial_type == "gaussian":
        buffers["_width"] = math.sqrt(-0.5 / float(basis.coeff))
    if distance_transform == "agnesi":
        buffers["agnesi"] = torch.stack([tensors[f"distance_transform.{k}"].reshape(()) for k in ("q", "p", "a")])
    if distance_transform == "soft":
        buffers["soft_alpha"] = tensors["distance_transform.alpha"].reshape(())
    return kwargs, buffers  # type: ignore[return-value]


def _heads(model: Record, head: str | None) -> list[str]:
    """The source's head names; ``UnsupportedModelError`` listing them when ``head`` is not one of them."""
    heads = [str(h) for h in (model.get("heads") or ["Default"])]
    if head is not None and head not in heads:
        raise UnsupportedModelError(f"mace-torch model has no head {head!r}; its heads are {heads}")
    return heads


def _per_head(values: torch.Tensor, heads: list[str]) -> float | dict[str, float]:
    """mace's scale or shift (one value, or one per head) as our MACE's argument: one number, or ``{head: value}``."""
    flat = values.reshape(-1).to(torch.float64).tolist()
    if len(heads) == 1 or len(flat) == 1 or len(set(flat)) == 1:
        return float(flat[0])
    return dict(zip(heads, map(float, flat)))


def _architecture(children: dict, interactions: list, products: list, readouts: list, num_heads: int) -> dict:
    """Hidden irreps, max_ell, correlation per layer, radial MLP, avg_num_neighbors and the last
    readout's width per head (None for a linear one) from the block records; refuses what our MACE lacks."""
    num_interactions = len(interactions)
    sh = children["spherical_harmonics"]
    if not sh.get("normalize", True) or sh.get("normalization", "component") != "component":
        raise _refuse("spherical harmonics without normalize=True, normalization='component'")
    irreps_sh = irreps_of(sh.irreps_out)
    max_ell = irreps_sh.lmax
    if irreps_sh != o3.Irreps.spherical_harmonics(max_ell):
        raise _refuse(f"edge spherical harmonics {irreps_sh}")

    product_irreps = [irreps_of(module_children(p)["symmetric_contractions"].irreps_out) for p in products]
    channels = product_irreps[0][0].mul
    hidden = product_irreps[0] if num_interactions > 1 else o3.Irreps(f"{channels}x0e")
    for index, irreps in enumerate(product_irreps):
        expected = o3.Irreps(f"{channels}x0e") if index == num_interactions - 1 else hidden
        if irreps != expected:
            raise _refuse(f"product {index} with output irreps {irreps} (expected {expected}; keep_last_layer_irreps?)")
    correlations = []
    for p in products:
        contractions = _children_list(module_children(p)["symmetric_contractions"], "contractions")
        orders = {int(c.correlation) for c in contractions}
        if len(orders) != 1:
            raise _refuse(f"different correlation orders per output irrep {sorted(orders)}")
        correlations.append(orders.pop())
    avg = {float(b.avg_num_neighbors) for b in interactions}
    radial_mlps = {tuple(int(h) for h in b.radial_MLP) for b in interactions}
    if len(avg) != 1 or len(radial_mlps) != 1:
        raise _refuse("avg_num_neighbors or radial_MLP differing between interactions")
    last = readouts[-1]
    if any(r.class_name != "LinearReadoutBlock" for r in readouts[:-1]) or last.class_name not in (
        "LinearReadoutBlock",
        "NonLinearReadoutBlock",
    ):
        raise _refuse(f"readouts {[r.class_name for r in readouts]}")
    mlp_width, mlp_hidden = None, None
    if last.class_name == "NonLinearReadoutBlock":
        acts = _children_list(module_children(last)["non_linearity"], "acts")
        gate = _global_name(acts[0].f) if acts else "none"
        if len(acts) != 1 or not gate.endswith("silu"):
            raise _refuse(f"gate {gate} of the last readout", "only silu")
        mlp_hidden = irreps_of(module_children(last)["linear_1"].irreps_out)
        if len(mlp_hidden) != 1 or mlp_hidden[0].ir != o3.Irrep("0e") or mlp_hidden[0].mul % num_heads:
            raise _refuse(f"MLP_irreps {mlp_hidden}")
        mlp_width = mlp_hidden[0].mul // num_heads
    return dict(
        hidden=hidden,
        max_ell=max_ell,
        correlations=correlations,
        radial_mlp=list(radial_mlps.pop()),
        avg_num_neighbors=avg.pop(),
        mlp_width=mlp_width,
        mlp_hidden=mlp_hidden,
    )


def convert_mace(model: Record, head: str | None = None) -> ImportedModel:
    """Our float64 MACE computing the same energies as the mace-torch model ``model`` (head ``head``).

    Args:
        model: the record of the whole pickled ``ScaleShiftMACE`` / ``MACE`` (:func:`~mpnn_ip.interop.safe_pickle.load_torch_file`).
        head: the head to import from a multi-head model: a one-head MACE of that head; None: all heads,
            a MACE with the same heads (:mod:`mpnn_ip.models.heads`; the first is its default head).
    Raises:
        UnsupportedModelError: an option, block or module class we do not convert (named in the message).
    """
    from mpnn_ip.models.mace import MACE

    if model.qualname not in ("mace.modules.models.ScaleShiftMACE", "mace.modules.models.MACE"):
        raise _refuse(f"model class {model.qualname}")
    _check_modules(model)
    children = module_children(model)
    interactions, products, readouts = (_children_list(model, n) for n in ("interactions", "products", "readouts"))
    _check_options(model, interactions)
    heads = _heads(model, head)
    num_heads = len(heads)
    tensors = module_tensors(model)

    atomic_numbers = [int(z) for z in tensors["atomic_numbers"].tolist()]
    if atomic_numbers != sorted(set(atomic_numbers)):
        raise _refuse(f"atomic_numbers {atomic_numbers} not in increasing order")
    num_species = len(atomic_numbers)
    num_interactions = len(interactions)
    if not (num_interactions == len(products) == len(readouts) == int(tensors["num_interactions"])):
        raise _refuse(f"{num_interactions} interactions with {len(products)} products and {len(readouts)} readouts")
    arch = _architecture(children, interactions, products, readouts, num_heads)
    hidden, correlations, mlp_width, mlp_hidden = (
        arch["hidden"],
        arch["correlations"],
        arch["mlp_width"],
        arch["mlp_hidden"],
    )

    first = interactions[0].qualname
    radial_kwargs, radial_buffers = _radial(model)
    e0_table = tensors["atomic_energies_fn.atomic_energies"].to(torch.float64)
    e0_rows = [{z: float(e) for z, e in zip(atomic_numbers, row)} for row in e0_table.reshape(-1, num_species)]
    e0s = e0_rows[0] if len(e0_rows) == 1 or all(row == e0_rows[0] for row in e0_rows) else dict(zip(heads, e0_rows))
    scale = shift = None
    if "scale_shift" in children:
        scale = _per_head(tensors["scale_shift.scale"], heads)
        shift = _per_head(tensors["scale_shift.shift"], heads)
    kwargs = dict(
        species=atomic_numbers,
        r_max=float(tensors["r_max"]),
        num_interactions=num_interactions,
        hidden_irreps=str(hidden),
        max_ell=arch["max_ell"],
        correlation=correlations,
        radial_mlp=arch["radial_mlp"],
        avg_num_neighbors=arch["avg_num_neighbors"],
        e0s=e0s,
        energy_scale=1.0 if scale is None else scale,
        energy_shift=0.0 if shift is None else shift,
        mlp_readout_irreps=None if mlp_width is None else f"{mlp_width}x0e",
        first_interaction_skip="residual" if first == RESIDUAL else "species_linear",
        shift_every_atom=True,
        pair_repulsion="pair_repulsion_fn" in children,
        heads=None if heads == ["Default"] else heads,
        **radial_kwargs,
    )
    try:
        ours = MACE(**kwargs).to(torch.float64)
    except ValueError as error:
        raise _refuse("this combination of hidden irreps, max_ell and correlation", str(error)) from error
    state = converted_state(ours, tensors, interactions, products, readouts, radial_buffers, mlp_width)
    missing, unexpected = ours.load_state_dict(state, strict=False)
    # buffers not listed here keep our constructor's values (element tables, Clebsch-Gordan constants)
    parameters = dict(ours.named_parameters())
    not_set = [k for k in missing if k in parameters]
    if not_set or unexpected:
        raise UnsupportedModelError(f"mace-torch import: weights not converted {not_set}, unexpected {unexpected}")
    if head is not None:
        ours = ours.with_heads([head])
    ours.eval()
    hyperparameters = {
        "class": model.class_name,
        "atomic_numbers": atomic_numbers,
        "r_max": kwargs["r_max"],
        "num_interactions": num_interactions,
        "hidden_irreps": str(hidden),
        "max_ell": arch["max_ell"],
        "correlation": correlations,
        "radial_MLP": kwargs["radial_mlp"],
        "avg_num_neighbors": kwargs["avg_num_neighbors"],
        "MLP_irreps": None if mlp_hidden is None else str(mlp_hidden),
        "interaction_cls_first": first,
        "interaction_cls": interactions[-1].qualname,
        "num_bessel": radial_kwargs["num_bessel"],
        "num_polynomial_cutoff": radial_kwargs["cutoff_p"],
        "radial_type": radial_kwargs["radial_type"],
        "distance_transform": radial_kwargs["distance_transform"] or "None",
        "pair_repulsion": kwargs["pair_repulsion"],
        "atomic_energies": plain(e0_table),
        "atomic_inter_scale": None if scale is None else plain(tensors["scale_shift.scale"]),
        "atomic_inter_shift": None if shift is None else plain(tensors["scale_shift.shift"]),
        "heads": heads,
        "head": head,
        "use_reduced_cg": plain(model.get("use_reduced_cg")),
    }
    version = model.get("__version__") or model.get("mace_version")
    return ImportedModel(ours, "mace-torch", None if version is None else str(version), hyperparameters, heads)
