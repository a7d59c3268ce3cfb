"""``MPNNCalculator(..., dispersion="d3bj:pbe")``: the model's results plus simple-dftd3's D3(BJ), for a model
trained without dispersion (energy, per-atom energies, forces, stress and per-atom stresses)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.units import Bohr
from tiny_checkpoint import build_tiny_model

from mpnn_ip.calculators import MPNNCalculator
from mpnn_ip.errors import ConfigError

dftd3_ase = pytest.importorskip("dftd3.ase")
pytest.importorskip("torch_dftd")


def _d3(atoms):
    """simple-dftd3's D3(BJ)-PBE with our default cutoffs (pairs and coordination numbers within 40 bohr)."""
    atoms = atoms.copy()
    atoms.calc = dftd3_ase.DFTD3(method="pbe", damping="d3bj", realspace_cutoff={"disp2": 40 * Bohr, "cn": 40 * Bohr})
    return atoms


def _pair(atoms, dispersion):
    model = build_tiny_model()
    plain, corrected = atoms.copy(), atoms.copy()
    plain.calc = MPNNCalculator(model, dtype="float64")
    corrected.calc = MPNNCalculator(model, dtype="float64", dispersion=dispersion)
    return plain, corrected


def test_results_are_the_models_plus_dftd3(triclinic_crystal):
    plain, corrected = _pair(triclinic_crystal, "d3bj:pbe")
    reference = _d3(triclinic_crystal)
    d3_energy = reference.get_potential_energy()
    assert abs(d3_energy) > 1e-3  # a correction worth testing
    assert corrected.get_potential_energy() == pytest.approx(plain.get_potential_energy() + d3_energy, abs=1e-6)
    np.testing.assert_allclose(corrected.get_forces(), plain.get_forces() + reference.get_forces(), atol=1e-6)
    np.testing.assert_allclose(corrected.get_stress(), plain.get_stress() + reference.get_stress(), atol=1e-7)
    energies = corrected.get_potential_energies()
    assert energies.sum() == pytest.approx(corrected.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(corrected.get_stresses().sum(axis=0), corrected.get_stress(), atol=1e-9)


def test_a_molecule_gets_energy_and_forces_of_dftd3(molecule):
    plain, corrected = _pair(molecule, "d3bj:pbe")
    reference = _d3(molecule)
    assert corrected.get_potential_energy() == pytest.approx(
        plain.get_potential_energy() + reference.get_potential_energy(), abs=1e-6
    )
    np.testing.assert_allclose(corrected.get_forces(), plain.get_forces() + reference.get_forces(), atol=1e-6)


def test_an_unknown_dispersion_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match="d3bj"):
        MPNNCalculator(build_tiny_model(), dispersion="d4:pbe")


def test_the_dispersion_pairs_are_kept_with_the_models_skin(triclinic_crystal):
    model = build_tiny_model()
    kept, searched = triclinic_crystal.copy(), triclinic_crystal.copy()
    kept.calc = MPNNCalculator(model, dtype="float64", dispersion="d3bj:pbe", skin=1.0)
    searched.calc = MPNNCalculator(model, dtype="float64", dispersion="d3bj:pbe")
    for step in range(3):
        for atoms in (kept, searched):
            atoms.positions += 0.05 * step
            atoms.positions[0] += [0.02, -0.01, 0.01]
        assert kept.get_potential_energy() == pytest.approx(searched.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(kept.get_forces(), searched.get_forces(), atol=1e-10)
    assert kept.calc.evaluator.dispersion.neighbor_list.builds == 1
    assert searched.calc.evaluator.dispersion.neighbor_list.builds == 3
