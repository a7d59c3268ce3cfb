"""mace-torch ``.model`` import: our converted MACE reproduces mace's own float64 outputs.

Fixtures (tests/data/interop/mace, made by scripts/make_interop_fixtures_mace.py in the mace-torch
venv): xz-compressed ``.model`` files saved as ``mace_run_train`` saves them, and mace's energies,
forces and stresses on a molecule, a bulk cell, a slab, a triclinic mixed-species cell and a lone atom.
"""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from mpnn_ip.interop.check import TOLERANCES, our_results, parity_errors
from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.mace import convert_mace
from mpnn_ip.interop.safe_pickle import load_torch_file

FIXTURES = Path(__file__).parent / "data" / "interop" / "mace"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def _record(variant: str, tmp_path: Path):
    path = tmp_path / f"{variant}.model"
    path.write_bytes(lzma.decompress((FIXTURES / f"{variant}.model.xz").read_bytes()))
    return load_torch_file(path)


def _structures() -> dict[str, Atoms]:
    data = np.load(FIXTURES / "structures.npz")
    return {
        str(name): Atoms(
            numbers=data[f"{name}.numbers"],
            positions=data[f"{name}.positions"],
            cell=data[f"{name}.cell"],
            pbc=data[f"{name}.pbc"],
        )
        for name in data["names"]
    }


def _parity(variant: str, tmp_path: Path, head: str | None = None) -> dict[str, float]:
    imported = convert_mace(_record(variant, tmp_path), head=head)
    assert imported.package == "mace-torch"
    assert next(imported.potential.parameters()).dtype == torch.float64
    reference = np.load(FIXTURES / f"{variant}.npz")
    structures = _structures()
    head_name = head or "Default"
    theirs = [
        {key: reference[f"{head_name}.{name}.{key}"] for key in ("energy", "forces", "stress")} for name in structures
    ]
    for item in theirs:
        item["energy"] = float(item["energy"])
    errors = parity_errors(
        our_results(imported.potential, list(structures.values())), theirs, list(structures.values())
    )
    print(variant, head, errors)
    return errors


def _assert_within_tolerances(errors: dict[str, float]) -> None:
    for quantity, tolerance in TOLERANCES.items():
        assert errors[quantity] <= tolerance, f"{quantity}: {errors[quantity]:.3e} > {tolerance:.0e}"


@pytest.mark.parametrize("variant", ["scaleshift_residual_l3_c3"])
def test_scaleshift_residual_model_matches_mace(variant, tmp_path):
    """mace_run_train's default (and MACE-MP/OFF's) architecture: residual first interaction, max_ell 3, correlation 3."""
    _assert_within_tolerances(_parity(variant, tmp_path))


@pytest.mark.parametrize("variant", ["plain_first_l2_c2", "scaleshift_l1_three_layers", "scaleshift_single_layer"])
def test_architecture_options_match_mace(variant, tmp_path):
    """Plain first interaction, plain MACE class, correlation 1-2, max_ell 1-2, L=2 hidden features,
    other radial MLPs, Bessel counts and cutoff exponents, reduced CG coupling basis, one interaction (linear readout)."""
    _assert_within_tolerances(_parity(variant, tmp_path))


@pytest.mark.parametrize("variant", ["scaleshift_gaussian_agnesi_zbl", "plain_soft_zbl"])
def test_radial_options_match_mace(variant, tmp_path):
    """Gaussian basis, Agnesi and Soft distance transforms, ZBL pair repulsion (scaled in ScaleShiftMACE)."""
    _assert_within_tolerances(_parity(variant, tmp_path))


@pytest.mark.parametrize("head", ["pbe", "r2scan"])
def test_each_head_of_a_multihead_model_matches_mace(head, tmp_path):
    _assert_within_tolerances(_parity("multihead", tmp_path, head=head))


def _head_results(model, structures: list[Atoms], head: int) -> list[dict]:
    """``our_results`` with every frame evaluated by head ``head`` (the inputs' per-frame head index)."""
    from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs

    out = []
    for atoms in structures:
        periodic = bool(atoms.pbc.all())
        inputs = to_inputs(collate([AtomicGraph.from_atoms(atoms)]))
        inputs["head"] = torch.tensor([head])
        result = model(inputs, compute_forces=True, compute_stress=periodic)
        out.append(
            {
                "energy": float(result["energy"][0].detach()),
                "forces": result["forces"].detach().numpy(),
                "stress": result["stress"][0].detach().numpy() if periodic else None,
            }
        )
    return out


def test_all_heads_import_into_one_model_whose_frames_use_their_own_head(tmp_path):
    imported = convert_mace(_record("multihead", tmp_path))
    model = imported.potential
    assert model.heads == ["pbe", "r2scan"] and imported.heads == ["pbe", "r2scan"]
    reference = np.load(FIXTURES / "multihead.npz")
    structures = _structures()
    for index, head in enumerate(model.heads):
        theirs = [
            {key: reference[f"{head}.{name}.{key}"] for key in ("energy", "forces", "stress")} for name in structures
        ]
        for item in theirs:
            item["energy"] = float(item["energy"])
        errors = parity_errors(
            _head_results(model, list(structures.values()), index), theirs, list(structures.values())
        )
        print(head, errors)
        _assert_within_tolerances(errors)


def test_multihead_checkpoint_keeps_its_heads_and_the_calculator_picks_one(tmp_path):
    from mpnn_ip.calculators import MPNNCalculator
    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.errors import ConfigError
    from mpnn_ip.interop.importer import write_imported_checkpoint

    source = tmp_path / "multihead.model"
    source.write_bytes(lzma.decompress((FIXTURES / "multihead.model.xz").read_bytes()))
    write_imported_checkpoint(source, tmp_path / "multihead.ckpt")
    assert load_model(tmp_path / "multihead.ckpt").heads == ["pbe", "r2scan"]
    reference = np.load(FIXTURES / "multihead.npz")
    atoms = _structures()["bulk"]
    for head, expected_head in ((None, "pbe"), ("pbe", "pbe"), ("r2scan", "r2scan")):
        atoms.calc = MPNNCalculator.from_checkpoint(tmp_path / "multihead.ckpt", head=head, compile=False)
        assert atoms.get_potential_energy() == pytest.approx(
            float(reference[f"{expected_head}.bulk.energy"]), abs=1e-6 * len(atoms)
        )
        np.testing.assert_allclose(atoms.get_forces(), reference[f"{expected_head}.bulk.forces"], atol=1e-5)
    with pytest.raises(ConfigError, match=r"no head 'pw91'.*\['pbe', 'r2scan'\]"):
        MPNNCalculator.from_checkpoint(tmp_path / "multihead.ckpt", head="pw91")


def test_unknown_head_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError, match="no head 'pw91'"):
        convert_mace(_record("multihead", tmp_path), head="pw91")


def test_density_interaction_is_refused_by_name(tmp_path):
    with pytest.raises(
        UnsupportedModelError,
        match=r"module model\.interactions\.0 of class mace\.modules\.blocks\.RealAgnosticDensityInteractionBlock",
    ):
        convert_mace(_record("refused_density", tmp_path))


def test_hyperparameters_are_plain_and_complete(tmp_path):
    imported = convert_mace(_record("scaleshift_residual_l3_c3", tmp_path))
    hp = imported.hyperparameters
    assert hp["max_ell"] == 3 and hp["correlation"] == [3, 3] and hp["radial_MLP"] == [64, 64, 64]
    assert hp["atomic_numbers"] == [1, 6, 8] and imported.heads == ["Default"]
    assert json.loads(json.dumps(hp)) == hp


@pytest.mark.parametrize(
    "option, value, named",
    [
        ("use_agnostic_product", True, "use_agnostic_product=True"),
        ("use_last_readout_only", True, "use_last_readout_only=True"),
        ("apply_cutoff", False, "apply_cutoff=False"),
        ("edge_irreps", "8x0e+8x1o", "edge_irreps=8x0e"),
        ("embedding_specs", {"charges": {}}, "embedding_specs"),
    ],
)
def test_unsupported_options_are_refused_by_name(option, value, named, tmp_path):
    record = _record("scaleshift_residual_l3_c3", tmp_path)
    record.state[option] = value
    with pytest.raises(UnsupportedModelError, match=named):
        convert_mace(record)


def test_imported_checkpoint_reloads_with_the_same_outputs(tmp_path):
    """The importer's checkpoint rebuilds our MACE from plain constructor arguments (all mace options)."""
    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.interop.importer import write_imported_checkpoint

    variant = "scaleshift_gaussian_agnesi_zbl"
    source = tmp_path / f"{variant}.model"
    source.write_bytes(lzma.decompress((FIXTURES / f"{variant}.model.xz").read_bytes()))
    write_imported_checkpoint(source, tmp_path / "imported.ckpt")
    reloaded = load_model(tmp_path / "imported.ckpt")
    structures = list(_structures().values())
    direct = our_results(convert_mace(load_torch_file(source)).potential, structures)
    again = our_results(reloaded, structures)
    for a, b in zip(direct, again):
        assert a["energy"] == pytest.approx(b["energy"], abs=1e-9)
        np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-10)


def test_imported_model_is_rotation_invariant_and_runs_in_float32(tmp_path):
    import physics

    model = convert_mace(_record("scaleshift_gaussian_agnesi_zbl", tmp_path)).potential
    structures = _structures()
    physics.check_rotation_equivariance(model, structures["triclinic"])
    physics.check_float32_matches_float64(
        model,
        convert_mace(_record("scaleshift_gaussian_agnesi_zbl", tmp_path)).potential.float(),
        [structures["bulk"], structures["molecule"]],
    )
