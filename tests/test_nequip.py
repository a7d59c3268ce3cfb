"""NequIP model: construction, parameter count, dtypes, rebuild from config, basic symmetry checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from e3nn import o3

from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs
from mpnn_ip.errors import DataError
from mpnn_ip.models import build_model
from mpnn_ip.models.nequip import NequIP

SMALL_PRESET = dict(num_layers=4, l_max=2, parity=True, num_features=32, radial_mlp=[64, 64], num_bessel=8, cutoff_p=6)


def _inputs(atoms):
    return to_inputs(collate([AtomicGraph.from_atoms(atoms)]))


def _molecule():
    atoms = molecule("CH3OH")
    atoms.rattle(stdev=0.05, seed=0)
    return atoms


def expected_parameter_count(num_species, num_layers, l_max, parity, num_features, num_bessel, radial_mlp):
    """Parameters of NequIP counted by hand from the irreps of each layer.

    Per layer: linear_in (mul^2 per input irrep), radial MLP (num_bessel -> hidden -> one weight
    per tensor-product path and channel), linear_out (paths into each output irrep x its
    multiplicity), self-connection (num_species x mul_in x mul_out per shared irrep, not in the
    first layer). Plus the embedding (S x F), the readout (F x F/2 + F/2) and scale/shift (2 S).
    """
    F = num_features
    sh = [o3.Irrep(l, (-1) ** l) for l in range(l_max + 1)]
    hidden = [o3.Irrep(l, p) for l in range(l_max + 1) for p in ((1, -1) if parity else ((-1) ** l,))]
    count = num_species * F + F * (F // 2) + F // 2 + 2 * num_species
    irreps_in = [o3.Irrep("0e")]
    for layer in range(num_layers):
        target = [o3.Irrep("0e")] if layer == num_layers - 1 else hidden
        paths = [(a, ir) for a in irreps_in for s in sh for ir in a * s if ir in target]
        reachable = [ir for ir in target if any(ir == out for _, out in paths)]
        gated = [ir for ir in reachable if ir.l > 0]
        out_mul = {ir: F for ir in reachable}
        gate_ir = o3.Irrep("0e") if any(out == o3.Irrep("0e") for _, out in paths) else o3.Irrep("0o")
        out_mul[gate_ir] = out_mul.get(gate_ir, 0) + F * len(gated)
        widths = [num_bessel, *radial_mlp, F * len(paths)]
        count += len(irreps_in) * F * F
        count += sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        count += sum(F * out_mul[ir] for _, ir in paths)
        if layer > 0:
            count += sum(num_species * F * out_mul[ir] for ir in irreps_in if ir in out_mul)
        irreps_in = reachable
    return count


@pytest.mark.parametrize(
    "species, kwargs",
    [(["H", "C", "N", "O"], SMALL_PRESET), (["Cu"], dict(l_max=1, parity=False, num_layers=2))],
)
def test_parameter_count_matches_formula(species, kwargs):
    model = NequIP(species, **kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    config = {**dict(num_layers=4, l_max=2, parity=True, num_features=32, num_bessel=8, radial_mlp=[64, 64]), **kwargs}
    expected = expected_parameter_count(
        len(species),
        config["num_layers"],
        config["l_max"],
        config["parity"],
        config["num_features"],
        config["num_bessel"],
        config["radial_mlp"],
    )
    print(f"NequIP {species} {kwargs}: {n_params} parameters")
    assert n_params == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_in_float32_and_float64(dtype):
    torch.manual_seed(0)
    model = build_model("nequip", species=["H", "C", "O"], num_layers=2, num_features=8, radial_mlp=[16]).to(dtype)
    model.eval()
    out = model(_inputs(_molecule()))
    assert out["energy"].dtype == dtype and out["energy"].shape == (1,)
    assert out["forces"].shape == (6, 3)
    assert torch.isfinite(out["forces"]).all() and torch.isfinite(out["energy"]).all()
    assert out["forces"].abs().max() > 0


def test_rebuild_from_config_gives_same_parameter_shapes():
    model = NequIP(["H", "O"], num_layers=3, l_max=1, num_features=8, e0s={"H": -1.0, 8: -4.0}, zbl=True)
    rebuilt = type(model)(**model.config)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in rebuilt.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    assert model.config["e0s"] == {1: -1.0, 8: -4.0}


def test_parameters_are_deterministic_given_seed():
    torch.manual_seed(7)
    a = NequIP(["H", "C"], num_layers=2, num_features=8)
    torch.manual_seed(7)
    b = NequIP(["H", "C"], num_layers=2, num_features=8)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_unknown_element_raises_data_error():
    model = NequIP(["H", "C"], num_layers=1, num_features=8)
    with pytest.raises(DataError, match="O"):
        model(_inputs(_molecule()))


def test_isolated_atom_energy_is_e0_whatever_the_shift():
    from ase import Atoms

    model = NequIP(["H", "O"], num_layers=2, num_features=8, e0s={"O": -4.5}, energy_shift=0.25).double().eval()
    out = model(_inputs(Atoms("O", positions=[[0.0, 0.0, 0.0]])))
    torch.testing.assert_close(out["energy"], torch.tensor([-4.5], dtype=torch.float64))


def test_energy_rotation_invariant_and_forces_are_gradients_in_float64():
    torch.manual_seed(0)
    model = NequIP(["H", "C", "O"], num_layers=2, l_max=2, num_features=8, radial_mlp=[16], zbl=True).double().eval()
    atoms = _molecule()
    out = model(_inputs(atoms))
    rotated = atoms.copy()
    rotated.rotate(73.0, (0.3, -0.5, 0.8), center=(0.0, 0.0, 0.0))
    out_rot = model(_inputs(rotated))
    torch.testing.assert_close(out_rot["energy"], out["energy"], rtol=1e-10, atol=1e-10)

    delta = 1e-5
    atom, axis = 2, 1
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[atom, axis] += sign * delta
        energies.append(float(model(_inputs(moved), compute_forces=False)["energy"][0].detach()))
    finite_difference_force = -(energies[0] - energies[1]) / (2 * delta)
    np.testing.assert_allclose(float(out["forces"][atom, axis]), finite_difference_force, rtol=1e-6, atol=1e-8)


NEQUIP_019_OPTIONS = dict(
    num_layers=3,
    l_max=1,
    num_features=[6, 4],
    type_embed_num_features=5,
    readout_mlp=[7],
    self_connection=False,
    resnet=True,
    zbl="nequip",
)


def test_nequip_019_options_rebuild_from_config():
    model = NequIP(["H", "C", "O"], **NEQUIP_019_OPTIONS)
    assert str(model.layers[1].irreps_in) == "6x0e+4x1o" and str(model.layers[2].irreps_in) == "6x0e+4x1e+4x1o"
    rebuilt = type(model)(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config


def test_nequip_019_options_keep_energy_rotation_invariant_and_forces_gradients():
    torch.manual_seed(0)
    model = NequIP(["H", "C", "O"], **NEQUIP_019_OPTIONS).double().eval()
    atoms = _molecule()
    out = model(_inputs(atoms))
    rotated = atoms.copy()
    rotated.rotate(41.0, (0.6, 0.2, -0.7), center=(0.0, 0.0, 0.0))
    torch.testing.assert_close(model(_inputs(rotated))["energy"], out["energy"], rtol=1e-10, atol=1e-10)
    delta, atom, axis = 1e-5, 1, 0
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[atom, axis] += sign * delta
        energies.append(float(model(_inputs(moved), compute_forces=False)["energy"][0].detach()))
    np.testing.assert_allclose(
        float(out["forces"][atom, axis]), -(energies[0] - energies[1]) / (2 * delta), rtol=1e-6, atol=1e-8
    )


def test_zbl_must_be_a_known_variant():
    with pytest.raises(ValueError, match="zbl"):
        NequIP(["H"], num_layers=1, num_features=4, zbl="lammps")


def test_per_species_avg_num_neighbors_equal_to_global_gives_the_same_model():
    torch.manual_seed(3)
    shared = NequIP(["H", "C", "O"], num_layers=2, l_max=1, num_features=4, avg_num_neighbors=4.0).double().eval()
    per_species = NequIP(
        ["H", "C", "O"], num_layers=2, l_max=1, num_features=4, avg_num_neighbors={"H": 4.0, "C": 4.0, "O": 4.0}
    ).double()
    per_species.load_state_dict(shared.state_dict())
    atoms = _molecule()
    torch.testing.assert_close(
        per_species.eval()(_inputs(atoms))["energy"], shared(_inputs(atoms))["energy"], rtol=1e-12, atol=1e-12
    )
    different = NequIP(
        ["H", "C", "O"], num_layers=2, l_max=1, num_features=4, avg_num_neighbors=[1.0, 4.0, 9.0]
    ).double()
    different.load_state_dict(shared.state_dict())
    assert not torch.allclose(different.eval()(_inputs(atoms))["energy"], shared(_inputs(atoms))["energy"])
