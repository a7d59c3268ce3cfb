"""Verlet neighbour list (issue 10, item 2): edges equal a fresh search at every step, searches
happen only when an atom moved more than skin/2 or the cell changed, and MD with ``skin=1.0``
gives the same energies and forces as MD that searches at every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from tiny_checkpoint import build_tiny_model, tiny_checkpoint

from mpnn_ip.calculators import MPNNCalculator
from mpnn_ip.graph import radius_graph_pbc
from mpnn_ip.graph.verlet import VerletList


def _edge_set(edge_index: torch.Tensor, cell_shifts: torch.Tensor) -> set:
    return {(int(i), int(j), *map(int, s)) for (i, j), s in zip(edge_index.T.tolist(), cell_shifts.tolist())}


def _frame(pbc: bool, seed: int):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=seed)
    if not pbc:
        atoms.pbc = False
        atoms.center(vacuum=4.0)
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell.array).unsqueeze(0)
    return pos, cell, torch.tensor([atoms.pbc.tolist()]), torch.zeros(len(atoms), dtype=torch.long)


@pytest.mark.parametrize("pbc", [True, False])
def test_edges_equal_a_fresh_search_along_a_random_walk(pbc):
    pos, cell, periodic, batch = _frame(pbc, seed=1)
    verlet = VerletList(r_max=3.0, skin=0.6)
    rng = np.random.default_rng(0)
    for _ in range(40):
        pos = pos + torch.tensor(rng.normal(scale=0.03, size=pos.shape))  # ~0.05 Å per step per atom
        expected = _edge_set(*radius_graph_pbc(pos, cell, periodic, batch, 3.0))
        assert _edge_set(*verlet.edges(pos, cell, periodic, batch)) == expected
    assert 1 < verlet.builds < verlet.calls == 40


def test_searches_again_when_an_atom_moved_past_half_the_skin_or_the_cell_changed():
    pos, cell, periodic, batch = _frame(True, seed=2)
    verlet = VerletList(r_max=3.0, skin=1.0)
    verlet.edges(pos, cell, periodic, batch)
    moved = pos.clone()
    moved[5, 0] += 0.49
    verlet.edges(moved, cell, periodic, batch)
    assert verlet.builds == 1
    moved[5, 0] += 0.02
    verlet.edges(moved, cell, periodic, batch)
    assert verlet.builds == 2
    verlet.edges(moved, cell * 1.001, periodic, batch)
    assert verlet.builds == 3
    assert (
        VerletList(3.0, skin=0.0).edges(pos, cell, periodic, batch)[0].shape
        == radius_graph_pbc(pos, cell, periodic, batch, 3.0)[0].shape
    )


def test_negative_skin_is_refused():
    with pytest.raises(ValueError, match="skin"):
        VerletList(3.0, skin=-1.0)


def test_md_with_a_skin_equals_md_that_searches_every_step():
    """NVE, 108 Cu-Au atoms, float64: energies and forces of a skin=1.0 calculator along the
    trajectory equal those of a skin=0 calculator evaluated on the same positions."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(3)
    atoms.numbers[::3] = 79
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    model = build_tiny_model(species=["Cu", "Au"]).double()
    atoms.calc = MPNNCalculator(model, skin=1.0)
    reference = MPNNCalculator(model, skin=0.0)
    dyn = VelocityVerlet(atoms, timestep=2.0 * units.fs)
    worst = 0.0
    for _ in range(60):
        dyn.run(1)
        probe = atoms.copy()
        probe.calc = reference
        assert atoms.get_potential_energy() == pytest.approx(probe.get_potential_energy(), abs=1e-10)
        worst = max(worst, float(np.abs(atoms.get_forces() - probe.get_forces()).max()))
    assert worst < 1e-10
    skinned = atoms.calc.neighbor_list
    assert skinned.calls >= 60 and skinned.builds < skinned.calls / 2
    assert reference.neighbor_list.builds == reference.neighbor_list.calls


def test_from_checkpoint_passes_the_skin(tmp_path):
    calc = MPNNCalculator.from_checkpoint(tiny_checkpoint(tmp_path / "tiny.ckpt"), skin=0.5)
    assert calc.neighbor_list.skin == 0.5 and calc.neighbor_list.r_max == calc.model.r_max


def test_collapsed_atoms_during_dynamics_are_a_data_error_naming_the_pair():
    """After the first call only positions change: the closest pair is checked from the edges."""
    from mpnn_ip.errors import DataError

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.calc = MPNNCalculator(build_tiny_model(species=["Cu"]).double(), skin=0.5)
    atoms.get_forces()
    positions = atoms.positions.copy()
    positions[3] = positions[7] + [0.05, 0.0, 0.0]
    atoms.positions = positions
    with pytest.raises(DataError, match="atoms (3 and 7|7 and 3) are 0.0500 Å apart"):
        atoms.get_forces()
    positions[3, 0] = np.nan
    atoms.positions = positions
    with pytest.raises(DataError, match="NaN"):
        atoms.get_forces()
