"""Time the periodic radius graph against ASE (and matscipy, when installed) on fcc Cu.

Usage::

    python scripts/benchmark_graph.py                       # CPU, 2 threads, default sizes
    python scripts/benchmark_graph.py --device cuda --sizes 2048 32768 131072
    python scripts/benchmark_graph.py --block-min-points 0  # force the spatial blocks

Prints, per size: atoms, edges, seconds for each code (best of ``--repeats``), ASE time over
ours, whether the edge counts agree with ASE; then the log-log slope of our time vs atoms.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list

from mpnn_ip.graph import radius_graph_pbc

try:
    from matscipy.neighbours import neighbour_list as matscipy_neighbour_list
except ImportError:
    matscipy_neighbour_list = None


def copper(n_atoms: int, seed: int = 0):
    """Rattled fcc Cu (a = 3.61 Å) with n_atoms (a multiple of 4), repeats as cubic as possible."""
    cells = n_atoms // 4
    repeat = min(
        (
            (a, b, cells // (a * b))
            for a, b in itertools.product(range(1, 65), repeat=2)
            if a <= b and cells % (a * b) == 0 and b <= cells // (a * b)
        ),
        key=lambda r: r[2] / r[0],
    )
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def best_time(function, repeats: int, device: torch.device) -> tuple[float, object]:
    result, times = None, []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 2048, 6912, 16384, 32768])
    parser.add_argument("--r-max", type=float, default=5.0, help="cutoff in Å")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--block-min-points", type=int, default=None, help="split frames with more points than this into spatial blocks"
    )
    parser.add_argument("--skip-reference", action="store_true", help="time only our graph")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    header = f"{'atoms':>7} {'edges':>10} {'ours s':>9} {'ase s':>9} {'ase/ours':>9}"
    if matscipy_neighbour_list is not None:
        header += f" {'matscipy s':>11} {'msp/ours':>9}"
    print(f"device {device}, threads {args.threads}, r_max {args.r_max} Å, best of {args.repeats}")
    print(header + "  edges==ase")
    sizes, ours = [], []
    for n_atoms in args.sizes:
        atoms = copper(n_atoms)
        pos = torch.tensor(atoms.positions, device=device)
        cell = torch.tensor(atoms.cell.array, device=device)[None]
        pbc = torch.tensor(atoms.pbc, device=device)[None]
        batch = torch.zeros(len(atoms), dtype=torch.long, device=device)

        def run():
            return radius_graph_pbc(pos, cell, pbc, batch, args.r_max, _block_min_points=args.block_min_points)

        run()  # warm-up (allocator, kernel loading)
        ours_s, (edge_index, _) = best_time(run, args.repeats, device)
        sizes.append(len(atoms))
        ours.append(ours_s)
        line = f"{len(atoms):>7} {edge_index.shape[1]:>10} {ours_s:>9.4f}"
        if args.skip_reference:
            print(line)
            continue
        ase_s, (i, _, _) = best_time(
            lambda: neighbor_list("ijS", atoms, args.r_max, self_interaction=False), args.repeats, torch.device("cpu")
        )
        line += f" {ase_s:>9.4f} {ase_s / ours_s:>9.2f}"
        if matscipy_neighbour_list is not None:
            msp_s, _ = best_time(
                lambda: matscipy_neighbour_list("ijS", atoms, args.r_max), args.repeats, torch.device("cpu")
            )
            line += f" {msp_s:>11.4f} {msp_s / ours_s:>9.2f}"
        print(line + f"  {len(i) == edge_index.shape[1]}")
    if len(sizes) > 1:
        slope = np.polyfit(np.log(sizes), np.log(ours), 1)[0]
        print(f"log-log slope of our time vs atoms: {slope:.2f} (1 = linear)")


if __name__ == "__main__":
    main()
