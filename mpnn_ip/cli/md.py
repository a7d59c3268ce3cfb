"""``mpnn-md``: molecular dynamics in ASE with a trained checkpoint (config ``configs/md.yaml``).

    mpnn-md ckpt_path=outputs/run/checkpoints/last.ckpt structure=start.extxyz ensemble=nve \
        temperature=300 timestep=1.0 steps=1000

Loads the model and the start structure (frame ``structure_index`` of ``structure``, default the last)
and runs :func:`mpnn_ip.md.run_md`: NVE uses velocity Verlet, NVT Langevin dynamics. Writes into
``out_dir`` the trajectory, ``md.log`` and ``md_summary.json`` (with the total-energy drift,
eV/atom/ps). A stop condition that trips (``min_distance``, ``max_energy_jump``, a non-finite
energy: :class:`mpnn_ip.md.StopConditions`) keeps what was recorded and becomes a one-paragraph
error with exit code 2.
"""

from __future__ import annotations

from pathlib import Path

PROG = "mpnn-md"


def _task(cfg) -> None:
    from mpnn_ip.cli.hydra_app import friendly_errors

    with friendly_errors(PROG):
        _run(cfg)


def _run(cfg) -> dict:
    from mpnn_ip.calculators import MPNNCalculator
    from mpnn_ip.checkpoint import check_model_species, load_model
    from mpnn_ip.data import AtomicGraph
    from mpnn_ip.data.reading import read_frames
    from mpnn_ip.md import run_md

    model = load_model(cfg.ckpt_path, device=cfg.device, dtype=cfg.dtype)
    structure = Path(str(cfg.structure)).expanduser()
    atoms = read_frames(structure, index=cfg.structure_index)[-1]
    AtomicGraph.from_atoms(atoms, path=str(structure))  # validates cell, overlaps, NaN before MD starts
    check_model_species(model, atoms.get_atomic_numbers(), f"structure {structure}")
    summary = run_md(
        atoms,
        MPNNCalculator(
            model,
            skin=float(cfg.skin),
            compile=cfg.get("compile", "auto"),
            head=cfg.get("head"),
            dispersion=cfg.get("dispersion"),
        ),
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
        min_distance=float(cfg.min_distance),
        max_energy_jump=float(cfg.max_energy_jump),
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
