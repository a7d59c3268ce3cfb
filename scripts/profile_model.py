#!/usr/bin/env python
"""Where the time of our small presets goes: torch.profiler on the shared harness workloads.

    python scripts/profile_model.py --model mace --workload mol27x16 --measurement infer_ef
    python scripts/profile_model.py --model nequip --workload cu256 --measurement train_step --rows 25
    python scripts/profile_model.py ... --trace trace.json      # Chrome/Perfetto trace as well

Runs one warm-up call, then ``--repeats`` profiled calls of energy+forces (eval mode) or of
the harness's training step (energy + force loss, double backward, Adam), and prints the
operators sorted by their own CPU time. Prints numbers only; see scripts/benchmark.py for times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BENCH_DIR = REPO.parent / "shared" / "bench"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["nequip", "mace"], default="nequip")
    parser.add_argument("--workload", default="mol27x16", help="mol27x16 | cu256 | cu2048")
    parser.add_argument("--measurement", choices=["infer_ef", "train_step"], default="infer_ef")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--shapes", action="store_true", help="group the operators by their input shapes")
    parser.add_argument("--trace", default=None, help="also write a Chrome trace to this file")
    parser.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR)
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(REPO / "scripts"))
    from benchmark import harness_setup

    bc, workload, adapter, model, batch = harness_setup(args.model, args.workload, args.bench_dir, args.threads)
    if args.measurement == "infer_ef":
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

        def step():
            adapter.infer_ef(batch)
    else:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=bc.LEARNING_RATE)
        n_per_frame = torch.as_tensor(workload.n_atoms_per_frame, dtype=torch.float32)
        energy_ref = torch.as_tensor(workload.energy_targets, dtype=torch.float32)
        forces_ref = torch.as_tensor(workload.force_targets, dtype=torch.float32)

        def step():  # the harness's training step (bench_common.main)
            optimizer.zero_grad(set_to_none=True)
            energy, forces = adapter.train_forward(batch)
            loss = (
                bc.ENERGY_LOSS_WEIGHT * ((energy.reshape(-1) - energy_ref) / n_per_frame).square().mean()
                + bc.FORCE_LOSS_WEIGHT * (forces - forces_ref).square().mean()
            )
            loss.backward()
            optimizer.step()

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for _ in range(args.repeats):
            step()
    print(f"# {args.model}-s {args.workload} {args.measurement}: {args.repeats} calls, {args.threads} threads")
    averages = prof.key_averages(group_by_input_shape=args.shapes)
    print(
        averages.table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40, max_shapes_column_width=60
        )
    )
    if args.trace:
        prof.export_chrome_trace(args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
