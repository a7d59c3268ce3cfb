#!/usr/bin/env python
"""Achieved GFLOP/s of energy+forces against this machine's sgemm rate.

    python scripts/benchmark_flops.py                    # NequIP-s on Cu 2,048 (the harness workload)
    python scripts/benchmark_flops.py --model mace --workload cu256

Counts the floating-point operations of one energy+forces call with
``torch.utils.flop_counter.FlopCounterMode`` (matrix products: mm, bmm, addmm, einsum's matmuls;
elementwise work, gathers and scatters are not counted, as usual), times the call (median of
``--repeats``), and times a square float32 sgemm (``--gemm`` rows) on the same threads. Prints one
JSON line: GFLOP per call, seconds, achieved GFLOP/s and its fraction of the sgemm rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sgemm_gflops(n: int, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["nequip", "mace"], default="nequip")
    parser.add_argument("--workload", default="cu2048")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gemm", type=int, default=2048, help="size of the square sgemm that sets the reference rate")
    parser.add_argument("--bench-dir", type=Path, default=REPO.parent / "shared" / "bench")
    args = parser.parse_args(argv)

    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(REPO / "scripts"))
    from benchmark import harness_setup

    _, _, adapter, model, batch = harness_setup(args.model, args.workload, args.bench_dir, args.threads)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    adapter.infer_ef(batch)
    counter = FlopCounterMode(display=False)
    with counter:
        adapter.infer_ef(batch)
    flops = counter.get_total_flops()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        adapter.infer_ef(batch)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    gemm = sgemm_gflops(args.gemm)
    achieved = flops / seconds / 1e9
    print(
        json.dumps(
            dict(
                model=f"{args.model}-s",
                workload=args.workload,
                threads=args.threads,
                gflop_per_call=flops / 1e9,
                seconds=seconds,
                achieved_gflops=achieved,
                sgemm_gflops=gemm,
                fraction_of_sgemm=achieved / gemm,
            )
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
