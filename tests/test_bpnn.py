"""BPNN: symmetry functions against a direct numpy implementation, standardisation, quick physics checks."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import physics
import torch
from conftest import E0S, SPECIES, make_molecule, make_slab, make_triclinic_crystal

from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs
from mpnn_ip.models import build_model

SMALL = dict(
    r_max=4.0, radial_shifts=[1.0, 2.0, 3.0], radial_etas=[1.5], angular_etas=[0.05, 0.2], zetas=[1, 2], hidden=[8]
)


def _fc(r, rc):
    return np.where(r < rc, 0.5 * (np.cos(np.pi * r / rc) + 1), 0.0)


def _numpy_symmetry_functions(atoms, species, model):
    """Direct double/triple loops over atoms of a molecule (no periodicity), same feature order as the model."""
    cfg, rc = model.config, model.r_max
    index = [species.index(z) for z in atoms.numbers]
    S, pos = len(species), atoms.positions
    pairs = list(itertools.combinations_with_replacement(range(S), 2))
    radial = list(itertools.product(cfg["radial_etas"], cfg["radial_shifts"]))
    angular = list(itertools.product(cfg["angular_etas"], cfg["zetas"], cfg["lambdas"]))
    out = []
    for i in range(len(atoms)):
        g2 = np.zeros((S, len(radial)))
        g4 = np.zeros((len(pairs), len(angular)))
        for j in range(len(atoms)):
            rij = np.linalg.norm(pos[j] - pos[i])
            if j == i or rij >= rc:
                continue
            for f, (eta, shift) in enumerate(radial):
                g2[index[j], f] += np.exp(-eta * (rij - shift) ** 2) * _fc(rij, rc)
            for k in range(j + 1, len(atoms)):
                rik, rjk = np.linalg.norm(pos[k] - pos[i]), np.linalg.norm(pos[k] - pos[j])
                if k == i or rik >= rc:
                    continue
                cos = np.dot(pos[j] - pos[i], pos[k] - pos[i]) / (rij * rik)
                channel = pairs.index(tuple(sorted((index[j], index[k]))))
                for f, (eta, zeta, lam) in enumerate(angular):
                    g4[channel, f] += (
                        2 ** (1 - zeta)
                        * (1 + lam * cos) ** zeta
                        * np.exp(-eta * (rij**2 + rik**2 + rjk**2))
                        * _fc(rij, rc)
                        * _fc(rik, rc)
                        * _fc(rjk, rc)
                    )
        out.append(np.concatenate([g2.ravel(), g4.ravel()]))
    return np.array(out)


def _model(**kwargs):
    torch.manual_seed(0)
    return build_model("bpnn", species=SPECIES, e0s=E0S, **{**SMALL, **kwargs}).to(torch.float64).eval()


def test_symmetry_functions_match_numpy():
    model = _model()
    atoms = make_molecule()
    inputs = to_inputs(AtomicGraph.from_atoms(atoms))
    from mpnn_ip.graph import edge_vectors, radius_graph_pbc

    edge_index, shifts = radius_graph_pbc(inputs["pos"], inputs["cell"], inputs["pbc"], inputs["batch"], model.r_max)
    vectors = edge_vectors(inputs["pos"], inputs["cell"], edge_index, shifts, inputs["batch"])
    features = model.symmetry_functions(model.species_index(inputs["atomic_numbers"]), edge_index, vectors)
    expected = _numpy_symmetry_functions(atoms, model.species, model)
    assert np.allclose(features.detach().numpy(), expected, atol=1e-12, rtol=1e-10)


def test_standardisation_from_data():
    model = _model()
    graphs = [AtomicGraph.from_atoms(a) for a in (make_molecule(), make_slab(), make_triclinic_crystal())]
    model.prepare(graphs)
    batch = to_inputs(collate(graphs))
    from mpnn_ip.graph import edge_vectors, radius_graph_pbc

    edge_index, shifts = radius_graph_pbc(batch["pos"], batch["cell"], batch["pbc"], batch["batch"], model.r_max)
    vectors = edge_vectors(batch["pos"], batch["cell"], edge_index, shifts, batch["batch"])
    species = model.species_index(batch["atomic_numbers"])
    features = model.symmetry_functions(species, edge_index, vectors)
    hydrogen = features[species == 0]
    assert torch.allclose(model.feature_mean[0], hydrogen.mean(0))
    varying = hydrogen.std(0, unbiased=False) > 1e-6
    assert torch.allclose(model.feature_std[0][varying], hydrogen.std(0, unbiased=False)[varying])
    rebuilt = type(model)(**model.config).to(torch.float64)
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.feature_std, model.feature_std)


def test_config_rebuilds_and_quick_physics():
    for angular in ("g4", "g5"):
        model = _model(angular=angular)
        model.prepare([AtomicGraph.from_atoms(a) for a in (make_molecule(), make_slab())])
        assert type(model)(**model.config).config == model.config
        for atoms in (make_molecule(), make_triclinic_crystal(), make_slab()):
            physics.check_rotation_equivariance(model, atoms)
            physics.check_forces_finite_differences(model, atoms)
        physics.check_stress_finite_differences(model, make_triclinic_crystal())
        physics.check_cutoff_smoothness(model, [("H", "O"), ("Cu", "Au")])
        physics.check_isolated_atoms(_model(), E0S)
        physics.check_float32_matches_float64(
            model, copy.deepcopy(model).to(torch.float32), [make_molecule(), make_slab()]
        )
