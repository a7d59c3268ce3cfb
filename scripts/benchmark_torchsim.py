#!/usr/bin/env python
"""Batched MD: many small cells at once through TorchSim, against one ASE run per cell.

``--copies`` (default 64) different 64-atom Cu–Au cells (fcc, 25 % Au at random sites, rattled
0.05 Å, one seed each); NVE, 1 fs, 300 K start, ``--steps`` steps, float32, random weights at the
quickstart size (``--size tiny``) or the harness size (``small``):

    python scripts/benchmark_torchsim.py --mode torchsim           # ours, all cells in one TorchSim state
    python scripts/benchmark_torchsim.py --mode ase                # ours, the cells one after the other in ASE
    ../peers/mace/bin/python scripts/benchmark_torchsim.py --code mace --mode torchsim   # mace-torch's MaceTorchSimModel

Prints one JSON line with atoms·steps per second. Compare within one run of this machine.
mace-torch 0.3.16's ``MaceTorchSimModel`` needs a newer torch-sim than 0.3.0 (it imports
``torch_sim.neighbors.torchsim_nl`` and treats ``state.pbc`` as a tensor); with torch-sim 0.3.0,
the only version on this project's registry, it cannot be constructed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_md import mace_model, ours_model  # noqa: E402

SPECIES = (29, 79)


def cells(copies: int):
    """``copies`` 64-atom fcc Cu–Au cells, each its own random 25 % Au and rattle."""
    from ase.build import bulk

    out = []
    for seed in range(copies):
        rng = np.random.default_rng(seed)
        atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 2, 4))
        numbers = atoms.numbers.copy()
        numbers[rng.choice(len(atoms), size=len(atoms) // 4, replace=False)] = 79
        atoms.numbers = numbers
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        out.append(atoms)
    return out


def run_torchsim(model, structures, steps: int) -> float:
    import torch
    import torch_sim as ts

    state = ts.io.atoms_to_state(structures, torch.device("cpu"), torch.float32)
    ts.integrate(state, model, integrator=ts.nve, n_steps=1, temperature=300, timestep=0.001)  # warm-up
    start = time.perf_counter()
    ts.integrate(state, model, integrator=ts.nve, n_steps=steps, temperature=300, timestep=0.001)
    return time.perf_counter() - start


def run_ase(calculator_factory, structures, steps: int) -> float:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    seconds = 0.0
    for index, atoms in enumerate(structures):
        atoms = atoms.copy()
        atoms.calc = calculator_factory()
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(index))
        dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
        dynamics.run(1)  # warm-up: first graph and calculator set-up
        start = time.perf_counter()
        dynamics.run(steps)
        seconds += time.perf_counter() - start
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", choices=["ours", "mace"], default="ours")
    parser.add_argument("--model", choices=["nequip", "mace"], default=None, help="ours: which family (default nequip)")
    parser.add_argument("--mode", choices=["torchsim", "ase"], default="torchsim")
    parser.add_argument("--size", choices=["tiny", "small"], default="tiny")
    parser.add_argument("--copies", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skin", type=float, default=1.0, help="ours in ASE: Verlet skin (Å)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.code == "mace":
        os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4's constants
    import torch

    torch.set_num_threads(args.threads)
    structures = cells(args.copies)
    family = args.model or ("nequip" if args.code == "ours" else "mace")
    if args.code == "ours":
        model = ours_model(family, args.size, species=SPECIES)
        if args.mode == "torchsim":
            from mpnn_ip.torchsim import MPNNTorchSimModel

            seconds = run_torchsim(MPNNTorchSimModel(model), structures, args.steps)
        else:
            from mpnn_ip.calculators import MPNNCalculator

            seconds = run_ase(lambda: MPNNCalculator(model, skin=args.skin), structures, args.steps)
    else:
        if args.mode != "torchsim":
            raise SystemExit(
                "--code mace times mace-torch's TorchSim model only (its ASE calculator: scripts/benchmark_md.py)"
            )
        from mace.calculators.mace_torchsim import MaceTorchSimModel

        model = MaceTorchSimModel(mace_model(args.size, SPECIES), device=torch.device("cpu"), dtype=torch.float32)
        seconds = run_torchsim(model, structures, args.steps)
    n_atoms = sum(len(a) for a in structures)
    print(
        json.dumps(
            dict(
                code=args.code,
                model=f"{family}-{args.size}",
                mode=args.mode,
                systems=len(structures),
                atoms=n_atoms,
                steps=args.steps,
                threads=args.threads,
                seconds=seconds,
                atom_steps_per_s=n_atoms * args.steps / seconds,
            )
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
