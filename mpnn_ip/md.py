"""Molecular dynamics in ASE with a potential, and the safety checks that stop a run going wrong.

:func:`run_md` runs NVE (velocity Verlet) or NVT (Langevin) dynamics from Maxwell-Boltzmann
velocities at ``temperature`` (seeded, zero total momentum) and writes into ``out_dir``: the
trajectory (extxyz, or ASE ``.traj``), ``md.log`` (time, Epot, Ekin, Etot, T every
``log_interval`` steps) and ``md_summary.json`` with the total-energy drift (:func:`energy_drift`:
eV/atom/ps, slope of a linear fit of Etot per atom against time). ``mpnn-md``
(:mod:`mpnn_ip.cli.md`) runs it on a checkpoint's model.

Every step is checked (:class:`StopConditions`): two atoms closer than ``min_distance`` or a
total-energy change above ``max_energy_jump`` per atom between consecutive steps stops the run.
What was recorded so far stays written (the stopping step is added to the trajectory and log,
``md_summary.json`` says ``"stopped": {"step", "reason", ...}``) and :class:`mpnn_ip.errors.MDStopped`
is raised, its message one paragraph that says what happened and what to change.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

ENSEMBLES = ("nve", "nvt")
LOG_HEADER = "# time[fs]  Epot[eV]  Ekin[eV]  Etot[eV]  T[K]"
LOG_COLUMNS = ["time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"]


def run_md(
    atoms,
    calculator,
    *,
    ensemble: str = "nve",
    temperature: float = 300.0,
    timestep: float = 1.0,
    steps: int = 1000,
    friction: float = 0.01,
    seed: int = 0,
    log_interval: int = 10,
    out_dir: str | Path = ".",
    trajectory: str = "md.extxyz",
    progress: bool = False,
    min_distance: float = 0.5,
    max_energy_jump: float = 0.1,
) -> dict:
    """Run MD on ``atoms`` (modified in place) and write trajectory, log and summary to ``out_dir``.

    Args:
        ensemble: ``"nve"`` (velocity Verlet) or ``"nvt"`` (Langevin).
        temperature: K, of the initial velocities and of the Langevin bath.
        timestep: fs.
        steps: number of MD steps.
        friction: 1/fs, Langevin friction (NVT only).
        seed: seeds the initial velocities and the Langevin noise.
        log_interval: steps between log lines / trajectory frames.
        trajectory: file name in ``out_dir``; ``*.traj`` = ASE trajectory, otherwise extxyz.
        min_distance: Å; stop when two atoms come closer (checked every step, also at the start);
            0 = off.
        max_energy_jump: eV/atom; stop when the total energy per atom changes by more than this
            between two consecutive steps; 0 = off. A stable run changes it by orders of magnitude
            less (the quickstart potential, NVE at 300 K, 1 fs: within 1e-5 eV/atom over 2 ps).
            A non-finite energy always stops the run.

    Returns: the summary (also in ``md_summary.json``): ``energy_drift_ev_per_atom_per_ps``,
    final/mean temperature (K), the paths written, the log as a ``[n_rows, 5]`` list and
    ``stopped`` (None for a run that did all its steps); with an :class:`MPNNCalculator` also
    ``graph_skin_A`` and ``graph_rebuild_fraction`` (share of steps that searched the radius graph); and
    ``wall_time_s`` and ``steps_per_second`` of the run (log and trajectory writing included).

    Raises:
        MDStopped: a stop condition tripped; its ``summary`` is the one written, with
            ``stopped = {"step", "time_fs", "reason", "message", ...}``.
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet
    from tqdm import tqdm

    from mpnn_ip.errors import ConfigError, DataError, MDStopped

    ensemble = str(ensemble).lower()
    if ensemble not in ENSEMBLES:
        raise ConfigError(f"ensemble={ensemble!r} is not supported; use ensemble=nve or ensemble=nvt")
    for name, value in (("timestep", timestep), ("log_interval", log_interval)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if steps < 0 or temperature < 0 or friction < 0:
        raise ConfigError(
            f"steps, temperature and friction must not be negative (got {steps}, {temperature}, {friction})"
        )
    if not (min_distance >= 0 and max_energy_jump >= 0):
        raise ConfigError(
            f"min_distance and max_energy_jump must be >= 0 (0 = off), got {min_distance}, {max_energy_jump}"
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    if ensemble == "nve":
        dynamics = VelocityVerlet(atoms, timestep=timestep * units.fs)
    else:
        # The centre of mass is held by a constraint rather than Langevin's fixcm, which ASE
        # deprecates because it does not sample the NVT distribution exactly.
        if not any(isinstance(c, FixCom) for c in atoms.constraints):
            atoms.set_constraint([*atoms.constraints, FixCom()])
        dynamics = Langevin(
            atoms,
            timestep=timestep * units.fs,
            temperature_K=temperature,
            friction=friction / units.fs,
            fixcm=False,
            rng=rng,
        )

    trajectory_path = out_dir / trajectory
    log_path = out_dir / "md.log"
    atoms.get_forces()  # errors of the start structure (unknown element, ...) surface as they are
    checks = StopConditions(min_distance=min_distance, max_energy_jump=max_energy_jump)
    rows: list[list[float]] = []
    stopped = None
    with open(log_path, "w") as log, _TrajectoryWriter(trajectory_path, atoms) as writer:
        log.write(LOG_HEADER + "\n")

        def record() -> None:
            epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
            row = [dynamics.get_time() / units.fs, epot, ekin, epot + ekin, atoms.get_temperature()]
            rows.append(row)
            log.write("  ".join(f"{v:.8f}" for v in row) + "\n")
            log.flush()
            writer.write()

        def observe() -> None:
            step = dynamics.nsteps
            trip = checks(atoms)
            if step % log_interval == 0 or trip is not None:
                record()
            if step > 0:
                bar.update(1)
            if trip is not None:
                raise _Trip({"step": step, **trip})

        dynamics.attach(observe, interval=1)
        bar = tqdm(total=int(steps), desc=f"MD {ensemble}", unit="step", disable=not progress)
        started = time.perf_counter()
        try:
            dynamics.run(int(steps))
        except _Trip as trip:
            stopped = trip.details
        except DataError as exc:  # the calculator refused the structure the step in progress made
            stopped = {"step": dynamics.nsteps + 1, "reason": "invalid_structure", "problem": str(exc)}
        finally:
            bar.close()

    wall_time = time.perf_counter() - started
    summary = _summary(rows, ensemble, steps, timestep, len(atoms), trajectory_path, log_path)
    summary["wall_time_s"] = wall_time
    summary["steps_per_second"] = dynamics.nsteps / wall_time if wall_time > 0 else None
    if stopped is not None:
        step = int(stopped.pop("step"))
        stopped = {"step": step, "time_fs": step * float(timestep), **stopped}
        stopped["message"] = _stop_message(stopped, summary, min_distance, max_energy_jump)
    summary["stopped"] = stopped
    neighbor_list = getattr(calculator, "neighbor_list", None)  # MPNNCalculator's Verlet list
    if neighbor_list is not None:
        summary["graph_skin_A"] = neighbor_list.skin
        summary["graph_rebuild_fraction"] = neighbor_list.rebuild_fraction
    compile_decision = getattr(calculator, "compile_decision", None)  # MPNNCalculator's torch.compile outcome
    if compile_decision is not None:
        summary["compile"] = str(compile_decision)
    (out_dir / "md_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if stopped is not None:
        raise MDStopped(stopped["message"], summary)
    return summary


def _summary(rows, ensemble, steps, timestep, num_atoms, trajectory_path, log_path) -> dict:
    table = np.asarray(rows).reshape(-1, len(LOG_COLUMNS))
    return {
        "ensemble": ensemble,
        "steps": int(steps),
        "timestep_fs": float(timestep),
        "num_atoms": num_atoms,
        "energy_drift_ev_per_atom_per_ps": energy_drift(table[:, 0], table[:, 3], num_atoms),
        "final_temperature_K": float(table[-1, 4]) if len(table) else None,
        "mean_temperature_K": float(table[:, 4].mean()) if len(table) else None,
        "trajectory": str(trajectory_path),
        "log": str(log_path),
        "log_columns": LOG_COLUMNS,
        "log_rows": table.tolist(),
    }


def _stop_message(stopped: dict, summary: dict, min_distance: float, max_energy_jump: float) -> str:
    where = f"MD stopped at step {stopped['step']} ({stopped['time_fs']:g} fs): "
    if stopped["reason"] == "min_distance":
        i, j = stopped["atoms"]
        what = (
            f"atoms {i} and {j} are {stopped['distance_A']:.3f} Å apart, closer than "
            f"min_distance={min_distance:g} Å. "
            "The potential is likely unreliable at such distances (add training frames like these) or the "
            "timestep is too large; min_distance=0 turns this check off."
        )
    elif stopped["reason"] == "max_energy_jump":
        what = (
            f"the total energy changed by {stopped['energy_jump_eV_per_atom']:.4g} eV/atom in one step (more than "
            f"max_energy_jump={max_energy_jump:g} eV/atom): the dynamics is unstable (timestep too large, or the "
            "potential extrapolating far from its training data); max_energy_jump=0 turns this check off."
        )
    elif stopped["reason"] == "non_finite_energy":
        what = "the energy is NaN or infinite: the potential broke down on this structure."
    else:
        what = f"the step produced a structure the potential cannot evaluate ({stopped['problem']})."
    return (
        f"{where}{what} The trajectory up to this step is in {summary['trajectory']} (log {summary['log']}, "
        "summary md_summary.json)."
    )


class _Trip(Exception):
    """Raised by the per-step observer to leave ASE's run loop; carries the stop details."""

    def __init__(self, details: dict):
        super().__init__(details["reason"])
        self.details = details


class StopConditions:
    """Per-step safety checks of an MD run; calling it with the atoms returns None or the stop details.

    * ``min_distance`` (Å): closest pair of atoms (periodic images included). A neighbour list of
      radius ``min_distance + skin`` is rebuilt only once an atom has moved more than ``skin/2``
      since the last build (or the cell changed); in between only the listed pairs are measured.
      No pair is missed: with each atom within ``skin/2`` of its place at the build, a pair closer
      than ``min_distance`` now was closer than ``min_distance + skin`` then. A step costs O(N).
    * ``max_energy_jump`` (eV/atom): change of the total energy per atom since the previous call.

    A value of 0 turns that check off. A non-finite energy always stops the run.
    """

    #: Å beyond ``min_distance`` in the neighbour list; fcc metals vibrate ~0.1 Å at room temperature.
    skin = 1.0

    def __init__(self, min_distance: float, max_energy_jump: float):
        self.min_distance, self.max_energy_jump = float(min_distance), float(max_energy_jump)
        self._previous_energy: float | None = None
        self._built_positions: np.ndarray | None = None
        self._built_cell: np.ndarray | None = None

    def __call__(self, atoms) -> dict | None:
        if self.min_distance > 0:
            pair = self.closest_pair(atoms)
            if pair is not None and pair[2] < self.min_distance:
                return {"reason": "min_distance", "atoms": [pair[0], pair[1]], "distance_A": pair[2]}
        energy = (atoms.get_potential_energy() + atoms.get_kinetic_energy()) / len(atoms)
        previous, self._previous_energy = self._previous_energy, energy
        if not np.isfinite(energy):
            return {"reason": "non_finite_energy"}
        if self.max_energy_jump > 0 and previous is not None and abs(energy - previous) > self.max_energy_jump:
            return {"reason": "max_energy_jump", "energy_jump_eV_per_atom": float(abs(energy - previous))}
        return None

    def closest_pair(self, atoms) -> tuple[int, int, float] | None:
        """``(i, j, distance in Å)`` of the closest pair within ``min_distance + skin``, else None."""
        positions, cell = atoms.get_positions(), atoms.get_cell().array
        if (
            self._built_positions is None
            or not np.array_equal(cell, self._built_cell)
            or np.max(np.einsum("ij,ij->i", positions - self._built_positions, positions - self._built_positions))
            > (self.skin / 2) ** 2
        ):
            self._build(atoms, positions, cell)
        if len(self._i) == 0:
            return None
        distances = np.linalg.norm(positions[self._j] - positions[self._i] + self._shifts @ cell, axis=1)
        k = int(np.argmin(distances))
        return int(self._i[k]), int(self._j[k]), float(distances[k])

    def _build(self, atoms, positions: np.ndarray, cell: np.ndarray) -> None:
        from ase import Atoms
        from ase.neighborlist import neighbor_list

        # Along non-periodic directions ASE then bins the atoms' extent, not a vacuum-padded cell vector.
        pbc = np.asarray(atoms.get_pbc(), dtype=bool)
        periodic_cell = np.where(pbc[:, None], cell, 0.0)
        probe = Atoms(numbers=atoms.get_atomic_numbers(), positions=positions, cell=periodic_cell, pbc=pbc)
        i, j, shifts = neighbor_list("ijS", probe, self.min_distance + self.skin, self_interaction=False)
        keep = i <= j  # (i, j, S) and (j, i, -S) are the same pair
        self._i, self._j, self._shifts = i[keep], j[keep], shifts[keep].astype(np.float64)
        self._built_positions, self._built_cell = positions.copy(), cell.copy()


def energy_drift(time_fs: np.ndarray, total_energy: np.ndarray, num_atoms: int) -> float | None:
    """Slope (eV/atom/ps) of a least-squares line through total energy per atom against time; None if < 2 points."""
    if len(time_fs) < 2:
        return None
    slope = np.polyfit(np.asarray(time_fs) / 1000.0, np.asarray(total_energy) / num_atoms, 1)[0]
    return float(slope)


class _TrajectoryWriter:
    """Appends frames (positions, velocities, energy, forces) as extxyz or ASE ``.traj``."""

    def __init__(self, path: Path, atoms):
        self.path, self.atoms = path, atoms

    def __enter__(self):
        if self.path.suffix == ".traj":
            from ase.io import Trajectory

            self.handle = Trajectory(str(self.path), "w", self.atoms)
        else:
            self.handle = open(self.path, "w")
        return self

    def write(self) -> None:
        if self.path.suffix == ".traj":
            self.handle.write()
        else:
            from ase.io import write

            write(self.handle, self.atoms, format="extxyz")
            self.handle.flush()

    def __exit__(self, *exc) -> None:
        self.handle.close()
