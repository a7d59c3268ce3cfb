#!/usr/bin/env python
"""MD steps per second in LAMMPS (``mpnn_ip.lammps``, what ``mpnn-lammps`` runs) beside our ASE MD
(``mpnn_ip.md.run_md``, what ``mpnn-md`` runs), with the same model, structure, skin and thread count.

Fcc Cu (4 n³ atoms: 108 = 3³·4, 2,048 = 8³·4), 300 K, NVE, 1 fs. ``--warmup`` untimed steps, then
``--steps`` timed. Besides steps/s it prints the LAMMPS callback's overhead per step (gather, type
mapping, unwrapping, scatter and writing LAMMPS's arrays: the callback's wall time minus the model's)
and the share of LAMMPS's own time outside the callback (integration, thermo).

    python scripts/benchmark_lammps.py                                    # quickstart checkpoint, 108 and 2,048 atoms
    python scripts/benchmark_lammps.py --ckpt run/checkpoints/last.ckpt --sizes 3 6 --steps 100
    mpiexec -n 2 python scripts/benchmark_lammps.py --engines lammps        # two ranks (rank 0 evaluates)

Prints one JSON line per engine and size. No asserts: compare within one run of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copper(repeat: int, seed: int = 0):
    """Cubic fcc Cu ``repeat``³ unit cells (4 atoms each), rattled 0.01 Å, 300 K velocities, no net momentum."""
    import numpy as np
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=rng)
    Stationary(atoms)
    return atoms


def time_lammps(atoms, model, args) -> dict:
    from ase.io import write

    from mpnn_ip.lammps import attach, create_lammps, world_communicator

    comm = world_communicator()
    rank = 0 if comm is None else comm.Get_rank()
    folder = tempfile.mkdtemp(prefix="benchmark-lammps-") if rank == 0 else None
    folder = Path(folder if comm is None else comm.bcast(folder, root=0))  # one file every rank names
    data = folder / "start.data"
    if rank == 0:
        write(data, atoms, format="lammps-data", specorder=["Cu"], masses=True, velocities=True, units="metal")
    lmp = create_lammps(["-nocite", "-log", "none", "-screen", "none"], comm)
    lmp.commands_string(
        f"units metal\nread_data {data}\nfix mpnn all external pf/callback 1 1\nfix nve all nve\ntimestep 0.001\nthermo {args.steps}"
    )
    if rank == 0:
        shutil.rmtree(folder)
    potential = attach(lmp, model, skin=args.skin, compile=args.compile)
    lmp.command(f"run {args.warmup}")
    calls, model_seconds, callback_seconds = potential.calls, potential.model_seconds, potential.callback_seconds
    start = time.perf_counter()
    lmp.command(f"run {args.steps}")
    wall = time.perf_counter() - start
    calls = potential.calls - calls
    model_seconds, callback_seconds = (
        potential.model_seconds - model_seconds,
        potential.callback_seconds - callback_seconds,
    )
    ranks = 1 if comm is None else comm.Get_size()
    lmp.close()
    return {
        "engine": "lammps (mpnn-lammps)",
        "ranks": ranks,
        "steps_per_second": args.steps / wall,
        "model_ms_per_call": 1e3 * model_seconds / calls,
        "callback_overhead_ms_per_call": 1e3 * (callback_seconds - model_seconds) / calls,
        "lammps_outside_callback_ms_per_step": 1e3 * (wall - callback_seconds) / args.steps,
        "graph_rebuild_fraction": potential.rebuild_fraction,
    }


def time_ase(atoms, model, args) -> dict:
    from mpnn_ip import MPNNCalculator
    from mpnn_ip.md import run_md

    calculator = MPNNCalculator(model, skin=args.skin, compile=args.compile)
    with tempfile.TemporaryDirectory() as folder:
        run_md(atoms, calculator, steps=args.warmup, out_dir=folder, log_interval=max(args.warmup, 1), temperature=300)
        summary = run_md(atoms, calculator, steps=args.steps, out_dir=folder, log_interval=args.steps, temperature=300)
    return {
        "engine": "ase (mpnn-md)",
        "ranks": 1,
        "steps_per_second": summary["steps_per_second"],
        "graph_rebuild_fraction": summary.get("graph_rebuild_fraction"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ckpt",
        default=str(ROOT / "tests" / "data" / "quickstart_nequip_tiny.ckpt"),
        help="checkpoint (default: the quickstart NequIP)",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[3, 8], help="n of 4 n³ Cu atoms (default 3 8: 108 and 2,048)"
    )
    parser.add_argument("--engines", nargs="+", default=["lammps", "ase"], choices=["lammps", "ase"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skin", type=float, default=1.0)
    parser.add_argument(
        "--compile", default="false", help="torch.compile: false (default), auto, true (same for both engines)"
    )
    parser.add_argument("--dtype", default=None, help="float32 | float64 (default: the checkpoint's)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    args = parser.parse_args()

    import torch

    from mpnn_ip.checkpoint import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    for repeat in args.sizes:
        for engine in args.engines:
            model = load_model(args.ckpt, dtype=args.dtype)
            atoms = copper(repeat)
            row = (time_lammps if engine == "lammps" else time_ase)(atoms, model, args)
            row = {
                "atoms": len(atoms),
                **row,
                "threads": torch.get_num_threads(),
                "dtype": str(model.dtype).removeprefix("torch."),
                "skin": args.skin,
                "steps": args.steps,
            }
            if os.environ.get("PMI_RANK", "0") == "0":  # one line per run under mpiexec
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
