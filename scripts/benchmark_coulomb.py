#!/usr/bin/env python
"""Time of energy + forces of the Ewald Coulomb term (``mpnn_ip.nn.coulomb.GaussianCoulomb``) against system size.

Rock salt (a = 5.64 Å, 8 n³ atoms: 512, 4,096, 32,768), rattled 0.1 Å, random neutral charges (normal, mean
removed), float64, the LES defaults (sigma = 1 Å, accuracy 1e-6, ``kspace="auto"``, which picks the particle mesh
for all three sizes) and, for 512 atoms, the direct k sum (``kspace="ewald"``). Each row: mean wall seconds
of ``--repeats`` calls after one untimed call, the method, the mesh shape, the energy per atom and the peak resident
memory so far; the last line fits ``log(time) = slope * log(N) + c`` over the auto rows.

    python scripts/benchmark_coulomb.py                 # 512, 4,096 and 32,768 atoms
    python scripts/benchmark_coulomb.py --repeats 1 --sizes 4 8

Prints one JSON line per row. No asserts: compare within one run of this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time


def ionic_crystal(repeat: int, seed: int = 0):
    """Rattled rock salt, ``repeat``³ cubic cells, with random neutral charges (e)."""
    import numpy as np
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    atoms.rattle(stdev=0.1, seed=seed)
    charges = np.random.default_rng(seed).normal(size=len(atoms))
    return atoms, charges - charges.mean()


def timed(call, repeats: int) -> tuple[float, float]:
    """Mean wall seconds of ``call()`` over ``repeats`` calls after one untimed call, and its last result."""
    result = call()
    start = time.perf_counter()
    for _ in range(repeats):
        result = call()
    return (time.perf_counter() - start) / repeats, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16], help="cubic repeats n (8 n³ atoms)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ewald-max-atoms", type=int, default=512, help="also time the direct k sum up to here")
    args = parser.parse_args()

    import torch

    from mpnn_ip.nn.coulomb import GaussianCoulomb
    from mpnn_ip.nn.ewald_kspace import mesh_shape

    fits = []
    for repeat in args.sizes:
        atoms, q = ionic_crystal(repeat)
        pos = torch.tensor(atoms.positions, dtype=torch.float64)
        cell = torch.tensor(atoms.cell[:], dtype=torch.float64).unsqueeze(0)
        pbc = torch.tensor(atoms.pbc).unsqueeze(0)
        batch = torch.zeros(len(atoms), dtype=torch.long)
        charges = torch.tensor(q, dtype=torch.float64)
        kspaces = ["auto"] + (["ewald"] if len(atoms) <= args.ewald_max_atoms else [])
        for kspace in kspaces:
            module = GaussianCoulomb(kspace=kspace)

            def call(module=module):
                positions = pos.clone().requires_grad_(True)
                energy = module(charges, positions, cell, pbc, batch).sum()
                (forces,) = torch.autograd.grad(-energy, positions)
                return float(energy.detach())

            seconds, energy = timed(call, args.repeats)
            mesh = module._use_mesh(len(atoms), atoms.get_volume())
            row = {
                "atoms": len(atoms),
                "kspace": kspace,
                "method": "pme" if mesh else "ewald",
                "mesh": list(mesh_shape(cell[0], module.k_max, module.pme_order)) if mesh else None,
                "seconds": round(seconds, 4),
                "energy_per_atom_eV": round(energy / len(atoms), 8),
                "threads": torch.get_num_threads(),
                "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
            print(json.dumps(row), flush=True)
            if kspace == "auto":
                fits.append((math.log(len(atoms)), math.log(seconds)))
    if len(fits) >= 2:
        n = len(fits)
        mean_x, mean_y = sum(x for x, _ in fits) / n, sum(y for _, y in fits) / n
        slope = sum((x - mean_x) * (y - mean_y) for x, y in fits) / sum((x - mean_x) ** 2 for x, _ in fits)
        print(json.dumps({"fit": "log(seconds) vs log(atoms), kspace=auto", "slope": round(slope, 3)}), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
