"""GAP: descriptor symmetry, closed-form fit (exactness, forces, uncertainty) and state_dict round trip."""

from __future__ import annotations

import copy

import numpy as np
import physics
import pytest
import torch
from ase.build import molecule
from conftest import E0S, SPECIES, make_molecule, make_triclinic_crystal

from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs
from mpnn_ip.models import model_class
from mpnn_ip.models.gap import GAP
from mpnn_ip.models.gap_fit import fit_gap, select_sparse

SMALL = dict(r_max=4.0, n_max=3, l_max=2, sigma_atom=0.6, num_sparse=4)


def _reference_energy(atoms) -> tuple[float, np.ndarray]:
    """A smooth toy potential (pair springs) that labels the training frames: (eV, eV/Å)."""
    pos = atoms.positions
    diff = pos[:, None] - pos[None]
    dist = np.linalg.norm(diff, axis=-1) + np.eye(len(atoms))
    energy = 0.5 * np.sum(np.triu((dist - 1.3) ** 2, 1))
    grad = ((dist - 1.3) / dist)[..., None] * diff
    np.einsum("iij->ij", grad)[:] = 0
    return energy, -grad.sum(1)


def _frames(count: int, seed: int) -> list[AtomicGraph]:
    graphs = []
    for k in range(count):
        atoms = molecule("CH3OH")
        atoms.rattle(stdev=0.1, seed=seed + k)
        energy, forces = _reference_energy(atoms)
        graphs.append(
            AtomicGraph.from_atoms(
                atoms, energy=energy + sum(E0S[s] for s in atoms.get_chemical_symbols()), forces=forces
            )
        )
    return graphs


def _gap(**kwargs) -> GAP:
    torch.manual_seed(0)
    return GAP(species=["H", "C", "O"], e0s={k: E0S[k] for k in "HCO"}, **{**SMALL, **kwargs}).to(torch.float64).eval()


def test_config_rebuilds_and_physics_of_unfitted_model():
    torch.manual_seed(0)
    model = GAP(species=SPECIES, e0s=E0S, **SMALL).to(torch.float64).eval()
    rebuilt = type(model)(**model.config)
    assert rebuilt.config == model.config
    physics.check_rotation_equivariance(model, make_molecule())
    physics.check_forces_finite_differences(model, make_molecule())
    physics.check_stress_finite_differences(model, make_triclinic_crystal())
    physics.check_cutoff_smoothness(model, [("H", "O"), ("Cu", "Au")])
    physics.check_isolated_atoms(model, E0S)
    physics.check_float32_matches_float64(model, copy.deepcopy(model).to(torch.float32), [make_molecule()])


def test_select_sparse_returns_distinct_rows():
    rows = torch.randn(30, 5, dtype=torch.float64)
    for method in ("cur", "fps"):
        chosen = select_sparse(rows, 10, method)
        assert len(set(chosen.tolist())) == 10
    assert select_sparse(rows, 40, "cur").tolist() == list(range(30))


@pytest.mark.parametrize("with_forces", [False, True])
def test_fit_reproduces_training_energies_when_noise_vanishes(with_forces):
    graphs = _frames(4, seed=10)
    if not with_forces:
        for graph in graphs:
            graph.has_forces = torch.zeros_like(graph.has_forces)
    model = _gap(num_sparse=16, sigma_energy=1e-7, sigma_forces=1e-3, jitter=1e-12)
    info = fit_gap(model, graphs)
    assert info["num_sparse_per_species"] == [16, 4, 4]  # every H, C and O environment
    out = model(to_inputs(collate(graphs)), compute_forces=False)
    energies = torch.cat([g.energy for g in graphs])
    assert torch.allclose(out["energy"].detach(), energies, atol=1e-6, rtol=0)


def test_fitted_model_forces_match_finite_differences_and_state_dict_round_trip():
    graphs = _frames(4, seed=20)
    model = _gap(num_sparse=8)
    info = fit_gap(model, graphs)
    assert info["num_force_rows"] == 4 * 6 * 3 and info["train_force_rmse"] < 1.0
    atoms = molecule("CH3OH")
    atoms.rattle(stdev=0.05, seed=99)
    physics.check_forces_finite_differences(model, atoms)
    physics.check_rotation_equivariance(model, atoms)

    rebuilt = model_class("gap")(**model.config).to(torch.float64).eval()
    rebuilt.load_state_dict(model.state_dict())
    first, second = physics.evaluate(model, atoms), physics.evaluate(rebuilt, atoms)
    for key in ("energy", "forces", "energy_uncertainty", "node_energy_variance"):
        assert torch.allclose(first[key], second[key], atol=1e-12, rtol=0), key


def test_uncertainty_grows_away_from_training_data():
    graphs = _frames(4, seed=30)
    model = _gap(num_sparse=8)
    fit_gap(model, graphs)
    near = model(to_inputs(collate(graphs[:1])), compute_forces=False)["energy_uncertainty"]
    squeezed = molecule("CH3OH")
    squeezed.positions *= 0.7
    far = model(to_inputs(AtomicGraph.from_atoms(squeezed)), compute_forces=False)["energy_uncertainty"]
    assert float(far) > 3 * float(near)


def test_declared_uncertainty_reaches_evaluation_per_frame():
    from mpnn_ip.evaluation import evaluate

    graphs = _frames(3, seed=31)
    model = _gap(num_sparse=8)
    fit_gap(model, graphs)
    results = evaluate(model, graphs, batch_size=2)
    assert set(results["extra"]) == {"energy_uncertainty"}  # per-atom variance is not a per-frame extra
    expected = model(to_inputs(collate(graphs)), compute_forces=False)["energy_uncertainty"]
    assert np.allclose(results["extra"]["energy_uncertainty"], expected.detach().numpy(), rtol=1e-10)
