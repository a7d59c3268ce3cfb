"""NequIP 0.19 model configs -> the constructor arguments of our :class:`~mpnn_ip.models.nequip.NequIP`.

A training checkpoint stores the hydra config of its model (``hyper_parameters["model"]``, plain
python or omegaconf containers, which the safe unpickler hands over as records; :func:`plain_config`
decodes both); a ``nequip-package`` file stores the whole training config as ``model/config.yaml``.
:func:`nequip_options` checks every option against what our model computes and refuses the rest
with :class:`~mpnn_ip.interop.errors.UnsupportedModelError` naming the option.
"""

from __future__ import annotations

from typing import Any

from mpnn_ip.elements import atomic_number
from mpnn_ip.errors import ConfigError
from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.safe_pickle import Record
from mpnn_ip.nn.activations import ACTIVATIONS

#: the model builders converted (NequIP's ``NequIPGNNModel`` and its size presets)
NEQUIP_BUILDERS = {
    "nequip.model.NequIPGNNModel": None,
    "nequip.model.nequip_models.NequIPGNNModel": None,
    "nequip.model.PresetNequIPGNNModel": "preset",
    "nequip.model.nequip_models.PresetNequIPGNNModel": "preset",
}
#: ``PresetNequIPGNNModel``'s defaults (nequip 0.19.1, ``nequip/model/nequip_models.py``)
PRESETS = {
    "S": {"num_layers": 2, "l_max": 1, "num_features": [128, 64]},
    "M": {"num_layers": 4, "l_max": 2, "num_features": [128, 64, 32]},
    "L": {"num_layers": 6, "l_max": 3, "num_features": [128, 64, 32, 32]},
    "XL": {"num_layers": 6, "l_max": 4, "num_features": [320, 96, 64, 32, 32]},
}
PRESET_SHARED = {"parity": False, "type_embed_num_features": 32, "radial_mlp_depth": 1, "radial_mlp_width": 128}

#: ``NequIPGNNModel``'s defaults, for the options a config may leave out
DEFAULTS = {
    "num_layers": 4,
    "l_max": 1,
    "parity": True,
    "num_features": 32,
    "type_embed_num_features": None,
    "radial_mlp_depth": 1,
    "radial_mlp_width": 128,
    "readout_mlp_hidden_layers_depth": 0,
    "readout_mlp_hidden_layers_width": None,
    "readout_mlp_nonlinearity": "silu",
    "num_bessels": 8,
    "bessel_trainable": False,
    "polynomial_cutoff_p": 6,
    "avg_num_neighbors": None,
    "per_type_energy_scales": None,
    "per_type_energy_shifts": None,
    "per_type_energy_scales_trainable": False,
    "per_type_energy_shifts_trainable": False,
    "convnet_sc": True,
    "convnet_resnet": False,
    "convnet_nonlinearity_type": "gate",
    "convnet_nonlinearity_scalars": {"e": "silu", "o": "tanh"},
    "convnet_nonlinearity_gates": {"e": "silu", "o": "tanh"},
    "pair_potential": None,
}
#: options that change nothing we compute (read, recorded, not converted)
IGNORED = {"seed", "model_dtype", "do_derivatives", "type_names", "r_max", "_target_", "preset"}
#: options we convert only at their default (anything else is refused, named)
ONLY_DEFAULT = {
    "per_edge_type_cutoff": None,
    "categorical_graph_field_embed": None,
    "learnable_shift": False,
    "compile_mode": "eager",
}
#: the pair potential converted (to our ``zbl="nequip"``)
ZBL_TARGETS = {"nequip.nn.pair_potential.ZBL", "nequip.nn.ZBL"}
#: nonlinearities NequIP offers that ours computes the same way (e3nn's Gate normalises them alike)
GATE_NONLINEARITIES = {"silu", "tanh", "abs", "ssp"}
READOUT_NONLINEARITIES = {"silu", "tanh", "sigmoid", "ssp", None}


def plain_config(value: Any, depth: int = 0) -> Any:
    """Plain python of a config: omegaconf ``DictConfig`` / ``ListConfig`` / value-node records and
    dict-like records (Lightning's ``AttributeDict``) decoded; everything else as given."""
    if depth > 40:
        raise UnsupportedModelError("the model config nests deeper than 40 levels")
    if isinstance(value, Record):
        name = value.class_name
        if name in ("DictConfig",):
            content = value.get("_content")
            return None if content is None else {str(k): plain_config(v, depth + 1) for k, v in dict(content).items()}
        if name in ("ListConfig",):
            content = value.get("_content")
            return None if content is None else [plain_config(v, depth + 1) for v in content]
        if name.endswith("Node") and value.has("_val"):
            return plain_config(value.get("_val"), depth + 1)
        if value.dictitems:
            return {str(k): plain_config(v, depth + 1) for k, v in value.dictitems.items()}
        if value.listitems:
            return [plain_config(v, depth + 1) for v in value.listitems]
        return value
    if isinstance(value, dict):
        return {str(k): plain_config(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v, depth + 1) for v in value]
    return value


def _refuse(where: str, option: str, value: Any, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{where}: NequIP option {option}={value!r} is not supported by the importer ({why})")


def _per_type(value: Any, type_names: list[str], option: str, where: str) -> list[float] | None:
    """A NequIP per-type value (None, one number, or ``{type: value}``) as one float per type, or None."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)] * len(type_names)
    if isinstance(value, dict) and set(value) == set(type_names):
        return [float(value[name]) for name in type_names]
    raise _refuse(where, option, value, f"expected one number or one value per type of {type_names}")


def _zbl(pair_potential: Any, model_p: Any, where: str) -> list[str] | None:
    """The ``chemical_species`` of a NequIP ZBL pair potential config (None without one); refuses other
    pair potentials and ZBL settings our :class:`~mpnn_ip.nn.nequip.NequIPZBL` does not compute."""
    if pair_potential is None:
        return None
    if not isinstance(pair_potential, dict) or pair_potential.get("_target_") not in ZBL_TARGETS:
        target = pair_potential.get("_target_") if isinstance(pair_potential, dict) else pair_potential
        raise _refuse(where, "pair_potential", target, "only nequip.nn.pair_potential.ZBL is converted")
    extra = set(pair_potential) - {"_target_", "units", "chemical_species", "polynomial_cutoff_p"}
    if extra:
        raise _refuse(where, "pair_potential", pair_potential, f"ZBL options {sorted(extra)} are not converted")
    if pair_potential.get("units") != "metal":
        raise _refuse(
            where, "pair_potential.units", pair_potential.get("units"), "only metal units (eV, Å) are converted"
        )
    if float(pair_potential.get("polynomial_cutoff_p", 6.0)) != float(model_p):
        raise _refuse(
            where,
            "pair_potential.polynomial_cutoff_p",
            pair_potential.get("polynomial_cutoff_p"),
            f"only the model's polynomial_cutoff_p={model_p}",
        )
    return [str(s) for s in pair_potential.get("chemical_species") or []]


def species_of_types(type_names: list[str], type_map: dict | None, where: str) -> list[int]:
    """Atomic number of each NequIP atom type: from the data transform's ``chemical_species_to_atom_type_map``
    (one element per type), else the type names themselves must be chemical symbols."""
    if type_map:
        by_type: dict[str, list[str]] = {}
        for element, type_name in type_map.items():
            by_type.setdefault(str(type_name), []).append(str(element))
        numbers = []
        for name in type_names:
            elements = by_type.get(name, [])
            if len(elements) != 1:
                raise UnsupportedModelError(
                    f"{where}: atom type {name!r} stands for the elements {elements} in chemical_species_to_atom_type_map; "
                    "the importer needs exactly one element per type"
                )
            numbers.append(
                atomic_number(
                    elements[0], error=UnsupportedModelError, where=f"{where}: chemical_species_to_atom_type_map"
                )
            )
        return numbers
    try:
        return [atomic_number(name, error=ConfigError, where="type_names") for name in type_names]
    except ConfigError as exc:
        raise UnsupportedModelError(
            f"{where}: the atom types {type_names} are not chemical symbols and the file has no "
            f"chemical_species_to_atom_type_map saying which element each stands for ({exc})"
        ) from exc


def type_map_of(data_config: Any) -> dict | None:
    """``chemical_species_to_atom_type_map`` of the ``ChemicalSpeciesToAtomTypeMapper`` in a data config, if any."""
    if not isinstance(data_config, dict):
        return None
    for transform in data_config.get("transforms") or []:
        if isinstance(transform, dict) and str(transform.get("_target_", "")).endswith(
            "ChemicalSpeciesToAtomTypeMapper"
        ):
            found = transform.get("chemical_species_to_atom_type_map")
            return dict(found) if isinstance(found, dict) else None
    return None


def nequip_options(model_config: dict, where: str) -> dict[str, Any]:
    """Check a NequIP model config and resolve its options (defaults and presets filled in).

    Returns the full option dict of ``NequIPGNNModel`` plus ``type_names``, ``r_max`` and ``zbl`` (the ZBL
    pair potential's elements, or None); ``avg_num_neighbors`` is one number or a list in type order.
    Raises:
        UnsupportedModelError: another model builder, or an option we do not convert (named).
    """
    if not isinstance(model_config, dict):
        raise UnsupportedModelError(f"{where}: the model config is a {type(model_config).__name__}, not a mapping")
    target = str(model_config.get("_target_"))
    if target not in NEQUIP_BUILDERS:
        raise UnsupportedModelError(
            f"{where}: model builder {target!r} is not supported; the importer converts {sorted(NEQUIP_BUILDERS)} "
            "(models wrapped by ModelFromCheckpoint/ModelFromPackage or modified by nequip.model.modify are refused)"
        )
    options = dict(DEFAULTS)
    if NEQUIP_BUILDERS[target] == "preset":
        preset = str(model_config.get("preset", "")).upper()
        if preset not in PRESETS:
            raise _refuse(where, "preset", model_config.get("preset"), f"choose one of {sorted(PRESETS)}")
        options.update(PRESET_SHARED)
        options.update(PRESETS[preset])
    for key, value in model_config.items():
        if key in ONLY_DEFAULT:
            if value != ONLY_DEFAULT[key] and not (key == "compile_mode" and value is None):
                raise _refuse(where, key, value, f"only {ONLY_DEFAULT[key]!r} is converted")
        elif key in DEFAULTS:
            options[key] = value
        elif key not in IGNORED:
            raise _refuse(where, key, value, "an option the importer does not know")
    for key in ("type_names", "r_max"):
        if key not in model_config:
            raise UnsupportedModelError(f"{where}: the model config has no {key}")
    options["type_names"] = [str(t) for t in model_config["type_names"]]
    options["r_max"] = float(model_config["r_max"])

    if options["convnet_nonlinearity_type"] != "gate":
        raise _refuse(
            where, "convnet_nonlinearity_type", options["convnet_nonlinearity_type"], "only the gate is converted"
        )
    for key in ("convnet_nonlinearity_scalars", "convnet_nonlinearity_gates"):
        value = options[key]
        if not isinstance(value, dict) or set(value) != {"e", "o"} or not set(value.values()) <= GATE_NONLINEARITIES:
            raise _refuse(
                where, key, value, f"expected {{e: name, o: name}} with names among {sorted(GATE_NONLINEARITIES)}"
            )
    nonlinearity = options["readout_mlp_nonlinearity"]
    if nonlinearity in ("None", "null"):
        options["readout_mlp_nonlinearity"] = nonlinearity = None
    if nonlinearity not in READOUT_NONLINEARITIES or (nonlinearity is not None and nonlinearity not in ACTIVATIONS):
        raise _refuse(where, "readout_mlp_nonlinearity", nonlinearity, "not among silu, tanh, sigmoid, ssp, None")
    avg = options["avg_num_neighbors"]
    if isinstance(avg, dict):
        if set(avg) != set(options["type_names"]) or not all(
            isinstance(v, (int, float)) and v > 0 for v in avg.values()
        ):
            raise _refuse(
                where, "avg_num_neighbors", avg, f"expected a positive number per type of {options['type_names']}"
            )
        options["avg_num_neighbors"] = [float(avg[name]) for name in options["type_names"]]
    elif not isinstance(avg, (int, float)) or isinstance(avg, bool) or avg <= 0:
        raise _refuse(where, "avg_num_neighbors", avg, "NequIP needs a positive number or one per type")
    for key in (
        "num_layers",
        "l_max",
        "num_bessels",
        "radial_mlp_depth",
        "radial_mlp_width",
        "readout_mlp_hidden_layers_depth",
    ):
        if not isinstance(options[key], int) or isinstance(options[key], bool):
            raise _refuse(where, key, options[key], "expected an integer")
    options["zbl"] = _zbl(options["pair_potential"], options["polynomial_cutoff_p"], where)
    options["per_type_energy_scales"] = _per_type(
        options["per_type_energy_scales"], options["type_names"], "per_type_energy_scales", where
    )
    options["per_type_energy_shifts"] = _per_type(
        options["per_type_energy_shifts"], options["type_names"], "per_type_energy_shifts", where
    )
    return options


def options_with_species(model_config: dict, data_config: Any, where: str) -> dict:
    """:func:`nequip_options` of the model config with ``species``: the atomic numbers of its types (by the data
    config's type map or the type names)."""
    options = nequip_options(model_config, where)
    options["species"] = species_of_types(options["type_names"], type_map_of(data_config), where)
    return options
