"""Shared fixtures: small structures every physics test uses (species H, C, O, Cu, Au).

Structures are rattled with a fixed seed, so no symmetry makes a quantity vanish by accident,
and carry ``atoms.info["name"]`` so that failures name them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
# as our command-line tools and calculators do (mpnn_ip.cpu_allocator): faster model calls on CPU
from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap  # noqa: E402

keep_tensor_buffers_in_heap()
# The test helper modules (physics.py, reference_potentials.py) import as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Species every test model is built for.
SPECIES = ["H", "C", "O", "Cu", "Au"]
#: Isolated-atom energies (eV) given to models in the E0 tests.
E0S = {"H": -1.1, "C": -8.2, "O": -4.9, "Cu": -3.7, "Au": -3.2}


def make_molecule():
    """Methanol CH3OH (6 atoms), rattled; no periodicity."""
    from ase.build import molecule

    atoms = molecule("CH3OH")
    atoms.rattle(stdev=0.03, seed=1)
    atoms.info["name"] = "methanol molecule"
    return atoms


def make_triclinic_crystal():
    """4-atom CuAu fcc-like crystal in a skewed (triclinic) cell, rattled; periodic in x, y, z."""
    from ase import Atoms

    cell = 3.8 * np.array([[1.0, 0.05, 0.08], [0.12, 0.97, 0.04], [0.07, -0.1, 1.04]])
    fractional = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    atoms = Atoms("CuAuCuAu", scaled_positions=fractional, cell=cell, pbc=True)
    atoms.rattle(stdev=0.08, seed=2)
    atoms.info["name"] = "triclinic CuAu crystal"
    return atoms


def make_slab():
    """Cu(111) 2x2x2 slab with one Au and an H adatom (9 atoms), rattled; periodic in x, y only."""
    from ase.build import add_adsorbate, fcc111

    atoms = fcc111("Cu", size=(2, 2, 2), a=3.6, vacuum=5.0)
    atoms.symbols[0] = "Au"
    add_adsorbate(atoms, "H", 1.2, "fcc")
    atoms.rattle(stdev=0.05, seed=3)
    atoms.pbc = (True, True, False)
    atoms.info["name"] = "Cu(111) slab with H"
    return atoms


def make_small_cell():
    """2 atoms (Cu, Au) in a triclinic cell whose lattice vectors (≈2.5 Å) are shorter than r_max: many images."""
    from ase import Atoms

    cell = np.array([[2.5, 0.0, 0.0], [0.6, 2.45, 0.0], [0.4, 0.5, 2.6]])
    atoms = Atoms("CuAu", scaled_positions=[[0.0, 0.0, 0.0], [0.52, 0.47, 0.55]], cell=cell, pbc=True)
    atoms.info["name"] = "2-atom cell smaller than r_max"
    return atoms


def make_water():
    """A rattled water molecule (3 atoms); no periodicity."""
    from ase.build import molecule

    atoms = molecule("H2O")
    atoms.rattle(stdev=0.03, seed=4)
    atoms.info["name"] = "water molecule"
    return atoms


@pytest.fixture
def molecule():
    return make_molecule()


@pytest.fixture
def water():
    return make_water()


@pytest.fixture
def triclinic_crystal():
    return make_triclinic_crystal()


@pytest.fixture
def slab():
    return make_slab()


@pytest.fixture
def small_cell():
    return make_small_cell()


@pytest.fixture
def periodic_structures():
    """Structures with at least one periodic direction."""
    return [make_triclinic_crystal(), make_slab(), make_small_cell()]


@pytest.fixture
def all_structures():
    """Molecule, triclinic crystal, slab and the small cell."""
    return [make_molecule(), make_triclinic_crystal(), make_slab(), make_small_cell()]


@pytest.fixture
def mixed_batch():
    """Frames of every periodicity for one batch: molecule, triclinic crystal, slab, small cell."""
    return [make_molecule(), make_triclinic_crystal(), make_slab(), make_small_cell()]
