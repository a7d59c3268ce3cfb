"""The charged-cluster set (mpnn_ip.data.charged_clusters): labels are its reference potential's, the clusters
never come within r_max, their interaction is Coulomb's; and only a model with latent charges (LES) sees it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from physics import evaluate

from mpnn_ip.data.charged_clusters import (
    COULOMB_EV_ANGSTROM,
    charged_cluster_frames,
    cluster_interaction_curve,
    contact_distance,
    ionic_charges,
    reference_energy_and_forces,
)
from mpnn_ip.models.nequip import NequIP

R_MAX = 4.0


@pytest.fixture(scope="module")
def frames():
    return charged_cluster_frames(40, seed=5)


def test_frames_are_finite_neutral_and_labelled(frames):
    assert len(frames) == 40
    for atoms in frames:
        assert len(atoms) == 10 and not atoms.pbc.any()
        assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()
        assert ionic_charges(atoms).sum() == 0.0
        assert ionic_charges(atoms)[:5].sum() == 1.0
        np.testing.assert_allclose(atoms.info["dipole"], ionic_charges(atoms) @ atoms.positions, atol=1e-12)


def test_same_seed_gives_identical_frames(frames):
    again = charged_cluster_frames(40, seed=5)
    for a, b in zip(frames, again):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.get_potential_energy() == b.get_potential_energy()


def test_closest_intercluster_distance_exceeds_r_max(frames):
    for atoms in frames:
        closest = np.linalg.norm(atoms.positions[:5, None] - atoms.positions[None, 5:], axis=-1).min()
        assert closest > R_MAX
        assert closest == pytest.approx(atoms.info["closest_intercluster_distance"])
        assert 6.0 < atoms.info["cluster_distance"] < 15.0


def test_distances_too_short_for_r_max_are_refused():
    with pytest.raises(ValueError, match="raise the smallest distance"):
        charged_cluster_frames(2, distances=(3.0, 3.5))
    with pytest.raises(ValueError, match="give distances above"):
        cluster_interaction_curve([contact_distance() - 0.1])


def test_reference_forces_match_finite_differences(frames):
    atoms, step = frames[0], 1e-5
    symbols, positions = atoms.get_chemical_symbols(), atoms.positions
    numerical = np.zeros_like(positions)
    for i in range(len(atoms)):
        for k in range(3):
            shifted = [positions.copy(), positions.copy()]
            shifted[0][i, k] += step
            shifted[1][i, k] -= step
            plus, minus = (reference_energy_and_forces(symbols, p)[0] for p in shifted)
            numerical[i, k] = -(plus - minus) / (2 * step)
    np.testing.assert_allclose(atoms.get_forces(), numerical, atol=1e-6)


def test_interaction_energy_follows_coulomb_of_the_net_charges():
    """At centre distances d much larger than the clusters, E(d) - E(d_far) -> k_e Q_A Q_B (1/d - 1/d_far) with
    Q_A Q_B = -1 e²; about the centres of charge no dipole term is left, so the rest falls as 1/d³."""
    distances, far = np.array([300.0, 600.0]), 1e7
    energies = np.array([atoms.get_potential_energy() for atoms in cluster_interaction_curve([*distances, far])])
    coulomb = -COULOMB_EV_ANGSTROM * (1 / distances - 1 / far)
    np.testing.assert_allclose(energies[:2] - energies[2], coulomb, rtol=2e-4)


def _tiny_nequip(**kwargs) -> NequIP:
    torch.manual_seed(0)
    model = NequIP(species=["Na", "Cl"], r_max=R_MAX, num_layers=2, num_features=8, l_max=1, radial_mlp=[16], **kwargs)
    model = model.to(torch.float64).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # away from the initialisation, where the charge readout's last layer may be small
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
    return model


def test_only_a_les_model_feels_the_other_cluster_beyond_r_max():
    curve = cluster_interaction_curve(np.linspace(contact_distance() + 0.1, 20.0, 6))
    local = evaluate(_tiny_nequip(), curve, compute_stress=False)
    les_model = _tiny_nequip(long_range="les", long_range_options={"sigma": 1.0})
    with torch.no_grad():  # untrained charges nearly cancel within each cluster: make them clearly non-zero
        les_model.latent_ewald.charge_readout[-1].weight.mul_(10.0)
    les = evaluate(les_model, curve, compute_stress=False)
    assert float((local["energy"] - local["energy"][0]).abs().max()) < 1e-10
    assert float(np.ptp(les["energy"].numpy())) > 1e-4
    assert float(np.abs(np.diff(les["energy"].numpy())).min()) > 0
