"""Convert NequIP 0.19 models: the model conversion that training checkpoints (``.ckpt``,
:mod:`mpnn_ip.interop.nequip_checkpoint`) and ``nequip-package`` files (``.nequip.zip``,
:mod:`mpnn_ip.interop.nequip_package`) share.

Both hold a ``NequIPGNNModel`` (config + weights); neither is run. The weights are mapped onto our
:class:`~mpnn_ip.models.nequip.NequIP` so that it computes the same function (float64):

- atom types -> our species (sorted by Z); the type embedding ``E [T, F]`` becomes our species
  embedding (which divides by sqrt(S));
- NequIP's Bessel basis ``2/r_max sin(w pi r / r_max) / r`` (``sinc`` times ``2 pi / r_max^2``) is ours
  ``sqrt(2/r_max) sin(f r) / r`` with ``f = w pi / r_max``; the ratio sqrt(2/r_max) goes into the
  first layer of each radial MLP; the radial MLPs' weight scales (NequIP: ``gain / sqrt(fan_in)``
  and plain SiLU, ours: e3nn's ``1/sqrt(fan_in)`` and normalised SiLU) are folded into the weights;
- ``linear_1`` / ``linear_2`` and the self-connection (a tensor product with the type embedding,
  i.e. one linear map per species) are mapped as effective per-irrep matrices
  (:mod:`mpnn_ip.interop.nequip_weights`); the tensor-product paths and their weight layout are
  the same on both sides;
- the readout is NequIP's scalar MLP (:class:`~mpnn_ip.nn.nequip.ScalarMLP`);
- per-type energy scales become ours; per-type shifts become our E0s (added to every atom, as
  NequIP adds them), our gated shift is 0.

Weights come from the checkpoint's ``state_dict`` (``model.sole_model.model.func.*``) or from the
package's ``model/eager_model.pkl`` module records (:mod:`mpnn_ip.interop.nequip_package`); every tensor of the model must be one we map
(or a constant we rebuild), else the file is refused naming it.
"""

from __future__ import annotations

import math
import re

import torch

from mpnn_ip.elements import atomic_number
from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.nequip_weights import (
    linear_dense,
    load_linear,
    load_radial_mlp,
    self_connection_dense,
    species_linear_dense,
)
from mpnn_ip.models.nequip import NequIP
from mpnn_ip.nn.nequip.zbl import COULOMB_EV_ANGSTROM

__all__ = ["CONSTANT_TENSOR", "convert_model", "func_tensors"]

SOLE_MODEL = "sole_model"
#: tensors that carry no learned state: masks, e3nn's cached Wigner symbols, empty placeholders, 1/r_max
CONSTANT_TENSOR = re.compile(r"(output_mask|_w3j_\w+|\._empty|edge_norm\._rmax_recip)$")
#: placeholders that must stay empty (a bias or internal weight with entries would be state we do not map)
EMPTY_TENSOR = re.compile(r"(\.bias|tp_scatter\.tp\.weight|equivariant_nonlin\.mul\.weight)$")


def func_tensors(tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The tensors below the model's ``SequentialGraphNetwork`` (``...model.func.``), keys relative to it."""
    anchors = [
        k[: -len("type_embed.embed_module.weight")]
        for k in tensors
        if k.endswith("func.type_embed.embed_module.weight")
    ]
    if len(anchors) != 1:
        raise UnsupportedModelError(f"{where}: expected one NequIP model (with func.type_embed), found {len(anchors)}")
    prefix = anchors[0]
    if not prefix.replace("model.", "", 1).startswith(f"{SOLE_MODEL}."):
        raise UnsupportedModelError(
            f"{where}: the weights are under {prefix!r}; only single-model files ({SOLE_MODEL}) are converted"
        )
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _numbered(tensors: dict[str, torch.Tensor], prefix: str, suffix: str = ".weight") -> list[torch.Tensor]:
    """``prefix{n}{suffix}`` tensors in the order of n."""
    found = {}
    for key, value in tensors.items():
        if key.startswith(prefix) and key.endswith(suffix) and key[len(prefix) : len(key) - len(suffix)].isdigit():
            found[int(key[len(prefix) : len(key) - len(suffix)])] = value
    return [found[n] for n in sorted(found)]


def _check_mlp_scales(
    tensors: dict[str, torch.Tensor], prefix: str, weights: list[torch.Tensor], nonlinear: bool, where: str
) -> None:
    """A package keeps the (non-persistent) weight scales of NequIP's scalar MLPs; they must be the ones
    :class:`~mpnn_ip.nn.nequip.ScalarMLP` and the radial-MLP map assume: ``gain / sqrt(fan_in)``."""
    expected = [
        (math.sqrt(2.0) if (nonlinear and k > 0) else 1.0) / math.sqrt(w.shape[0]) for k, w in enumerate(weights)
    ]
    found = _numbered(tensors, prefix, ".alpha")
    if prefix + "alpha" in tensors:  # NequIP's deep linear MLP keeps one product of the scales
        found, expected = [tensors[prefix + "alpha"]], [math.prod(expected)]
    for value, want in zip(found, expected):
        if not math.isclose(float(value), want, rel_tol=1e-6):  # float32 models keep float32 scales
            raise UnsupportedModelError(
                f"{where}: {prefix}* scales its weights by {float(value)}, not NequIP 0.19's {want}"
            )


def build_model(options: dict, species: list[int], shifts: list[float] | None) -> NequIP:
    """Our NequIP with the structure of NequIP's ``NequIPGNNModel(options)`` (weights not yet loaded), float64."""
    readout_depth = options["readout_mlp_hidden_layers_depth"]
    avg = options["avg_num_neighbors"]
    avg = float(avg) if isinstance(avg, (int, float)) else [float(a) for a in avg]
    scalar_features = (
        options["num_features"] if isinstance(options["num_features"], int) else options["num_features"][0]
    )
    readout_width = options["readout_mlp_hidden_layers_width"] or scalar_features
    model = NequIP(
        species=species,
        r_max=options["r_max"],
        num_layers=options["num_layers"],
        l_max=options["l_max"],
        parity=bool(options["parity"]),
        num_features=options["num_features"]
        if isinstance(options["num_features"], int)
        else list(options["num_features"]),
        type_embed_num_features=options["type_embed_num_features"],
        num_bessel=options["num_bessels"],
        trainable_bessel=bool(options["bessel_trainable"]),
        cutoff_p=options["polynomial_cutoff_p"],
        radial_mlp=[options["radial_mlp_width"]] * options["radial_mlp_depth"],
        avg_num_neighbors=avg if isinstance(avg, float) else [avg[species.index(z)] for z in sorted(species)],
        e0s={z: s for z, s in zip(species, shifts)} if shifts is not None else None,
        energy_scale=1.0,
        energy_shift=0.0,
        resnet=bool(options["convnet_resnet"]),
        nonlinearity_scalars=dict(options["convnet_nonlinearity_scalars"]),
        nonlinearity_gates=dict(options["convnet_nonlinearity_gates"]),
        self_connection=bool(options["convnet_sc"]),
        readout_mlp=[readout_width] * readout_depth,
        readout_nonlinearity=options["readout_mlp_nonlinearity"],
        zbl="nequip" if options["zbl"] is not None else False,
    )
    return model.to(torch.float64)


def _per_type_tensor(tensor: torch.Tensor | None, num_types: int, name: str, where: str) -> list[float] | None:
    if tensor is None or tensor.numel() == 0:
        return None
    values = tensor.detach().reshape(-1).to(torch.float64)
    if values.numel() == 1:
        return [float(values[0])] * num_types
    if values.numel() != num_types:
        raise UnsupportedModelError(f"{where}: {name} has {values.numel()} values for {num_types} atom types")
    return [float(v) for v in values]


def convert_model(options: dict, tensors: dict[str, torch.Tensor], where: str) -> NequIP:
    """Our NequIP computing the same function as NequIP's model with ``options`` and weights ``tensors``
    (keys relative to the model's ``func.``).

    Raises:
        UnsupportedModelError: weights that do not fit the config (named), or a config our model rejects.
    """
    try:
        return _convert_model(options, tensors, where)
    except UnsupportedModelError:
        raise
    except ValueError as exc:
        raise UnsupportedModelError(f"{where}: the NequIP model does not map onto ours: {exc}") from exc


def _convert_model(options: dict, tensors: dict[str, torch.Tensor], where: str) -> NequIP:
    type_names = options["type_names"]
    used = set()

    def take(key: str) -> torch.Tensor:
        if key not in tensors:
            raise UnsupportedModelError(f"{where}: the weights have no {key}; not a NequIPGNNModel of nequip 0.19")
        used.add(key)
        return tensors[key].detach().to(torch.float64)

    species_of_type = options["species"]
    if len(set(species_of_type)) != len(species_of_type):
        raise UnsupportedModelError(
            f"{where}: two atom types stand for the same element ({type_names} -> {species_of_type})"
        )
    scales = _per_type_tensor(
        tensors.get("per_type_energy_scale_shift.scales"), len(type_names), "per-type energy scales", where
    )
    shifts = _per_type_tensor(
        tensors.get("per_type_energy_scale_shift.shifts"), len(type_names), "per-type energy shifts", where
    )
    used.update({"per_type_energy_scale_shift.scales", "per_type_energy_scale_shift.shifts"})
    model = build_model(options, species_of_type, shifts)
    if options["zbl"] is not None:
        zbl_species = [
            atomic_number(s, error=UnsupportedModelError, where=f"{where}: pair_potential.chemical_species")
            for s in options["zbl"]
        ]
        zbl_numbers = tensors.get("pair_potential.atomic_numbers")
        factor = tensors.get("pair_potential._qqr2exesquare")
        used.update({"pair_potential.atomic_numbers", "pair_potential._qqr2exesquare"})
        if zbl_species != species_of_type or (
            zbl_numbers is not None and zbl_numbers.reshape(-1).tolist() != [float(z) for z in species_of_type]
        ):
            raise UnsupportedModelError(
                f"{where}: the ZBL pair potential's chemical_species {options['zbl']} are not the elements of the atom types {type_names}"
            )
        if factor is not None and not math.isclose(float(factor), 0.5 * COULOMB_EV_ANGSTROM, rel_tol=1e-12):
            raise UnsupportedModelError(
                f"{where}: the ZBL pair potential's prefactor {float(factor)} is not 0.5 * {COULOMB_EV_ANGSTROM} eV Å (metal units)"
            )
    type_of = [species_of_type.index(z) for z in model.species]  # our species index -> NequIP type index

    embedding = take("type_embed.embed_module.weight")[type_of]
    rmax_recip = tensors.get("edge_norm._rmax_recip")
    if rmax_recip is not None and (
        rmax_recip.numel() != 1 or not math.isclose(float(rmax_recip), 1.0 / options["r_max"], rel_tol=1e-12)
    ):
        raise UnsupportedModelError(
            f"{where}: edge_norm holds per-edge-type cutoffs or a cutoff other than r_max={options['r_max']}"
        )
    with torch.no_grad():
        model.species_embedding.weight.copy_(embedding / model.species_embedding.normalization)
        bessel = take("bessel_encode.bessel_weights").reshape(-1)
        model.radial_embedding.basis.frequencies.copy_(bessel * math.pi / options["r_max"])
        model.scale_shift.scale.copy_(
            torch.tensor([scales[t] if scales else 1.0 for t in type_of], dtype=torch.float64)
        )
        model.scale_shift.shift.zero_()
    radial_ratio = math.sqrt(2.0 / options["r_max"])  # NequIP's radial embedding / ours

    for index, layer in enumerate(model.layers):
        name = f"layer{index}_convnet.conv."
        conv = layer.convolution
        load_linear(
            conv.linear_in,
            linear_dense(conv.irreps_in, conv.irreps_in, take(name + "linear_1.weight")),
            name + "linear_1",
        )
        load_linear(
            conv.linear_out,
            linear_dense(conv.irreps_mid.simplify(), layer.gate.irreps_in.simplify(), take(name + "linear_2.weight")),
            name + "linear_2",
        )
        radial = _numbered(tensors, name + "edge_mlp.mlp.")
        used.update(k for k in tensors if k.startswith(name + "edge_mlp.mlp."))
        _check_mlp_scales(tensors, name + "edge_mlp.mlp.", radial, True, where)
        load_radial_mlp(conv.radial_mlp.net, [w.detach().to(torch.float64) for w in radial], radial_ratio)
        norm = tensors.get(name + "avg_num_neighbors_norm.norm_const")
        used.add(name + "avg_num_neighbors_norm.norm_const")
        expected = torch.tensor(options["avg_num_neighbors"], dtype=torch.float64).reshape(-1).rsqrt()
        if norm is not None and (
            norm.numel() != expected.numel()
            or not torch.allclose(norm.double().reshape(-1), expected, rtol=1e-6, atol=0.0)
        ):
            raise UnsupportedModelError(
                f"{where}: layer {index} normalises messages by {norm.reshape(-1).tolist()}, not 1/sqrt(avg_num_neighbors={options['avg_num_neighbors']})"
            )
        has_sc = name + "sc.weight" in tensors
        if has_sc != (layer.self_connection is not None):
            raise UnsupportedModelError(
                f"{where}: layer {index} {'has' if has_sc else 'lacks'} a self-connection where NequIPGNNModel's config says otherwise"
            )
        if has_sc:
            sc = layer.self_connection
            per_species = self_connection_dense(
                sc.irreps_in, embedding.shape[1], layer.gate.irreps_in.simplify(), take(name + "sc.weight"), embedding
            )
            load_linear(
                sc.linear, species_linear_dense(per_species, sc.irreps_out, sc.species_normalization), name + "sc"
            )

    readout = _numbered(tensors, "per_atom_energy_readout.mlp_module.mlp.") or _numbered(
        tensors, "per_atom_energy_readout.mlp_module.mlp.weights.", ""
    )
    used.update(k for k in tensors if k.startswith("per_atom_energy_readout.mlp_module.mlp."))
    _check_mlp_scales(
        tensors,
        "per_atom_energy_readout.mlp_module.mlp.",
        readout,
        options["readout_mlp_nonlinearity"] is not None,
        where,
    )
    if len(readout) != len(model.readout.weights):
        raise UnsupportedModelError(
            f"{where}: the readout has {len(readout)} layers, the config says {len(model.readout.weights)}"
        )
    with torch.no_grad():
        for ours, theirs in zip(model.readout.weights, readout):
            if ours.shape != theirs.shape:
                raise UnsupportedModelError(
                    f"{where}: readout weight {tuple(theirs.shape)} where {tuple(ours.shape)} was expected"
                )
            ours.copy_(theirs.to(torch.float64))

    unknown = sorted(
        k
        for k in tensors
        if k not in used and not CONSTANT_TENSOR.search(k) and not (EMPTY_TENSOR.search(k) and tensors[k].numel() == 0)
    )
    if unknown:
        raise UnsupportedModelError(
            f"{where}: the model has tensors the importer does not map (unsupported modules?): {unknown[:8]}"
        )
    return model.eval()
