"""Benchmark the on-disk graph store against reading files into memory.

    python scripts/benchmark_store.py --frames 20000 --workdir /tmp/store_bench

Makes ``--frames`` synthetic frames (the quickstart Cu-Au EMT frames repeated, each copy rattled
by 0.01 Å; labels copied), then reports:

* write: frames/s of ``write_store`` (streamed read, per-frame checks, neighbour counts within
  ``--r-max``, SQLite shards) and the store's size on disk;
* read: frames/s of ``store[i]`` in file order and in random order;
* epoch: frames/s and resident memory (RSS, MiB) of one training epoch through the data module,
  ``data=ondisk`` vs ``data=extxyz`` (in memory), each in a fresh process (``--mode``).

``--replicate K`` also measures reading and an on-disk epoch over a store of K times the frames,
made by repeating the written shards (writing is dominated by ASE's neighbour lists, ~0.05-0.1 s
per 32-atom frame on one core; this measures reading at scale without K times that).

Rates are per second of wall time and per second of this process's CPU time (``_cpu_s``: what a
busy shared machine does not distort; with ``--num-workers`` > 0 an epoch's CPU is in the workers).
A second run with the same ``--frames`` and ``--workdir`` reuses the store and measures reading only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_frames(path: Path, num_frames: int) -> float:
    """Write ``num_frames`` rattled copies of the quickstart frames to ``path`` (extxyz); returns seconds."""
    import ase.io
    import numpy as np
    from ase.calculators.singlepoint import SinglePointCalculator

    from mpnn_ip.data import default_dataset_path

    started = time.perf_counter()
    base = ase.io.read(default_dataset_path(), index=":")
    rng = np.random.default_rng(0)
    with open(path, "w") as handle:
        for k in range(num_frames):
            source = base[k % len(base)]
            atoms = source.copy()
            atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
            atoms.calc = SinglePointCalculator(atoms, **source.calc.results)
            ase.io.write(handle, atoms, format="extxyz")
    return time.perf_counter() - started


def epoch(mode: str, data: Path, store: Path, r_max: float, batch_size: int, num_workers: int) -> dict:
    """One training epoch through the data module of ``mode`` (``ondisk`` or ``memory``), in this process."""
    from mpnn_ip.data.datamodule import AtomicDataModule
    from mpnn_ip.data.ondisk import OnDiskDataModule

    before = rss_mib()  # libraries loaded: what remains is the data's
    started = time.perf_counter()
    if mode == "ondisk":
        module = OnDiskDataModule(store=str(store), batch_size=batch_size, num_workers=num_workers, r_max=r_max)
    else:
        module = AtomicDataModule(
            train_path=str(data), batch_size=batch_size, num_workers=num_workers, r_max=r_max, outlier_sigma=None
        )
    module.setup()
    setup_s = time.perf_counter() - started
    after_setup = rss_mib()
    started, cpu, frames, highest = time.perf_counter(), time.process_time(), 0, after_setup
    for batch in module.train_dataloader():
        frames += int(batch.num_graphs)
        highest = max(highest, rss_mib())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "mode": mode,
        "setup_s": round(setup_s, 2),
        "epoch_frames": frames,
        "epoch_frames_per_s": round(frames / seconds, 1),
        "epoch_frames_per_cpu_s": round(frames / cpu, 1),
        "rss_before_mib": round(before, 1),
        "rss_after_setup_mib": round(after_setup, 1),
        "rss_max_during_epoch_mib": round(highest, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def report(results: dict, key: str, value) -> None:
    """Record a result and show it at once (a long run shows its progress)."""
    results[key] = value
    print(f"{key}: {value}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--workdir", type=Path, default=Path("store_benchmark"))
    parser.add_argument("--r-max", type=float, default=5.0)
    parser.add_argument("--shard-size", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--replicate", type=int, default=1)
    parser.add_argument(
        "--mode", choices=("all", "ondisk", "memory"), default="all", help="internal: one epoch measurement"
    )
    parser.add_argument("--store", type=Path, help="internal: the store of --mode ondisk")
    args = parser.parse_args()
    data, store = args.workdir / f"frames_{args.frames}.xyz", args.workdir / f"store_{args.frames}"
    if args.mode != "all":
        print(json.dumps(epoch(args.mode, data, args.store or store, args.r_max, args.batch_size, args.num_workers)))
        return

    import numpy as np

    from mpnn_ip.data.store import GraphStore
    from mpnn_ip.data.store_writer import write_store

    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {"frames": args.frames}
    if not data.exists():
        report(results, "make_frames_s", round(make_frames(data, args.frames), 1))
    report(results, "input_mib", round(data.stat().st_size / 2**20, 1))
    started, cpu = time.perf_counter(), time.process_time()
    manifest, happened = write_store(store, str(data), read_options={}, r_max=[args.r_max], shard_size=args.shard_size)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    if not happened.startswith("reused"):  # a second run reuses the store and measures reading only
        report(results, "write_s", round(seconds, 1))
        report(results, "write_frames_per_s", round(manifest["num_frames"] / seconds, 1))
        report(results, "write_frames_per_cpu_s", round(manifest["num_frames"] / cpu, 1))
    report(results, "store_mib", round(sum(p.stat().st_size for p in store.iterdir()) / 2**20, 1))
    report(results, "shards", len(manifest["shards"]))
    stores = {"": store}
    if args.replicate > 1:
        stores[f"_x{args.replicate}"] = replicate(store, args.replicate)
    for suffix, folder in stores.items():
        graphs = GraphStore(folder)
        report(results, f"frames{suffix}", len(graphs))
        for name, order in (
            ("sequential", np.arange(len(graphs))),
            ("random", np.random.default_rng(0).permutation(len(graphs))),
        ):
            started, cpu = time.perf_counter(), time.process_time()
            for i in order:
                graphs[i]
            report(results, f"read_{name}_frames_per_s{suffix}", round(len(order) / (time.perf_counter() - started), 1))
            report(results, f"read_{name}_frames_per_cpu_s{suffix}", round(len(order) / (time.process_time() - cpu), 1))
    runs = [
        ("ondisk", store, ""),
        ("memory", store, ""),
        *(("ondisk", folder, suffix) for suffix, folder in stores.items() if suffix),
    ]
    for mode, folder, suffix in runs:
        command = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--frames",
            str(args.frames),
            "--workdir",
            str(args.workdir),
            "--store",
            str(folder),
            "--r-max",
            str(args.r_max),
            "--batch-size",
            str(args.batch_size),
            "--num-workers",
            str(args.num_workers),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        report(results, f"epoch_{mode}{suffix}", json.loads(output.strip().splitlines()[-1]))
    print(json.dumps(results, indent=1))


def replicate(store: Path, times: int) -> Path:
    """A store of ``times`` copies of ``store``'s shards (same frames repeated), next to it."""
    import shutil

    from mpnn_ip.data.store import MANIFEST, read_manifest, shard_name, summary_name

    manifest, out = read_manifest(store), store.with_name(f"{store.name}_x{times}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    shards, total = [], 0
    for _ in range(times):
        for shard in manifest["shards"]:
            number = len(shards)
            shutil.copyfile(store / shard["file"], out / shard_name(number))
            shutil.copyfile(store / shard["summary"], out / summary_name(number))
            shards.append({**shard, "file": shard_name(number), "summary": summary_name(number), "start": total})
            total += shard["count"]
    copy = {**manifest, "shards": shards, "num_frames": total, "parts": {"train": [0, total]}, "inputs": {}}
    (out / MANIFEST).write_text(json.dumps(copy))
    return out


if __name__ == "__main__":
    main()
