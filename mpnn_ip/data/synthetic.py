"""The embedded default dataset: Cu-Au fcc alloys labelled by ASE's EMT potential.

Made on the user's machine (nothing is downloaded) in well under a minute on one core, written
once to a cache folder as extxyz and reused. Labels: energy (eV), forces (eV/Å), stress (eV/Å³,
ASE sign: positive = tensile). Frames (``config_type`` in info):

* ``rattled``: random occupation of a 2×2×2 cubic fcc cell (32 atoms) at Au fractions
  0, 0.25, 0.5, 0.75, 1 with Vegard's-law lattice constant, Gaussian displacements 0.03-0.15 Å;
* ``strained``: isotropic (±5 %) and shear (±3 %) strain, small displacements;
* ``vacancy``: one or two atoms removed, displaced;
* ``md_300K``, ``md_600K``, ``md_1200K``: snapshots of short Langevin runs.

Changing the recipe must bump :data:`RECIPE_VERSION` so that cached files are regenerated.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

#: Bump whenever :func:`make_dataset` would produce different frames.
RECIPE_VERSION = 1
DEFAULT_NUM_FRAMES = 300
DEFAULT_SEED = 0
#: Room-temperature lattice constants (Å) of fcc Cu and Au.
LATTICE_CONSTANT = {"Cu": 3.61, "Au": 4.08}
AU_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
MD_TEMPERATURES_K = (300, 600, 1200)
#: Langevin steps (4 fs each) before the first snapshot and between snapshots.
MD_EQUILIBRATION_STEPS = 16
MD_STEPS_BETWEEN_SNAPSHOTS = 6
#: Share of each frame kind; molecular dynamics takes the remainder.
SHARES = {"rattled": 0.25, "strained": 0.2, "vacancy": 0.1}


def cache_directory(cache_dir=None) -> Path:
    """``cache_dir``, else ``$MPNN_IP_CACHE``, else ``~/.cache/mpnn_ip``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("MPNN_IP_CACHE") or Path.home() / ".cache" / "mpnn_ip")


def default_dataset_path(cache_dir=None) -> Path:
    """Path of the default synthetic dataset (extxyz), generated on first use.

    The file name carries the recipe version, frame count and seed, so a changed recipe is
    regenerated. It is written to a temporary file in the same folder and renamed, so an
    interrupted run never leaves a partial file behind.
    """
    folder = cache_directory(cache_dir)
    path = folder / f"cu_au_emt_v{RECIPE_VERSION}_{DEFAULT_NUM_FRAMES}frames_seed{DEFAULT_SEED}.extxyz"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    frames = make_dataset(DEFAULT_NUM_FRAMES, seed=DEFAULT_SEED)
    handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=path.name + ".", suffix=".tmp")
    os.close(handle)
    try:
        ase.io.write(tmp_name, frames, format="extxyz")
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
    return path


def make_dataset(num_frames: int = DEFAULT_NUM_FRAMES, seed: int = DEFAULT_SEED) -> list[Atoms]:
    """Deterministic list of ``num_frames`` labelled Cu-Au frames (EMT); same seed, same arrays.

    Each frame carries a ``SinglePointCalculator`` with energy (eV), forces (eV/Å) and stress
    (eV/Å³, Voigt, ASE sign) and ``info["config_type"]``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng(seed)
    counts = {kind: int(share * num_frames) for kind, share in SHARES.items()}
    num_md = num_frames - sum(counts.values())
    frames = []
    for k in range(counts["rattled"]):
        atoms = _random_alloy(AU_FRACTIONS[k % len(AU_FRACTIONS)], rng)
        frames.append(_label(_displace(atoms, rng.uniform(0.03, 0.15), rng), "rattled"))
    for k in range(counts["strained"]):
        atoms = _strain(_random_alloy(AU_FRACTIONS[k % len(AU_FRACTIONS)], rng), rng)
        frames.append(_label(_displace(atoms, 0.03, rng), "strained"))
    for k in range(counts["vacancy"]):
        atoms = _random_alloy(AU_FRACTIONS[k % len(AU_FRACTIONS)], rng)
        del atoms[rng.choice(len(atoms), size=1 + k % 2, replace=False).tolist()]
        frames.append(_label(_displace(atoms, 0.06, rng), "vacancy"))
    frames.extend(_md_snapshots(num_md, rng))
    return frames


def _random_alloy(au_fraction: float, rng: np.random.Generator) -> Atoms:
    """2×2×2 cubic fcc cell (32 atoms), Au on a random ``au_fraction`` of sites, Vegard lattice constant."""
    a = (1 - au_fraction) * LATTICE_CONSTANT["Cu"] + au_fraction * LATTICE_CONSTANT["Au"]
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2))
    symbols = np.array(["Cu"] * len(atoms), dtype=object)
    symbols[rng.permutation(len(atoms))[: int(round(au_fraction * len(atoms)))]] = "Au"
    atoms.set_chemical_symbols(symbols.tolist())
    return atoms


def _displace(atoms: Atoms, stdev: float, rng: np.random.Generator) -> Atoms:
    atoms.positions += rng.normal(0.0, stdev, size=atoms.positions.shape)
    return atoms


def _strain(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    """Deform the cell (atoms follow) by ``I + ε``: isotropic part within ±5 %, symmetric shear within ±3 %."""
    shear = rng.uniform(-0.03, 0.03, size=(3, 3))
    strain = np.eye(3) * rng.uniform(-0.05, 0.05) + np.triu(shear, 1) + np.triu(shear, 1).T
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
    return atoms


def _md_snapshots(count: int, rng: np.random.Generator) -> list[Atoms]:
    """``count`` snapshots from Langevin runs at each temperature, two compositions per temperature."""
    runs = [(t, x) for t in MD_TEMPERATURES_K for x in (0.25, 0.75)]
    per_run = [count // len(runs) + (1 if r < count % len(runs) else 0) for r in range(len(runs))]
    frames = []
    for (temperature, au_fraction), n in zip(runs, per_run):
        if n == 0:
            continue
        atoms = _random_alloy(au_fraction, rng)
        atoms.calc = EMT()
        MaxwellBoltzmannDistribution(atoms, temperature_K=2 * temperature, rng=rng)
        dynamics = Langevin(
            atoms, 4 * units.fs, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False, rng=rng
        )
        dynamics.run(MD_EQUILIBRATION_STEPS)
        for _ in range(n):
            dynamics.run(MD_STEPS_BETWEEN_SNAPSHOTS)
            snapshot = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            frames.append(_label(snapshot, f"md_{temperature}K"))
    return frames


def _label(atoms: Atoms, config_type: str) -> Atoms:
    """Attach EMT energy, forces and stress as a ``SinglePointCalculator``."""
    atoms.wrap()
    atoms.calc = EMT()
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress(voigt=True)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
    atoms.info["config_type"] = config_type
    return atoms
