#!/usr/bin/env python
"""Speed and memory of our models on the peers' fixed workloads (prints numbers; no asserts).

Mirrors the harness in ``../shared/bench`` (same workloads, protocol, loss and optimizer,
JSON lines, table) by importing its ``bench_common`` and adding an adapter for mpnn_ip.
Each (model, workload) runs in its own subprocess so that peak memory (max RSS) is its own.

    python scripts/benchmark.py                       # small nequip + mace, all workloads
    python scripts/benchmark.py --models nequip --workloads mol27x16 --quick
    python scripts/benchmark.py --out ours.jsonl      # then: python ../shared/bench/bench_common.py table ours.jsonl
    python scripts/benchmark.py --device cuda         # same workloads on a GPU (peak GPU memory reported too)
    python scripts/benchmark.py --system-malloc       # glibc's default malloc settings (see mpnn_ip.cpu_allocator)

Our processes keep large tensor buffers in glibc's heap (:mod:`mpnn_ip.cpu_allocator`), as our
command-line tools and calculators do; the peers run with glibc's defaults unless
``../shared/bench/run_peers.sh`` is given ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BENCH_DIR = REPO.parent / "shared" / "bench"

#: Matched sizes of the peers' "small" models (../shared/bench/README.md).
SMALL_PRESETS = {
    "nequip": dict(num_layers=4, l_max=2, parity=True, num_features=32, radial_mlp=[64, 64], num_bessel=8, cutoff_p=6),
    "mace": dict(
        num_interactions=2,
        hidden_irreps="64x0e+64x1o",
        max_ell=3,
        correlation=3,
        num_bessel=8,
        radial_mlp=[64, 64, 64],
        cutoff_p=5,
    ),
}

#: Peers' medians (s) on this project's 2-core CPU machine (nequip 0.19.1 / mace-torch 0.3.16 through
#: ../shared/bench/run_peers.sh with glibc's default malloc settings, 2026-11-30, the run just before
#: the issue-10 numbers of README.md). ../shared/bench/README.md lists faster medians from another
#: machine; compare within one machine only.
PEER_SECONDS = {
    ("mol27x16", "nl"): (0.004245, 0.002634),
    ("mol27x16", "infer_ef"): (1.552, 1.07),
    ("mol27x16", "infer_efs_end2end"): (1.691, 1.209),
    ("mol27x16", "train_step"): (5.98, 3.027),
    ("cu256", "nl"): (0.005954, 0.009487),
    ("cu256", "infer_ef"): (1.925, 1.339),
    ("cu256", "infer_efs_end2end"): (1.939, 1.256),
    ("cu256", "train_step"): (9.11, 3.555),
    ("cu2048", "nl"): (0.02663, 0.04039),
    ("cu2048", "infer_ef"): (33.59, 18.16),
    ("cu2048", "infer_efs_end2end"): (32.16, 19.11),
}


def make_adapter(model_name: str, device: str = "cpu", model_file: str | None = None):
    """An ``Adapter`` of the shared harness that drives one of our models (``model_file``: a peer's model
    file imported with :func:`mpnn_ip.interop.import_model`, instead of our small preset with random weights)."""
    import torch
    from bench_common import R_MAX, Adapter

    import mpnn_ip
    from mpnn_ip.data import AtomicGraph, collate, to_inputs
    from mpnn_ip.models import build_model

    class Ours(Adapter):
        code = "mpnn_ip"

        def __init__(self):
            self.model_name = f"{model_name}-s" if model_file is None else f"{model_name}-imported"
            self.model = None

        def version(self):
            return mpnn_ip.__version__

        def hyperparameters(self, wl):
            if model_file is not None:
                return {"model_file": Path(model_file).name}
            return dict(SMALL_PRESETS[model_name], r_max=R_MAX, avg_num_neighbors=wl.avg_num_neighbors)

        def build_model(self, wl):
            if model_file is not None:
                from mpnn_ip.interop import import_model

                self.model = import_model(model_file).to(device=device, dtype=torch.float32)
                return self.model
            torch.manual_seed(0)
            self.model = build_model(model_name, species=wl.atomic_numbers, **self.hyperparameters(wl))
            self.model = self.model.to(device=device, dtype=torch.float32)
            return self.model

        def nl_inputs(self, frames):
            """Host-side graphs of the frames, moved to the device (the radius graph is built there)."""
            return {k: v.to(device) for k, v in to_inputs(collate([AtomicGraph.from_atoms(a) for a in frames])).items()}

        def neighbor_lists(self, inputs):
            with torch.no_grad():
                return int(self.model.graph(inputs)["edge_index"].shape[1])

        def make_batch(self, frames):
            inputs = self.nl_inputs(frames)
            with torch.no_grad():
                graph = self.model.graph(inputs)
            return inputs | {"edge_index": graph["edge_index"], "cell_shifts": graph["cell_shifts"]}

        def infer_ef(self, batch):
            out = self.model(batch, compute_forces=True)
            return {"energy": out["energy"].detach().cpu().numpy(), "forces": out["forces"].detach().cpu().numpy()}

        def end2end(self, frames, compute_stress):
            out = self.model(self.nl_inputs(frames), compute_forces=True, compute_stress=compute_stress)
            stress = out["stress"].detach().cpu().numpy() if compute_stress else None
            return {
                "energy": out["energy"].detach().cpu().numpy(),
                "forces": out["forces"].detach().cpu().numpy(),
                "stress": stress,
            }

        def train_forward(self, batch):
            # The harness's loss targets live on the host; the copy back joins the graph (and syncs the GPU).
            out = self.model(batch, compute_forces=True)
            return out["energy"].cpu(), out["forces"].cpu()

    return Ours()


def harness_setup(
    model_name: str,
    workload_name: str,
    bench_dir: Path = DEFAULT_BENCH_DIR,
    threads: int = 2,
    system_malloc: bool = False,
):
    """``(bench_common, workload, adapter, model, batch)``: one of our small models on one harness
    workload, as the harness builds them (for scripts/profile_model.py and scripts/benchmark_flops.py)."""
    import torch

    from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap

    if not system_malloc:
        keep_tensor_buffers_in_heap()

    sys.path.insert(0, str(bench_dir))
    import bench_common

    torch.set_num_threads(threads)
    (workload,) = bench_common.build_workloads([workload_name])
    adapter = make_adapter(model_name)
    model = adapter.build_model(workload)
    return bench_common, workload, adapter, model, adapter.make_batch(workload.frames)


def run_one(args) -> int:
    """Child process: one model on one workload through the shared harness; JSON lines on stdout."""
    sys.path.insert(0, str(args.bench_dir))
    import bench_common

    from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap

    if not args.system_malloc:
        keep_tensor_buffers_in_heap()
    harness_args = ["--workloads", args.workloads, "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    rc = bench_common.main(make_adapter(args.models, args.device, args.model_file), harness_args)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "code": "mpnn_ip",
                "model": f"{args.models}-s",
                "workload": args.workloads,
                "measurement": "peak_rss_mib",
                "value": peak_mib,
            }
        ),
        flush=True,
    )
    if args.device.startswith("cuda"):
        import torch

        print(
            json.dumps(
                {
                    "code": "mpnn_ip",
                    "model": f"{args.models}-s",
                    "workload": args.workloads,
                    "measurement": "peak_gpu_mib",
                    "value": torch.cuda.max_memory_allocated() / 2**20,
                    "device": torch.cuda.get_device_name(),
                }
            ),
            flush=True,
        )
    return rc


def print_summary(records: list[dict], device: str = "cpu") -> None:
    """One table: our median seconds, the peers' measured medians and the speed-up over each.

    On a GPU the peers' columns stay empty (their medians are 2-thread CPU numbers) and the memory
    column is the peak GPU memory allocated by torch.
    """
    on_gpu = device.startswith("cuda")
    timing = {(r["model"], r["workload"], r["measurement"]): r for r in records if "median_s" in r}
    wanted = "peak_gpu_mib" if on_gpu else "peak_rss_mib"
    memory = {(r["model"], r["workload"]): r["value"] for r in records if r.get("measurement") == wanted}
    params = {(r["model"], r["workload"]): r["n_params"] for r in records if "n_params" in r}
    print(
        f"\n{'model':9s} {'workload':9s} {'measurement':18s} {'ours s':>9s} {'NequIP-s':>9s} {'MACE-s':>9s} "
        f"{'peer/ours':>9s} {'params':>8s} {'peak MiB':>8s}"
    )
    for (model, wl, meas), r in sorted(timing.items()):
        peers = None if on_gpu else PEER_SECONDS.get((wl, meas))
        peer_cols = f"{peers[0]:9.4f} {peers[1]:9.4f}" if peers else f"{'-':>9s} {'-':>9s}"
        matched = peers[0 if model.startswith("nequip") else 1] if peers else None
        ratio = f"{matched / r['median_s']:9.2f}" if matched else f"{'-':>9s}"
        print(
            f"{model:9s} {wl:9s} {meas:18s} {r['median_s']:9.4f} {peer_cols} {ratio} "
            f"{params.get((model, wl), 0):8d} {memory.get((model, wl), 0):8.0f}"
        )
    if on_gpu:
        devices = {r["device"] for r in records if "device" in r}
        print(f"\nDevice: {', '.join(sorted(devices)) or device}; 'peak MiB' = torch.cuda.max_memory_allocated.")
        return
    print(
        "\npeer/ours > 1: ours is faster than the matched peer (peer medians: PEER_SECONDS, measured on this "
        "project's 2-core machine; on another machine rerun ../shared/bench/run_peers.sh for a same-run ratio)."
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="nequip,mace")
    parser.add_argument("--workloads", default="mol27x16,cu256,cu2048")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the radius graph and model run there)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 2 repeats (smoke test)")
    parser.add_argument("--bench-dir", type=Path, default=Path(os.environ.get("MPNN_IP_BENCH_DIR", DEFAULT_BENCH_DIR)))
    parser.add_argument("--out", type=Path, help="also write every JSON line to this file")
    parser.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc settings as they are")
    parser.add_argument(
        "--model-file", default=None, help="one peer model file, imported (scripts/benchmark_import.py)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.bench_dir / "bench_common.py").is_file():
        parser.error(f"no bench_common.py in {args.bench_dir}: pass --bench-dir (the shared benchmark harness)")
    if args.child:
        return run_one(args)

    records, rc = [], 0
    for model in args.models.split(","):
        for wl in args.workloads.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                "--models",
                model,
                "--workloads",
                wl,
                "--threads",
                str(args.threads),
                "--bench-dir",
                str(args.bench_dir),
                "--device",
                args.device,
            ]
            cmd += (["--quick"] if args.quick else []) + (["--system-malloc"] if args.system_malloc else [])
            cmd += ["--model-file", args.model_file] if args.model_file else []
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            rc |= proc.returncode
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            records += [json.loads(line) for line in lines]
            if args.out:
                with args.out.open("a") as f:
                    f.write("\n".join(lines) + "\n")
    print_summary(records, args.device)
    return rc


if __name__ == "__main__":
    sys.exit(main())
