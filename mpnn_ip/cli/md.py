"""``mpnn-md``: molecular dynamics in ASE with a trained checkpoint (config ``configs/md.yaml``).

    mpnn-md ckpt_path=outputs/run/checkpoints/last.ckpt structure=start.extxyz ensemble=nve \
        temperature=300 timestep=1.0 steps=1000

NVE uses velocity Verlet, NVT Langevin dynamics. Initial velocities are Maxwell-Boltzmann at
``temperature`` (seeded) with zero total momentum. Writes into ``out_dir``: the trajectory
(extxyz, or ASE ``.traj``), ``md.log`` (time, Epot, Ekin, Etot, T every ``log_interval`` steps)
and ``md_summary.json`` with the total-energy drift (eV/atom/ps, slope of a linear fit of
Etot per atom against time).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROG = "mpnn-md"
ENSEMBLES = ("nve", "nvt")
LOG_HEADER = "# time[fs]  Epot[eV]  Ekin[eV]  Etot[eV]  T[K]"


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

    Returns: the summary (also in ``md_summary.json``): ``energy_drift_ev_per_atom_per_ps``,
    final/mean temperature (K), the paths written and the log as a ``[n_rows, 5]`` list.
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet
    from tqdm import tqdm

    from mpnn_ip.errors import ConfigError

    ensemble = str(ensemble).lower()
    if ensemble not in ENSEMBLES:
        raise ConfigError(f"ensemble={ensemble!r} is not supported; use ensemble=nve or ensemble=nvt")
    for name, value in (("timestep", timestep), ("log_interval", log_interval)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if steps < 0 or temperature < 0 or friction < 0:
        raise ConfigError(f"steps, temperature and friction must not be negative (got {steps}, {temperature}, {friction})")

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
    rows: list[list[float]] = []
    with open(log_path, "w") as log, _TrajectoryWriter(trajectory_path, atoms) as writer:
        log.write(LOG_HEADER + "\n")

        def record() -> None:
            epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
            row = [dynamics.get_time() / units.fs, epot, ekin, epot + ekin, atoms.get_temperature()]
            rows.append(row)
            log.write("  ".join(f"{v:.8f}" for v in row) + "\n")
            log.flush()
            writer.write()

        dynamics.attach(record, interval=int(log_interval))
        bar = tqdm(total=int(steps), desc=f"MD {ensemble}", unit="step", disable=not progress)
        dynamics.attach(lambda: bar.update(1) if dynamics.nsteps > 0 else None, interval=1)
        try:
            dynamics.run(int(steps))
        finally:
            bar.close()

    table = np.asarray(rows)
    drift = energy_drift(table[:, 0], table[:, 3], len(atoms))
    summary = {
        "ensemble": ensemble,
        "steps": int(steps),
        "timestep_fs": float(timestep),
        "num_atoms": len(atoms),
        "energy_drift_ev_per_atom_per_ps": drift,
        "final_temperature_K": float(table[-1, 4]),
        "mean_temperature_K": float(table[:, 4].mean()),
        "trajectory": str(trajectory_path),
        "log": str(log_path),
        "log_columns": ["time_fs", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"],
        "log_rows": table.tolist(),
    }
    (out_dir / "md_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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


def _task(cfg) -> None:
    from mpnn_ip.cli.hydra_app import friendly_errors

    with friendly_errors(PROG):
        _run(cfg)


def _run(cfg) -> dict:
    from mpnn_ip.calculators import MPNNCalculator
    from mpnn_ip.data import AtomicGraph
    from mpnn_ip.data.reading import read_frames
    from mpnn_ip.checkpoint import check_model_species, load_model

    model = load_model(cfg.ckpt_path, device=cfg.device, dtype=cfg.dtype)
    structure = Path(str(cfg.structure)).expanduser()
    atoms = read_frames(structure, index=cfg.structure_index)[-1]
    AtomicGraph.from_atoms(atoms, path=str(structure))  # validates cell, overlaps, NaN before MD starts
    check_model_species(model, atoms.get_atomic_numbers(), f"structure {structure}")
    summary = run_md(
        atoms,
        MPNNCalculator(model),
        ensemble=cfg.ensemble,
        temperature=float(cfg.temperature),
        timestep=float(cfg.timestep),
        steps=int(cfg.steps),
        friction=float(cfg.friction),
        seed=int(cfg.seed),
        log_interval=int(cfg.log_interval),
        out_dir=str(cfg.out_dir),
        trajectory=str(cfg.trajectory),
        progress=bool(cfg.progress),
    )
    drift = summary["energy_drift_ev_per_atom_per_ps"]
    drift_text = "n/a (fewer than 2 log points)" if drift is None else f"{drift:.3e} eV/atom/ps"
    print(
        f"{PROG}: {summary['steps']} {summary['ensemble'].upper()} steps of {summary['timestep_fs']} fs on "
        f"{summary['num_atoms']} atoms; final T = {summary['final_temperature_K']:.1f} K, "
        f"mean T = {summary['mean_temperature_K']:.1f} K"
    )
    print(f"{PROG}: total-energy drift: {drift_text}")
    print(f"{PROG}: wrote {summary['trajectory']}, {summary['log']} and md_summary.json")
    return summary


def main() -> None:
    from mpnn_ip.cli.hydra_app import run_hydra_app

    run_hydra_app(_task, config_name="md", prog=PROG)


if __name__ == "__main__":
    main()
