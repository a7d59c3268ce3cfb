"""NequIP 0.19 import: checkpoints and packages reproduce nequip's own outputs; unsupported options are refused.

Fixtures (``tests/data/interop/nequip``, written by ``scripts/make_interop_fixtures_nequip.py`` in the
nequip peer environment): real ``nequip-train`` checkpoints (xz-compressed, optimiser state
dropped), one ``nequip-package`` file, and nequip's energies/forces/stresses of fixed structures
computed by the models nequip's own loaders built from those files. nequip is never imported here.
"""

from __future__ import annotations

import copy
import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from e3nn import o3

from mpnn_ip.interop.check import TOLERANCES, our_results, parity_errors
from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.importer import read_source
from mpnn_ip.interop.nequip_checkpoint import convert_nequip_checkpoint, looks_like_nequip_checkpoint
from mpnn_ip.interop.nequip_package import looks_like_nequip_package
from mpnn_ip.interop.nequip_weights import linear_dense, load_linear, self_connection_dense, species_linear_dense
from mpnn_ip.interop.safe_pickle import SafeArchive, load_torch_file
from mpnn_ip.nn import SpeciesSelfInteraction

FIXTURES = Path(__file__).parent / "data" / "interop" / "nequip"
CHECKPOINTS = sorted(p.name[: -len(".reference.json")] for p in FIXTURES.glob("*.reference.json"))
PACKAGES = sorted(p.name[: -len(".package_reference.json")] for p in FIXTURES.glob("*.package_reference.json"))


def _unpacked(name: str, tmp_path: Path) -> Path:
    """The fixture ``name`` (stored as ``name.xz``) decompressed under ``tmp_path``."""
    out = tmp_path / name
    with lzma.open(FIXTURES / f"{name}.xz", "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def _reference(path: Path) -> tuple[list[Atoms], list[dict]]:
    data = json.loads(path.read_text())
    structures, results = [], []
    for entry in data["structures"].values():
        structures.append(
            Atoms(numbers=entry["numbers"], positions=entry["positions"], cell=entry["cell"], pbc=entry["pbc"])
        )
        results.append({"energy": entry["energy"], "forces": entry["forces"], "stress": entry.get("stress")})
    return structures, results


#: The weight map is exact: only float64 rounding separates the two models (measured <= 5e-14 eV/Å), far
#: inside the import tolerances, so a slightly wrong constant (e.g. one rounded to float32) fails here.
ROUNDING = 1e-11


def _assert_parity(model, reference: Path) -> dict:
    structures, theirs = _reference(reference)
    errors = parity_errors(our_results(model, structures), theirs, structures)
    assert all(errors[k] <= TOLERANCES[k] for k in TOLERANCES), f"{reference.name}: {errors}"
    assert max(errors.values()) <= ROUNDING, f"{reference.name}: the map is not exact: {errors}"
    return errors


@pytest.fixture(scope="module")
def nequip_s_checkpoint(tmp_path_factory) -> dict:
    return load_torch_file(_unpacked("nequip_s.ckpt", tmp_path_factory.mktemp("nequip_s")))


@pytest.mark.parametrize("variant", CHECKPOINTS)
def test_checkpoint_import_reproduces_nequip(variant, tmp_path):
    imported = read_source(_unpacked(f"{variant}.ckpt", tmp_path))
    assert imported.package == "nequip" and imported.package_version == "0.19.1"
    assert imported.potential.dtype == torch.float64 and not imported.potential.training
    _assert_parity(imported.potential, FIXTURES / f"{variant}.reference.json")


@pytest.mark.parametrize("variant", PACKAGES)
def test_package_import_reproduces_nequip(variant, tmp_path):
    path = _unpacked(f"{variant}.nequip.zip", tmp_path)
    assert looks_like_nequip_package(SafeArchive(path))
    imported = read_source(
        path
    )  # parity=True gates pickle torch.tanh as getattr(torch._VariableFunctionsClass, "tanh")
    assert imported.package == "nequip" and imported.package_version == "0.19.1"
    _assert_parity(imported.potential, FIXTURES / f"{variant}.package_reference.json")


def test_fixtures_cover_the_priority_variants():
    assert {
        "nequip_s",
        "parity_false_l1",
        "l3_one_layer",
        "five_layers_extras",
        "zbl_three_layers",
        "ema_per_type_neighbors",
    } <= set(CHECKPOINTS)
    assert {"nequip_s", "parity_false_l1"} <= set(PACKAGES)
    assert PACKAGES, "no nequip-package fixture"
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 900_000


def test_checkpoint_is_recognised_and_hyperparameters_are_plain(nequip_s_checkpoint):
    assert looks_like_nequip_checkpoint(nequip_s_checkpoint)
    assert not looks_like_nequip_checkpoint({"state_dict": {}, "hyper_parameters": {"model": {"_target_": "mace.X"}}})
    imported = convert_nequip_checkpoint(nequip_s_checkpoint)
    assert imported.hyperparameters["num_layers"] == 4 and imported.hyperparameters["type_names"] == ["H", "C", "O"]
    json.dumps(imported.hyperparameters)
    # the per-type shifts are our E0s (NequIP adds them to every atom, lone atoms included)
    assert imported.potential.e0.tolist() != [0.0, 0.0, 0.0]


def _with_model_option(ckpt: dict, **options) -> dict:
    changed = copy.copy(ckpt)
    changed["hyper_parameters"] = copy.deepcopy(ckpt["hyper_parameters"])
    changed["hyper_parameters"]["model"].update(options)
    return changed


@pytest.mark.parametrize(
    "option, value, named",
    [
        ("pair_potential", {"_target_": "nequip.nn.pair_potential.LennardJones", "lj_sigma": 1.0}, "pair_potential"),
        (
            "pair_potential",
            {"_target_": "nequip.nn.pair_potential.ZBL", "units": "real", "chemical_species": ["H", "C", "O"]},
            "pair_potential.units",
        ),
        ("convnet_nonlinearity_type", "norm", "convnet_nonlinearity_type"),
        ("avg_num_neighbors", {"H": 3.0, "C": 4.0}, "avg_num_neighbors"),
        ("per_edge_type_cutoff", {"H": 2.0}, "per_edge_type_cutoff"),
        (
            "categorical_graph_field_embed",
            [{"field": "total_charge", "num_features": 2, "min": -1, "max": 1}],
            "categorical_graph_field_embed",
        ),
        ("learnable_shift", True, "learnable_shift"),
        ("compile_mode", "compile", "compile_mode"),
        ("some_future_option", 1, "some_future_option"),
    ],
)
def test_unsupported_option_is_refused_naming_it(nequip_s_checkpoint, option, value, named):
    with pytest.raises(UnsupportedModelError, match=named):
        convert_nequip_checkpoint(_with_model_option(nequip_s_checkpoint, **{option: value}))


def test_other_model_builder_is_refused(nequip_s_checkpoint):
    with pytest.raises(UnsupportedModelError, match="Allegro"):
        convert_nequip_checkpoint(_with_model_option(nequip_s_checkpoint, _target_="allegro.model.AllegroModel"))


def test_schedule_free_training_module_is_refused(nequip_s_checkpoint):
    changed = copy.copy(nequip_s_checkpoint)
    changed["hyper_parameters"] = copy.deepcopy(nequip_s_checkpoint["hyper_parameters"])
    changed["hyper_parameters"]["info_dict"]["training_module"]["_target_"] = "nequip.train.ScheduleFreeLightningModule"
    with pytest.raises(UnsupportedModelError, match="ScheduleFreeLightningModule"):
        convert_nequip_checkpoint(changed)


def test_ema_checkpoint_without_its_ema_weights_is_refused(nequip_s_checkpoint):
    changed = copy.copy(nequip_s_checkpoint)
    changed["hyper_parameters"] = copy.deepcopy(nequip_s_checkpoint["hyper_parameters"])
    changed["hyper_parameters"]["info_dict"]["training_module"]["_target_"] = "nequip.train.EMALightningModule"
    with pytest.raises(UnsupportedModelError, match="EMA weights"):
        convert_nequip_checkpoint(changed)


def test_unknown_module_tensors_are_refused(nequip_s_checkpoint):
    changed = copy.copy(nequip_s_checkpoint)
    changed["state_dict"] = dict(nequip_s_checkpoint["state_dict"])
    changed["state_dict"]["model.sole_model.model.func.pair_potential.sigma"] = torch.ones(3, 3)
    with pytest.raises(UnsupportedModelError, match="pair_potential.sigma"):
        convert_nequip_checkpoint(changed)


def test_species_self_connection_equals_type_embedding_tensor_product():
    """NequIP's self-connection ``FCTP(x, embedding[type])`` becomes one exact linear map per species."""
    torch.manual_seed(0)
    irreps_in, irreps_out = o3.Irreps("3x0e+2x1o+2x0e+1x2e"), o3.Irreps("2x0e+3x0e+2x1o+1x2e+1x1e")
    num_species, num_attrs = 3, 4
    tp = o3.FullyConnectedTensorProduct(irreps_in, f"{num_attrs}x0e", irreps_out.simplify()).double()
    with torch.no_grad():
        tp.weight.normal_()
    attrs = torch.randn(num_species, num_attrs, dtype=torch.float64)
    ours = SpeciesSelfInteraction(irreps_in, num_species, irreps_out).double()
    per_species = self_connection_dense(irreps_in, num_attrs, irreps_out.simplify(), tp.weight.detach(), attrs)
    load_linear(ours.linear, species_linear_dense(per_species, irreps_out, ours.species_normalization), "test")
    x = torch.randn(6, irreps_in.dim, dtype=torch.float64)
    species = torch.tensor([0, 1, 2, 2, 1, 0])
    expected = tp(x, attrs[species])
    torch.testing.assert_close(ours(x, species), expected, rtol=1e-12, atol=1e-12)


def test_linear_map_survives_regrouping_of_irreps():
    """An ``o3.Linear`` copied between groupings of the same channels (simplified or not) computes the same map."""
    torch.manual_seed(1)
    irreps_in, irreps_out = o3.Irreps("2x0e+1x1o+3x0e"), o3.Irreps("4x0e+2x0e+2x1o")
    source = o3.Linear(irreps_in, irreps_out.simplify()).double()
    with torch.no_grad():
        source.weight.normal_()
    target = o3.Linear(irreps_in, irreps_out).double()
    load_linear(target, linear_dense(irreps_in, irreps_out.simplify(), source.weight.detach()), "test")
    x = torch.randn(5, irreps_in.dim, dtype=torch.float64)
    np.testing.assert_allclose(target(x).detach().numpy(), source(x).detach().numpy(), rtol=1e-12, atol=1e-12)


def test_written_checkpoint_loads_back_with_the_same_outputs(tmp_path):
    """Every option the import sets (ZBL, unsorted custom types, readout MLP, ...) survives our own checkpoint format."""
    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.interop.importer import write_imported_checkpoint

    for variant in ("zbl_three_layers", "five_layers_extras", "l3_one_layer"):
        out = tmp_path / f"{variant}_mpnn.ckpt"
        meta = write_imported_checkpoint(_unpacked(f"{variant}.ckpt", tmp_path), out)
        assert meta["source"]["package"] == "nequip"
        _assert_parity(load_model(out, dtype="float64").eval(), FIXTURES / f"{variant}.reference.json")


def test_preset_builder_resolves_to_its_preset_options():
    from mpnn_ip.interop.nequip_config import nequip_options

    options = nequip_options(
        {
            "_target_": "nequip.model.PresetNequIPGNNModel",
            "preset": "s",
            "type_names": ["H"],
            "r_max": 5.0,
            "avg_num_neighbors": 3.0,
            "num_features": 8,
        },
        "test",
    )
    assert (options["num_layers"], options["l_max"], options["parity"], options["num_features"]) == (2, 1, False, 8)
    assert (options["type_embed_num_features"], options["radial_mlp_depth"], options["radial_mlp_width"]) == (
        32,
        1,
        128,
    )


def test_package_with_an_accelerated_tensor_product_is_refused(tmp_path):
    """A packaged module of a class the importer does not know (e.g. an OpenEquivariance kernel) is refused by name."""
    from mpnn_ip.interop.nequip_package import check_package_modules
    from mpnn_ip.interop.safe_pickle import module_children

    archive = SafeArchive(_unpacked("parity_false_l1.nequip.zip", tmp_path))
    root = archive.load_pickle(next(n for n in archive.names if n.endswith("/model/eager_model.pkl")))
    check_package_modules(root, "package")
    convnet = module_children(module_children(module_children(module_children(root)["sole_model"])["model"])["func"])[
        "layer0_convnet"
    ]
    interaction = module_children(convnet)["conv"]
    foreign = next(r for r in module_children(interaction).values() if r.qualname.endswith("TensorProductScatter"))
    object.__setattr__(foreign, "qualname", "nequip.nn._tp_scatter_oeq.OpenEquivarianceTensorProductScatter")
    with pytest.raises(UnsupportedModelError, match="OpenEquivarianceTensorProductScatter"):
        check_package_modules(root, "package")
