#!/usr/bin/env python
"""Time per energy + forces call of D3(BJ) dispersion (``mpnn_ip.nn.dispersion.D3Dispersion``) beside a
model call (the quickstart checkpoint, ``mpnn_ip.checkpoint.load_model``) on the same structure.

Fcc Cu (4 n³ atoms: 108 = 3³·4, 2,048 = 8³·4), rattled 0.01 Å. D3 rows: the defaults (pairs and
coordination numbers within 40 bohr, no three-body term), simple-dftd3's 60-bohr pair cutoff, and with ``--three-body`` the ATM term within ``--three-body-cutoff``. Each row: mean seconds of
``--repeats`` calls after one untimed call, the number of pairs, the dispersion energy per atom, and
the peak resident memory of the process so far.

    python scripts/benchmark_dispersion.py                      # 108 and 2,048 atoms
    python scripts/benchmark_dispersion.py --sizes 3 --three-body --three-body-cutoff 8

Prints one JSON line per row. No asserts: compare within one run of this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copper(repeat: int, seed: int = 0):
    """Cubic fcc Cu ``repeat``³ unit cells (4 atoms each), rattled 0.01 Å."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(stdev=0.01, seed=seed)
    return atoms


def timed(call, repeats: int) -> tuple[float, object]:
    """Mean wall seconds of ``call()`` over ``repeats`` calls after one untimed call, and its last result."""
    result = call()
    start = time.perf_counter()
    for _ in range(repeats):
        result = call()
    return (time.perf_counter() - start) / repeats, result


def dispersion_call(module, atoms, dtype):
    import torch

    from mpnn_ip.graph.radius import radius_graph_pbc

    pos = torch.tensor(atoms.positions, dtype=dtype)
    numbers = torch.tensor(atoms.numbers)
    cell = torch.tensor(atoms.cell[:], dtype=dtype).unsqueeze(0)
    pbc = torch.tensor(atoms.pbc).unsqueeze(0)
    batch = torch.zeros(len(atoms), dtype=torch.long)
    n_pairs = radius_graph_pbc(pos, cell, pbc, batch, module.cutoff)[0].shape[1]

    def call():
        positions = pos.clone().requires_grad_(True)
        energy = module(positions, numbers, cell, pbc, batch).sum()
        (grad,) = torch.autograd.grad(energy, positions)
        return float(energy.detach()), -grad

    return call, n_pairs


def model_call(model, atoms):
    from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs

    inputs = to_inputs(collate([AtomicGraph.from_atoms(atoms)]))

    def call():
        out = model(inputs, compute_forces=True, compute_stress=False)
        return float(out["energy"].detach().sum()), out["forces"]

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ckpt",
        default=str(ROOT / "tests" / "data" / "quickstart_nequip_tiny.ckpt"),
        help="checkpoint of the model call (default: the quickstart NequIP)",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[3, 8], help="n of 4 n³ Cu atoms (default 3 8: 108 and 2,048)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--functional", default="pbe")
    parser.add_argument("--dtype", default="float64", help="float32 | float64 of the dispersion (default float64)")
    parser.add_argument("--three-body", action="store_true", help="also time the ATM three-body term")
    parser.add_argument("--three-body-cutoff", type=float, default=8.0, help="Å (default 8)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    args = parser.parse_args()

    import torch
    from ase.units import Bohr

    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.nn.dispersion import D3Dispersion

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    variants = {
        "d3bj (defaults: 40 bohr pairs, no ATM)": D3Dispersion(args.functional),
        "d3bj, 60 bohr pairs (simple-dftd3's default)": D3Dispersion(args.functional, cutoff=60 * Bohr),
    }
    if args.three_body:
        variants[f"d3bj + ATM within {args.three_body_cutoff:g} Å"] = D3Dispersion(
            args.functional, three_body=True, three_body_cutoff=args.three_body_cutoff
        )
    model = load_model(args.ckpt)
    for repeat in args.sizes:
        atoms = copper(repeat)
        seconds, (energy, _) = timed(model_call(model, atoms), args.repeats)
        rows = [{"what": f"model ({Path(args.ckpt).name})", "seconds_per_call": seconds, "dtype": str(model.dtype)}]
        for name, module in variants.items():
            call, n_pairs = dispersion_call(module, atoms, dtype)
            seconds, (energy, _) = timed(call, args.repeats)
            rows.append(
                {
                    "what": name,
                    "seconds_per_call": seconds,
                    "dtype": str(dtype),
                    "pairs": n_pairs,
                    "energy_per_atom_eV": energy / len(atoms),
                }
            )
        for row in rows:
            row = {
                "atoms": len(atoms),
                **row,
                "threads": torch.get_num_threads(),
                "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            }
            row["dtype"] = row["dtype"].removeprefix("torch.")
            print(
                json.dumps({k: round(v, 7) if isinstance(v, float) else v for k, v in row.items()}, ensure_ascii=False),
                flush=True,
            )


if __name__ == "__main__":
    main()
