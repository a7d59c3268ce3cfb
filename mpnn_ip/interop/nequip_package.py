"""Import ``nequip-package build`` files (``.nequip.zip``, torch.package zips): config and metadata as YAML data,
weights from the module records of ``model/eager_model.pkl``; the packaged code is never imported. The model is
converted as a training checkpoint's is (:func:`mpnn_ip.interop.nequip.convert_model`).
"""

from __future__ import annotations

import yaml

from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.imported import ImportedModel
from mpnn_ip.interop.nequip import SOLE_MODEL, convert_model, func_tensors
from mpnn_ip.interop.nequip_config import options_with_species
from mpnn_ip.interop.records import plain
from mpnn_ip.interop.safe_pickle import Record, SafeArchive, module_children, module_tensors

__all__ = ["PACKAGE_MODULES", "check_package_modules", "convert_nequip_package", "looks_like_nequip_package"]

#: the module classes of a packaged NequIPGNNModel (any other, e.g. an OpenEquivariance or cuEquivariance
#: tensor product or another model's block, is refused by name)
PACKAGE_MODULES = frozenset(
    {
        "e3nn.math._normalize_activation.normalize2mom",
        "e3nn.nn._activation.Activation",
        "e3nn.nn._extract.Extract",
        "e3nn.nn._gate.Gate",
        "e3nn.nn._gate._Sortcut",
        "e3nn.o3._linear.Linear",
        "e3nn.o3._spherical_harmonics.SphericalHarmonics",
        "e3nn.o3._tensor_product._sub.ElementwiseTensorProduct",
        "e3nn.o3._tensor_product._sub.FullyConnectedTensorProduct",
        "e3nn.o3._tensor_product._tensor_product.TensorProduct",
        "nequip.nn._ghost_exchange_base.NoOpGhostExchangeModule",
        "nequip.nn._graph_mixin.SequentialGraphNetwork",
        "nequip.nn._tp_scatter_base.TensorProductScatter",
        "nequip.nn.atomwise.AtomwiseReduce",
        "nequip.nn.atomwise.PerTypeScaleShift",
        "nequip.nn.convnetlayer.ConvNetLayer",
        "nequip.nn.embedding._edge.BesselEdgeLengthEncoding",
        "nequip.nn.embedding._edge.EdgeLengthNormalizer",
        "nequip.nn.embedding._edge.SphericalHarmonicEdgeAttrs",
        "nequip.nn.embedding.cutoffs.PolynomialCutoff",
        "nequip.nn.embedding.node.NodeTypeEmbed",
        "nequip.nn.grad_output.ForceStressOutput",
        "nequip.nn.graph_model.GraphModel",
        "nequip.nn.interaction_block.InteractionBlock",
        "nequip.nn.misc.ApplyFactor",
        "nequip.nn.mlp.DeepLinearMLP",
        "nequip.nn.mlp.ScalarLinearLayer",
        "nequip.nn.mlp.ScalarMLP",
        "nequip.nn.mlp.ScalarMLPFunction",
        "nequip.nn.nonlinearities.ShiftedSoftplus",
        "nequip.nn.norm.AvgNumNeighborsNorm",
        "nequip.nn.pair_potential.ZBL",
        "nequip.nn.pair_potential._ZBL",
        "torch.nn.modules.activation.SiLU",
        "torch.nn.modules.activation.Tanh",
        "torch.nn.modules.activation.Sigmoid",
        "torch.nn.modules.container.ModuleDict",
        "torch.nn.modules.container.ModuleList",
        "torch.nn.modules.container.ParameterList",
        "torch.nn.modules.container.Sequential",
        "torch.nn.modules.sparse.Embedding",
    }
)


def check_package_modules(root: Record, where: str) -> None:
    """Refuse a packaged model with a module class outside :data:`PACKAGE_MODULES` (named, with its path)."""
    pending = [("", root)]
    while pending:
        path, record = pending.pop()
        if not isinstance(record, Record):
            raise UnsupportedModelError(
                f"{where}: module {path or '<root>'} is a {type(record).__name__}, not a recorded module"
            )
        if record.qualname not in PACKAGE_MODULES:
            raise UnsupportedModelError(
                f"{where}: module {path or '<root>'} is a {record.qualname}, which the NequIP importer does not convert"
            )
        pending.extend((f"{path}.{name}" if path else name, child) for name, child in module_children(record).items())


def looks_like_nequip_package(archive: SafeArchive) -> bool:
    """Whether ``archive`` is a ``nequip-package`` file (a torch.package zip with ``model/package_metadata.txt``)."""
    return any(name.endswith("/model/package_metadata.txt") for name in archive.names) and any(
        name.endswith("/model/config.yaml") for name in archive.names
    )


def _member(archive: SafeArchive, suffix: str) -> str:
    found = [n for n in archive.names if n.endswith(suffix)]
    if len(found) != 1:
        raise UnsupportedModelError(f"{archive.path}: expected one {suffix} in the package, found {len(found)}")
    return found[0]


def convert_nequip_package(archive: SafeArchive) -> ImportedModel:
    """Convert a ``nequip-package build`` file: config from ``model/config.yaml`` and ``package_metadata.txt``
    (YAML, parsed as data), weights from the module records of ``model/eager_model.pkl`` (nothing imported)."""
    where = str(archive.path)
    config = yaml.safe_load(archive.read_bytes(_member(archive, "/model/config.yaml")).decode("utf-8"))
    metadata = yaml.safe_load(archive.read_bytes(_member(archive, "/model/package_metadata.txt")).decode("utf-8")) or {}
    if not isinstance(config, dict) or "model" not in (config.get("training_module") or {}):
        raise UnsupportedModelError(f"{where}: model/config.yaml has no training_module.model")
    options = options_with_species(config["training_module"]["model"], config.get("data"), where)
    atom_types = metadata.get("atom_types")
    if isinstance(atom_types, dict) and [str(atom_types[k]) for k in sorted(atom_types)] != options["type_names"]:
        raise UnsupportedModelError(
            f"{where}: package_metadata atom_types {atom_types} differ from the config's type_names {options['type_names']}"
        )
    root = archive.load_pickle(_member(archive, "/model/eager_model.pkl"))
    if not isinstance(root, Record):
        raise UnsupportedModelError(f"{where}: model/eager_model.pkl holds a {type(root).__name__}, not a module")
    check_package_modules(root, where)
    models = module_children(root)
    if set(models) != {SOLE_MODEL}:
        raise UnsupportedModelError(
            f"{where}: the package holds the models {sorted(models)}; only single-model packages are converted"
        )
    model = convert_model(options, func_tensors(module_tensors(root), where), where)
    versions = metadata.get("versions") or {}
    return ImportedModel(
        potential=model,
        package="nequip",
        package_version=str(versions["nequip"]) if versions.get("nequip") else None,
        hyperparameters=plain(config["training_module"]["model"]),
        heads=["Default"],
    )
