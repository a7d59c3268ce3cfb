"""``MPNNCalculator``: ASE results equal the model's own outputs, stress is the strain derivative."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("torch_cluster")

from ase import Atoms  # noqa: E402
from ase.calculators.calculator import PropertyNotImplementedError  # noqa: E402
from ase.stress import full_3x3_to_voigt_6_stress  # noqa: E402
from conftest import make_molecule, make_slab, make_triclinic_crystal  # noqa: E402
from tiny_checkpoint import build_tiny_model, tiny_checkpoint  # noqa: E402

from mpnn_ip.calculators import MPNNCalculator  # noqa: E402
from mpnn_ip.data import AtomicGraph  # noqa: E402
from mpnn_ip.errors import DataError  # noqa: E402


def _direct(model, atoms, stress):
    return model(AtomicGraph.from_atoms(atoms), compute_stress=stress)


@pytest.mark.parametrize("dtype", [None, "float64"])
@pytest.mark.parametrize(
    "make", [make_triclinic_crystal, make_molecule, make_slab], ids=["crystal", "molecule", "slab"]
)
def test_calculator_matches_the_model(make, dtype):
    model = build_tiny_model().eval()
    calc = MPNNCalculator(model, dtype=dtype)
    atoms = make()
    atoms.calc = calc
    periodic = atoms.pbc.any()
    expected = _direct(calc.model, atoms, stress=periodic)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype else dict(rtol=1e-5, atol=1e-6)
    assert calc.model.dtype == (torch.float64 if dtype else torch.float32)
    np.testing.assert_allclose(atoms.get_potential_energy(), float(expected["energy"].detach()), **tol)
    np.testing.assert_allclose(atoms.get_forces(), expected["forces"].detach().double().numpy(), **tol)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), atoms.get_potential_energy(), rtol=1e-6)
    if periodic:
        voigt = full_3x3_to_voigt_6_stress(expected["stress"][0].detach().double().numpy())
        np.testing.assert_allclose(atoms.get_stress(), voigt, **tol)
    else:
        with pytest.raises(PropertyNotImplementedError):
            atoms.get_stress()


def test_stress_equals_finite_difference_of_energy_under_strain():
    """sigma_ij = (1/V) dE/d(eps_ij), ASE sign, checked for all six Voigt components."""
    atoms = make_triclinic_crystal()
    atoms.calc = MPNNCalculator(build_tiny_model(), dtype="float64")
    stress = atoms.get_stress(voigt=False)
    volume, h = atoms.get_volume(), 1e-5
    numeric = np.zeros((3, 3))
    for i, j in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[i, j] += sign * h / 2 if i != j else sign * h
            if i != j:
                strain[j, i] += sign * h / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            strained.calc = atoms.calc
            energies.append(strained.get_potential_energy())
        numeric[i, j] = numeric[j, i] = (energies[0] - energies[1]) / (2 * h) / volume
    np.testing.assert_allclose(stress, numeric, atol=1e-7)


def test_from_checkpoint_gives_the_same_numbers(tmp_path):
    path = tiny_checkpoint(tmp_path / "tiny.ckpt")
    atoms = make_triclinic_crystal()
    atoms.calc = MPNNCalculator.from_checkpoint(path, device="cpu")
    reference = make_triclinic_crystal()
    reference.calc = MPNNCalculator(build_tiny_model())
    np.testing.assert_allclose(atoms.get_potential_energy(), reference.get_potential_energy(), rtol=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), reference.get_stress(), rtol=1e-5, atol=1e-7)


def test_unknown_element_raises_data_error():
    atoms = Atoms("CuFe", positions=[[0, 0, 0], [2.2, 0, 0]])
    atoms.calc = MPNNCalculator(build_tiny_model())
    with pytest.raises(DataError, match="Fe"):
        atoms.get_potential_energy()


class _WithUncertainty(torch.nn.Module):
    """A model that declares and returns a per-frame ``energy_uncertainty`` (as the GAP model does)."""

    extra_outputs = {"energy_uncertainty": ("frame", "eV")}

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, compute_forces=True, compute_stress=False):
        out = self.model(inputs, compute_forces=compute_forces, compute_stress=compute_stress)
        out["energy_uncertainty"] = 0.1 * out["energy"].detach().abs()
        return out


def test_declared_extra_outputs_are_implemented_properties():
    atoms = make_molecule()
    atoms.calc = MPNNCalculator(_WithUncertainty(build_tiny_model()))
    energy = atoms.get_potential_energy()
    assert atoms.calc.get_property("energy_uncertainty", atoms) == pytest.approx(0.1 * abs(energy), rel=1e-6)
    plain = make_molecule()
    plain.calc = MPNNCalculator(build_tiny_model())
    with pytest.raises(PropertyNotImplementedError):
        plain.calc.get_property("energy_uncertainty", plain)
    assert "energy_uncertainty" not in plain.calc.implemented_properties
    assert plain.calc.implemented_properties == MPNNCalculator.implemented_properties


def test_results_are_recomputed_after_moving_atoms():
    atoms = make_triclinic_crystal()
    atoms.calc = MPNNCalculator(build_tiny_model(), dtype="float64")
    first = atoms.get_potential_energy()
    forces = atoms.get_forces()
    atoms.positions[0] += 0.01 * forces[0] / np.linalg.norm(forces[0])
    assert atoms.get_potential_energy() < first


def test_per_atom_stresses_sum_to_the_stress():
    """ASE's ``stresses``: atomic virials / -volume, Voigt [N, 6]; their sum is ``stress``."""
    atoms = make_triclinic_crystal()
    atoms.calc = MPNNCalculator(build_tiny_model(), dtype="float64")
    stresses = atoms.get_stresses()
    assert stresses.shape == (len(atoms), 6)
    np.testing.assert_allclose(stresses.sum(axis=0), atoms.get_stress(), rtol=1e-10, atol=1e-12)
    assert np.abs(stresses).max() > 1e-6
    molecule = make_molecule()
    molecule.calc = MPNNCalculator(build_tiny_model(), dtype="float64")
    with pytest.raises(PropertyNotImplementedError):
        molecule.get_stresses()


@pytest.mark.parametrize("keyword", ["skn", "devise", "head_name"])
def test_misspelt_keywords_are_refused_with_the_known_ones(tmp_path, keyword):
    from mpnn_ip.errors import ConfigError

    path = tiny_checkpoint(tmp_path / "tiny.ckpt")
    with pytest.raises(
        ConfigError,
        match=rf"MPNNCalculator: unknown keyword\(s\) {keyword}; the keywords are model, device, dtype, skin",
    ):
        MPNNCalculator.from_checkpoint(path, **{keyword: 1.0})
    assert MPNNCalculator.from_checkpoint(path, skin=1.0, label="run").neighbor_list.skin == 1.0
