"""Stress units, sign conventions and virial -> stress."""

import numpy as np
import pytest

from mpnn_ip.data.units import stress_to_ase, stress_unit_factor, virial_to_stress
from mpnn_ip.errors import ConfigError, DataError


@pytest.mark.parametrize(
    "unit, ev_per_a3",
    [
        ("eV/A^3", 1.0),
        ("eV/Å^3", 1.0),
        ("eV/Ang^3", 1.0),
        ("eV/Å³", 1.0),
        ("GPa", 1 / 160.21766208),
        ("kbar", 0.1 / 160.21766208),
        ("bar", 1e-4 / 160.21766208),
    ],
)
def test_stress_unit_factor_is_size_of_unit_in_ev_per_cubic_angstrom(unit, ev_per_a3):
    assert stress_unit_factor(unit) == pytest.approx(ev_per_a3, rel=1e-6)


def test_unknown_stress_unit_is_rejected_with_the_accepted_list():
    with pytest.raises(ConfigError, match="GPa"):
        stress_unit_factor("psi")


def test_voigt_and_full_stress_give_the_same_tensor():
    voigt = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    full = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    np.testing.assert_array_equal(stress_to_ase(voigt), full)
    np.testing.assert_array_equal(stress_to_ase(full.reshape(9)), full)


def test_compressive_sign_convention_is_flipped_and_scaled():
    pressure_like = np.eye(3) * 10.0  # 10 GPa, positive = compressive
    stress = stress_to_ase(pressure_like, unit="GPa", sign=-1)
    np.testing.assert_allclose(stress, -np.eye(3) * 10.0 / 160.21766208, rtol=1e-6)


def test_stress_sign_must_be_plus_or_minus_one():
    with pytest.raises(ConfigError, match="stress_sign"):
        stress_to_ase(np.zeros(6), sign=2)


def test_virial_becomes_minus_virial_over_volume():
    virial = np.array([[3.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 9.0]])
    np.testing.assert_allclose(virial_to_stress(virial, 3.0), -virial / 3.0)
    np.testing.assert_allclose(virial_to_stress([3.0, 6.0, 9.0, 0, 0, 0], 3.0), -virial / 3.0)


def test_virial_without_volume_is_a_data_error():
    with pytest.raises(DataError, match="virial"):
        virial_to_stress(np.eye(3), 0.0, path="x.xyz", frame=2)
