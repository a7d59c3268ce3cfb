"""Per-species energy shifts from the training data: models start with their energies right on average.

The statistic ``energy_shifts`` (eV per atom left after E0, per species) is every model YAML's
default ``energy_shift``; the shift is gated by neighbours, so a lone atom keeps exactly E0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT

from mpnn_ip.cli.hydra_app import compose_config
from mpnn_ip.data import AtomicGraph, collate, compute_statistics
from mpnn_ip.data.synthetic import make_dataset
from mpnn_ip.train.builders import build_model, model_arguments

MODELS_WITH_A_SHIFT = ("nequip_tiny", "mace_tiny", "schnet_tiny", "bpnn_tiny")


def _model_config(preset, *overrides):
    return compose_config("train", ["output_dir=.", f"model={preset}", *overrides]).model


def _molecule(symbols, energy):
    positions = [[1.2 * k, 0.0, 0.0] for k in range(len(symbols))]
    return AtomicGraph.from_atoms(Atoms(symbols, positions=positions), energy=energy)


def test_one_composition_gets_its_mean_energy_per_atom_after_e0_for_every_species():
    graphs = [_molecule("HHO", -10.0), _molecule("HOH", -11.0)]
    stats = compute_statistics(graphs, r_max=2.0, isolated_atom_energies={1: -1.0, 8: -5.0})
    mean = np.mean([(-10.0 + 7.0) / 3, (-11.0 + 7.0) / 3])
    assert stats["energy_shifts"] == pytest.approx({1: mean, 8: mean})


def test_compositions_that_tell_species_apart_recover_their_shifts():
    shift = {1: -0.5, 8: -2.0}
    e0 = {1: -1.0, 8: -5.0}
    frames = ["HHO", "HO", "HHHO", "HOO"]
    graphs = [_molecule(s, sum(e0[z] + shift[z] for z in Atoms(s).numbers)) for s in frames]
    stats = compute_statistics(graphs, r_max=2.0, isolated_atom_energies=e0)
    assert stats["energy_shifts"] == pytest.approx(shift, abs=1e-10)


def test_shifts_are_near_zero_when_e0s_are_the_least_squares_fit():
    graphs = [_molecule("HHO", -10.0), _molecule("HO", -7.02), _molecule("HHHO", -12.99)]
    stats = compute_statistics(graphs, r_max=2.0)
    assert max(abs(v) for v in stats["energy_shifts"].values()) < 0.05


def _cu_au_training_set():
    """Cu-Au EMT frames and the EMT energies of lone Cu and Au atoms (EMT's zero is the bulk, so the
    energy left after these E0s is a binding energy of about -3.5 eV/atom, learned from zero without a shift)."""
    graphs = [AtomicGraph.from_atoms(atoms, energy=atoms.get_potential_energy()) for atoms in make_dataset(12, seed=3)]
    isolated = {}
    for z in (29, 79):
        atom = Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]])
        atom.calc = EMT()
        isolated[z] = float(atom.get_potential_energy())
    return graphs, isolated


@pytest.mark.parametrize("preset", MODELS_WITH_A_SHIFT)
def test_a_fresh_model_starts_with_mean_energy_error_near_zero_on_its_training_data(preset):
    graphs, isolated = _cu_au_training_set()
    model_cfg = _model_config(preset)
    stats = compute_statistics(graphs, float(model_cfg.r_max), isolated)
    assert stats["energy_per_atom_mean_after_e0"] < -1.0  # the offset a model would learn from zero

    def mean_error_per_atom(model):
        torch.manual_seed(0)
        model.prepare(graphs)
        batch = collate(graphs)
        with torch.no_grad():
            energy = model(batch, compute_forces=False)["energy"].double()
        atoms = torch.bincount(batch.batch).double()
        return float(((energy - batch.energy) / atoms).mean())

    torch.manual_seed(0)
    shifted = mean_error_per_atom(build_model(model_cfg, stats, "float64"))
    torch.manual_seed(0)
    unshifted = mean_error_per_atom(build_model(_model_config(preset, "model.energy_shift=0.0"), stats, "float64"))
    assert abs(unshifted) > 1.0
    assert abs(shifted) < 0.05 * abs(unshifted)


@pytest.mark.parametrize("preset", MODELS_WITH_A_SHIFT)
def test_the_default_shift_is_the_energy_shifts_statistic(preset):
    stats = {
        "species": [29, 79],
        "e0s": {29: -3.5, 79: -3.0},
        "avg_num_neighbors": 12.0,
        "force_rms": 0.5,
        "energy_shifts": {29: -0.25, 79: -0.75},
    }
    _cls, kwargs = model_arguments(_model_config(preset), stats)
    assert kwargs["energy_shift"] == {29: -0.25, 79: -0.75}


def test_statistics_of_old_checkpoints_give_no_shift():
    stats = {"species": [29, 79], "e0s": {29: -3.5, 79: -3.0}, "avg_num_neighbors": 12.0, "force_rms": 0.5}
    _cls, kwargs = model_arguments(_model_config("nequip_tiny"), stats)
    assert kwargs["energy_shift"] == {29: 0.0, 79: 0.0}


@pytest.mark.parametrize("preset", MODELS_WITH_A_SHIFT)
def test_a_lone_atom_keeps_exactly_e0_and_a_dimer_gets_the_shift(preset):
    stats = {
        "species": [29, 79],
        "e0s": {29: -3.5, 79: -3.0},
        "avg_num_neighbors": 12.0,
        "force_rms": 0.5,
        "energy_shifts": {29: -2.0, 79: -3.0},
    }
    torch.manual_seed(0)
    model = build_model(_model_config(preset), stats, "float64").eval()
    lone = model(AtomicGraph.from_atoms(Atoms("Au", positions=[[0.0, 0.0, 0.0]])), compute_forces=False)["energy"]
    assert lone.item() == -3.0
    zero = build_model(_model_config(preset, "model.energy_shift=0.0"), stats, "float64")
    zero.load_state_dict({k: v for k, v in model.state_dict().items() if "scale_shift.shift" not in k}, strict=False)
    dimer = AtomicGraph.from_atoms(Atoms("CuAu", positions=[[0.0, 0.0, 0.0], [2.5, 0.0, 0.0]]))
    difference = model(dimer, compute_forces=False)["energy"] - zero.eval()(dimer, compute_forces=False)["energy"]
    torch.testing.assert_close(difference, torch.tensor([-5.0], dtype=torch.float64))
