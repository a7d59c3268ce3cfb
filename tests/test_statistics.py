"""Training-set statistics against hand-computed small cases."""

import numpy as np
import pytest
import torch
from ase import Atoms

from mpnn_ip.data import AtomicGraph, compute_statistics
from mpnn_ip.errors import DataError


def _molecule(symbols, energy=None, forces=None):
    positions = [[1.5 * k, 0.0, 0.0] for k in range(len(symbols))]
    return AtomicGraph.from_atoms(Atoms(symbols, positions=positions), energy=energy, forces=forces)


def _is_plain(value):
    if isinstance(value, dict):
        return all(isinstance(k, (int, str)) and _is_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_plain(v) for v in value)
    return type(value) in (int, float, str, bool)


def test_e0s_are_the_least_squares_solution_of_energies_on_counts():
    e0 = {1: -13.6, 8: -2041.0}
    frames = [("HHO", 0.0), ("HO", 0.0), ("OO", 0.0), ("H", 0.0)]
    graphs = [_molecule(s, energy=sum(e0[{"H": 1, "O": 8}[c]] for c in s)) for s, _ in frames]
    stats = compute_statistics(graphs, r_max=2.0)
    assert stats["species"] == [1, 8] and stats["e0s_source"] == "least_squares"
    assert stats["e0s"] == pytest.approx(e0)
    assert stats["energy_per_atom_rms_after_e0"] == pytest.approx(0.0, abs=1e-9)
    assert _is_plain(stats)


def test_rank_deficient_composition_takes_the_minimum_norm_solution():
    graphs = [_molecule("HO", energy=-4.0), _molecule("OH", energy=-4.0)]
    assert compute_statistics(graphs, r_max=2.0)["e0s"] == pytest.approx({1: -2.0, 8: -2.0})


def test_isolated_atom_energies_override_the_fit_and_set_the_residual():
    graphs = [_molecule("HH", energy=-3.0), _molecule("HHHH", energy=-3.0)]
    stats = compute_statistics(graphs, r_max=2.0, isolated_atom_energies={1: -1.0})
    assert stats["e0s"] == {1: -1.0} and stats["e0s_source"] == "isolated_atoms"
    residuals = np.array([(-3.0 + 2.0) / 2, (-3.0 + 4.0) / 4])
    assert stats["energy_per_atom_rms_after_e0"] == pytest.approx(np.sqrt(np.mean(residuals**2)))
    assert stats["energy_per_atom_mean_after_e0"] == pytest.approx(residuals.mean())


def test_missing_isolated_atom_energy_names_the_species():
    with pytest.raises(DataError, match=r"\[8\]"):
        compute_statistics([_molecule("HO", energy=-1.0)], r_max=2.0, isolated_atom_energies={1: -1.0})


def test_force_rms_is_over_all_components_of_frames_with_forces():
    graphs = [
        _molecule("H", energy=-1.0, forces=[[1.0, 2.0, 2.0]]),
        _molecule("H", energy=-1.0, forces=[[0.0, 0.0, 0.0]]),
        _molecule("H", energy=-1.0),
    ]
    stats = compute_statistics(graphs, r_max=2.0)
    assert stats["force_rms"] == pytest.approx(np.sqrt(9.0 / 6.0))
    assert stats["num_frames_with_forces"] == 2 and stats["force_rms_source"] == "data"


def test_force_rms_falls_back_to_one_with_a_reason_when_no_forces():
    stats = compute_statistics([_molecule("H", energy=-1.0)], r_max=2.0)
    assert stats["force_rms"] == 1.0 and "no frame" in stats["force_rms_source"]


def test_average_neighbour_count_of_a_chain_and_a_periodic_lattice():
    chain = AtomicGraph.from_atoms(Atoms("H3", positions=[[0, 0, 0], [1.0, 0, 0], [2.5, 0, 0]]), energy=0.0)
    assert compute_statistics([chain], r_max=2.0)["avg_num_neighbors"] == pytest.approx(4 / 3)
    simple_cubic = AtomicGraph.from_atoms(Atoms("Cu", cell=np.eye(3), pbc=True), energy=0.0)
    assert compute_statistics([simple_cubic], r_max=1.1)["avg_num_neighbors"] == pytest.approx(6.0)
    assert compute_statistics([simple_cubic], r_max=1.5)["avg_num_neighbors"] == pytest.approx(18.0)
    both = compute_statistics([chain, simple_cubic], r_max=1.1)
    assert both["avg_num_neighbors"] == pytest.approx((2 + 6) / 4)
    assert both["num_frames"] == 2 and both["num_atoms"] == 4 and both["r_max"] == 1.1


def test_empty_training_set_is_an_error():
    with pytest.raises(DataError, match="empty"):
        compute_statistics([], r_max=2.0)


def test_frames_without_energy_do_not_enter_the_e0_fit():
    graphs = [_molecule("HH", energy=-2.0), _molecule("HHH", forces=torch.zeros(3, 3).numpy())]
    stats = compute_statistics(graphs, r_max=2.0)
    assert stats["e0s"] == pytest.approx({1: -1.0}) and stats["num_frames_with_energy"] == 1


def test_configured_species_absent_from_training_get_zero_or_isolated_e0():
    graphs = [_molecule("HH", energy=-2.0), _molecule("H", energy=-1.0)]
    fitted = compute_statistics(graphs, r_max=2.0, species=[1, 8])
    assert fitted["species"] == [1, 8] and fitted["e0s"] == pytest.approx({1: -1.0, 8: 0.0})
    given = compute_statistics(graphs, r_max=2.0, isolated_atom_energies={1: -0.5, 8: -7.0}, species=[8])
    assert given["e0s"] == {1: -0.5, 8: -7.0}
