"""SchNet: builds in float32/float64, rebuilds from its config, and passes the quick physics checks."""

from __future__ import annotations

import copy

import physics
import pytest
import torch
from conftest import E0S, SPECIES, make_molecule, make_slab, make_triclinic_crystal

from mpnn_ip.models import build_model
from mpnn_ip.nn import GaussianBasis, cosine_cutoff

SMALL = dict(r_max=4.0, num_features=8, num_interactions=2, num_gaussians=8, num_filters=8)


def _model(**kwargs):
    torch.manual_seed(0)
    model = build_model("schnet", species=SPECIES, e0s=E0S, **{**SMALL, **kwargs}).to(torch.float64).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def test_config_rebuilds_same_model():
    model = _model()
    torch.manual_seed(0)
    rebuilt = type(model)(**model.config)
    assert rebuilt.config == model.config
    assert set(rebuilt.state_dict()) == set(model.state_dict())


@pytest.mark.parametrize("cutoff", ["cosine", "polynomial"])
def test_rotation_forces_stress_and_cutoff(cutoff):
    model = _model(cutoff=cutoff)
    for atoms in (make_molecule(), make_triclinic_crystal(), make_slab()):
        physics.check_rotation_equivariance(model, atoms)
        physics.check_forces_finite_differences(model, atoms)
    physics.check_stress_finite_differences(model, make_triclinic_crystal())
    physics.check_cutoff_smoothness(model, [("H", "O"), ("Cu", "Au")])


def test_isolated_atom_energy_is_e0_and_float32_agrees():
    torch.manual_seed(0)
    plain = build_model("schnet", species=SPECIES, e0s=E0S, **SMALL).to(torch.float64).eval()
    physics.check_isolated_atoms(plain, E0S)
    model = _model()

    physics.check_float32_matches_float64(model, copy.deepcopy(model).to(torch.float32), [make_molecule(), make_slab()])


def test_gaussian_basis_and_cosine_cutoff_values():
    lengths = torch.tensor([0.0, 2.0, 4.0, 5.0], dtype=torch.float64)
    basis = GaussianBasis(4.0, num_basis=5)(lengths)
    assert torch.allclose(basis[1, 2], torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(cosine_cutoff(lengths, 4.0), torch.tensor([1.0, 0.5, 0.0, 0.0], dtype=torch.float64))
