"""A synthetic set of electronic states: the same geometries at total charges 0 / +1 and multiplicities 1 / 2.

Geometries are Cu-Au clusters of 6-9 atoms (a distorted 3x3x2 grid, 2.6 Å spacing, non-periodic) labelled
by ASE's EMT; each geometry appears once per state, with the state's energy

    E(state) = E_EMT + offset(state) + slope(state) * n_Au

(eV; ``STATE_ENERGIES`` holds ``(offset, slope)`` per ``(charge, multiplicity)``) and EMT's forces, so that a
model can tell the states apart only from ``atoms.info["charge"]`` and ``atoms.info["spin"]``. What the tests
and ``scripts/benchmark_charge_spin.py`` learn with ``model.charge_spin_embedding=true``.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

#: (total charge e, multiplicity) -> (energy offset eV, eV per Au atom) added to EMT's energy
STATE_ENERGIES = {(0, 1): (0.0, 0.0), (0, 2): (0.8, 0.05), (1, 1): (2.0, -0.1), (1, 2): (2.5, 0.1)}


def cluster_geometries(count: int, seed: int = 0) -> list[Atoms]:
    """``count`` random Cu-Au clusters (6-9 atoms, no periodicity), without labels."""
    rng = np.random.default_rng(seed)
    grid = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(2)], dtype=float)
    frames = []
    for _ in range(count):
        n = int(rng.integers(6, 10))
        positions = 2.6 * grid[:n] + rng.normal(0.0, 0.1, (n, 3))
        frames.append(Atoms(numbers=rng.choice([29, 79], size=n), positions=positions))
    return frames


def state_frames(geometries: list[Atoms], states=tuple(STATE_ENERGIES)) -> list[Atoms]:
    """Every geometry in every state of ``states`` (keys of :data:`STATE_ENERGIES`), labelled (energy, forces)
    and with ``info["charge"]``, ``info["spin"]`` and ``info["config_type"] = "q<charge>_m<multiplicity>"``."""
    frames = []
    for atoms in geometries:
        atoms = atoms.copy()
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        n_au = int((atoms.numbers == 79).sum())
        for charge, multiplicity in states:
            offset, slope = STATE_ENERGIES[(charge, multiplicity)]
            frame = atoms.copy()
            frame.info.update(charge=charge, spin=multiplicity, config_type=f"q{charge}_m{multiplicity}")
            frame.calc = SinglePointCalculator(frame, energy=energy + offset + slope * n_au, forces=forces.copy())
            frames.append(frame)
    return frames
