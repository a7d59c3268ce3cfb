"""Stable dynamics: NVE with the trained quickstart potential conserves energy, and ``mpnn-md`` stops
(keeping what it wrote) when two atoms come too close or the energy jumps.

The potential is ``tests/data/quickstart_nequip_tiny.ckpt``: the best checkpoint of
``mpnn-train experiment=quickstart`` (nequip_tiny, 5.6k parameters, 20 epochs on the embedded Cu-Au EMT
data, seed 0; test force MAE 0.020 eV/Å), reduced to its weights and ``mpnn_ip`` metadata.
(``checkpoint_v1_nequip.ckpt`` is no potential to run MD with: 4 optimizer steps of a 600-parameter
model; at 300 K two of its atoms walk through each other, 0.5 Å apart after 390 fs.)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from mpnn_ip.errors import DataError, MDStopped
from mpnn_ip.md import StopConditions, run_md

REPO = Path(__file__).resolve().parents[1]
QUICKSTART_CHECKPOINT = REPO / "tests" / "data" / "quickstart_nequip_tiny.ckpt"


def cu_au_supercell(seed: int = 0) -> Atoms:
    """3×3×3 conventional fcc cells (108 atoms), Au on a random half of the sites, Vegard lattice constant
    (the recipe of the embedded training data, mpnn_ip.data.synthetic)."""
    from mpnn_ip.data.synthetic import LATTICE_CONSTANT

    a = 0.5 * (LATTICE_CONSTANT["Cu"] + LATTICE_CONSTANT["Au"])
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((3, 3, 3))
    atoms.numbers[np.random.default_rng(seed).permutation(len(atoms))[: len(atoms) // 2]] = 79
    return atoms


@pytest.fixture
def one_torch_thread():
    """108 atoms are too few for intra-op threads to pay: on 2 shared cores they made a step ~7x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_nve_with_quickstart_potential_conserves_total_energy_within_1_mev_per_atom(tmp_path, one_torch_thread):
    """108 atoms, 300 K, 1 fs, 2,000 steps (2 ps), float64, through run_md with the default stop checks
    and mpnn-md's default Verlet skin (1 Å: the graph is reused between searches)."""
    from mpnn_ip.calculators import MPNNCalculator
    from mpnn_ip.checkpoint import load_model

    atoms = cu_au_supercell()
    calculator = MPNNCalculator(load_model(QUICKSTART_CHECKPOINT, dtype="float64"), skin=1.0)
    start = time.perf_counter()
    summary = run_md(
        atoms,
        calculator,
        ensemble="nve",
        temperature=300.0,
        timestep=1.0,
        steps=2000,
        seed=0,
        log_interval=10,
        out_dir=tmp_path,
    )
    seconds = time.perf_counter() - start

    assert summary["stopped"] is None and len(atoms) >= 108
    assert summary["graph_rebuild_fraction"] < 0.2
    assert 0 < summary["wall_time_s"] <= seconds and summary["steps_per_second"] == pytest.approx(
        2000 / summary["wall_time_s"]
    )
    log = np.asarray(summary["log_rows"])
    assert log.shape == (201, 5) and log[-1, 0] == pytest.approx(2000.0)
    total_per_atom = log[:, 3] / len(atoms)
    max_deviation = float(np.max(np.abs(total_per_atom - total_per_atom[0])))
    drift = summary["energy_drift_ev_per_atom_per_ps"]
    report = (
        f"max |Etot(t) - Etot(0)| = {max_deviation * 1e3:.2e} meV/atom, linear-fit drift = "
        f"{drift * 1e3:.2e} meV/atom/ps, mean T = {summary['mean_temperature_K']:.0f} K, {seconds:.0f} s"
    )
    print(report)
    assert max_deviation < 1e-3, report  # the bound
    assert abs(drift) * 2.0 < 1e-6, report  # drift over the 2 ps below 0.001 meV/atom, as measured when it was set
    assert 100.0 < summary["mean_temperature_K"] < 300.0, report  # energy equipartitioned, not frozen or heating


class _Spring(Calculator):
    """Atoms 0 and 1 joined by a stiff harmonic spring of rest length 0 (energy k d²/2): they collapse."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, stiffness: float):
        super().__init__()
        self.stiffness = stiffness

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        bond = self.atoms.positions[1] - self.atoms.positions[0]
        forces = np.zeros((len(self.atoms), 3))
        forces[0], forces[1] = self.stiffness * bond, -self.stiffness * bond
        self.results = {"energy": 0.5 * self.stiffness * bond @ bond, "forces": forces}


class _EnergyStep(Calculator):
    """EMT, plus ``jump`` eV per atom from the ``at_step``-th evaluation on (one evaluation per MD step)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, at_step: int, jump: float):
        super().__init__()
        self.at_step, self.jump, self.evaluations = at_step, jump, 0
        self.emt = EMT()

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy, forces = self.emt.get_potential_energy(self.atoms), self.emt.get_forces(self.atoms)
        if self.evaluations >= self.at_step:
            energy += self.jump * len(self.atoms)
        self.evaluations += 1
        self.results = {"energy": energy, "forces": forces}


def collapsing_dimer() -> tuple[Atoms, _Spring]:
    """Two Cu atoms 2.5 Å apart at rest, pulled together in ~40 fs (a quarter period of the spring)."""
    atoms = Atoms("Cu2", positions=[[0.0, 0.0, 0.0], [2.5, 0.0, 0.0]])
    reduced_mass = atoms.get_masses()[0] / 2
    omega = 2 * np.pi / (160 * units.fs)
    return atoms, _Spring(reduced_mass * omega**2)


def test_atoms_closer_than_min_distance_stop_md_and_keep_the_trajectory(tmp_path):
    import ase.io

    atoms, spring = collapsing_dimer()
    with pytest.raises(MDStopped) as stop:
        run_md(atoms, spring, temperature=0.0, steps=200, log_interval=5, out_dir=tmp_path, min_distance=0.5)
    stopped = stop.value.summary["stopped"]
    assert stopped["reason"] == "min_distance" and stopped["atoms"] == [0, 1]
    assert stopped["distance_A"] < 0.5
    message = str(stop.value)
    for words in (f"step {stopped['step']}", "atoms 0 and 1", "min_distance=0.5", str(tmp_path / "md.extxyz")):
        assert words in message, message

    frames = ase.io.read(tmp_path / "md.extxyz", ":")
    distances = [frame.get_distance(0, 1) for frame in frames]
    expected_steps = [*range(0, stopped["step"], 5), stopped["step"]]
    assert len(frames) == len(expected_steps), "every log_interval frame up to the stop, then the stopping frame"
    assert distances[-1] == pytest.approx(stopped["distance_A"]) and min(distances[:-1]) > 0.5
    assert 20 < stopped["step"] < 40  # the spring's quarter period is 40 fs; it stopped on the way in
    log = np.loadtxt(tmp_path / "md.log")
    np.testing.assert_allclose(log[:, 0], expected_steps)
    written = json.loads((tmp_path / "md_summary.json").read_text())
    assert written["stopped"] == json.loads(json.dumps(stopped))


def test_start_structure_with_overlapping_atoms_stops_at_step_0(tmp_path):
    import ase.io

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.positions[3] = atoms.positions[2] + [0.3, 0.0, 0.0]
    with pytest.raises(MDStopped) as stop:
        run_md(atoms, EMT(), steps=10, out_dir=tmp_path, trajectory="md.traj")
    assert stop.value.summary["stopped"]["step"] == 0
    assert sorted(stop.value.summary["stopped"]["atoms"]) == [2, 3]
    assert len(ase.io.read(tmp_path / "md.traj", ":")) == 1


def test_energy_jump_stops_md_at_the_step_it_happens(tmp_path):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.numbers[::5] = 79
    with pytest.raises(MDStopped) as stop:
        run_md(atoms, _EnergyStep(at_step=7, jump=1.0), steps=50, out_dir=tmp_path)
    stopped = stop.value.summary["stopped"]
    assert stopped["reason"] == "max_energy_jump" and stopped["step"] == 7
    assert stopped["energy_jump_eV_per_atom"] == pytest.approx(1.0, abs=1e-3)
    assert "1 eV/atom in one step" in str(stop.value) and "max_energy_jump=0.1" in str(stop.value)

    summary = run_md(atoms, _EnergyStep(at_step=7, jump=1.0), steps=20, out_dir=tmp_path, max_energy_jump=0)
    assert summary["stopped"] is None, "max_energy_jump=0 turns the check off"


class _BreaksDown(_EnergyStep):
    """EMT until the ``at_step``-th evaluation, which gives a NaN energy or refuses the structure."""

    def __init__(self, at_step: int, how: str):
        super().__init__(at_step, jump=float("nan") if how == "nan" else 0.0)
        self.how = how

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        if self.how == "refuse" and self.evaluations >= self.at_step:
            raise DataError("atoms 0 and 1 are 0.05 Å apart")
        super().calculate(atoms, properties, system_changes)


@pytest.mark.parametrize("how, reason", [("nan", "non_finite_energy"), ("refuse", "invalid_structure")])
def test_potential_breaking_down_stops_md_at_that_step(tmp_path, how, reason):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    with pytest.raises(MDStopped) as stop:
        run_md(atoms, _BreaksDown(at_step=4, how=how), steps=20, log_interval=1, out_dir=tmp_path, max_energy_jump=0)
    stopped = stop.value.summary["stopped"]
    assert (stopped["step"], stopped["reason"]) == (4, reason)
    assert "MD stopped at step 4" in str(stop.value)
    recorded = np.loadtxt(tmp_path / "md.log")[:, 0]
    assert list(recorded) == ([0, 1, 2, 3, 4] if how == "nan" else [0, 1, 2, 3])


def test_closest_pair_with_skin_matches_a_fresh_neighbour_search():
    """The skin list is rebuilt only when needed, yet finds the closest pair of every frame of a random walk."""
    from ase.neighborlist import neighbor_list

    cell = 3.8 * np.array([[1.0, 0.05, 0.08], [0.12, 0.97, 0.04], [0.07, -0.1, 1.04]])
    atoms = Atoms("Cu8", scaled_positions=np.random.default_rng(1).random((8, 3)), cell=cell, pbc=True)
    checks = StopConditions(min_distance=1.5, max_energy_jump=0.0)
    rng = np.random.default_rng(2)
    found = 0
    for _ in range(300):
        atoms.positions += rng.normal(scale=0.08, size=(8, 3))
        i, j, d = neighbor_list("ijd", atoms, 1.5)
        pair = checks.closest_pair(atoms)
        if len(d) == 0:
            assert pair is None or pair[2] >= 1.5
            continue
        found += 1
        assert pair is not None and pair[2] == pytest.approx(d.min(), abs=1e-9)
    assert found > 50


def test_mpnn_md_stop_is_a_one_paragraph_error_with_exit_code_2(tmp_path, monkeypatch, capsys):
    import ase.io
    from hydra.core.global_hydra import GlobalHydra
    from tiny_checkpoint import tiny_checkpoint

    from mpnn_ip.cli import md

    tiny_checkpoint(tmp_path / "tiny.ckpt")
    start = bulk("Cu", "fcc", a=3.61, cubic=True)
    start.positions[1] = start.positions[0] + [0.0, 0.3, 0.0]
    ase.io.write(tmp_path / "start.extxyz", start)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPNN_IP_CONFIG_DIR", str(REPO / "configs"))
    argv = [
        md.PROG,
        "ckpt_path=tiny.ckpt",
        "structure=start.extxyz",
        "steps=5",
        f"out_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "progress=false",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        with pytest.raises(SystemExit) as exit_info:
            md.main()
    finally:
        GlobalHydra.instance().clear()
    message = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, message
    assert message.startswith("mpnn-md: error: MD stopped at step 0") and "Traceback" not in message
    for words in ("atoms 0 and 1", "0.300 Å", "min_distance=0.5", str(tmp_path / "out" / "md.extxyz")):
        assert words in message, message
    assert len(ase.io.read(tmp_path / "out" / "md.extxyz", ":")) == 1
    assert json.loads((tmp_path / "out" / "md_summary.json").read_text())["stopped"]["reason"] == "min_distance"
