#!/usr/bin/env python
"""Resident memory over a long training run: does ``mpnn-train`` leak?

Runs ``mpnn-train experiment=quickstart trainer.max_epochs=50 logger=csv`` in a subprocess
(WANDB_MODE=disabled), reads the per-epoch resident set size that ``ResidentMemoryMonitor`` (on by
default, ``callbacks.memory``) logs to ``metrics.csv``, and prints the curve every 5 epochs, RSS after
the first warm-up epochs (10) and at the end, the least-squares slope over the remaining epochs
(MB/epoch), the growth over them (end minus start, and slope x epochs), the peak RSS and the wall time.
The child's RSS is also sampled from outside every ``--sample-interval`` s (set-up, validation and the
final test included), so growth outside the training epochs shows as well.

Exits 1 when the growth over the last epochs (slope x epochs: end-minus-start alone swings by the
allocator's noise, about +-10 MB on the quickstart) exceeds ``--max-growth-mb``, and 2 when the run
ended before ``--epochs``, so it works as a check.

    python scripts/benchmark_memory.py                 # 50 epochs of the quickstart (~10 min on 2 cores)
    python scripts/benchmark_memory.py --threads 1     # faster when other jobs share the cores
    python scripts/benchmark_memory.py --epochs 100 --model mace_tiny --out memory.json
    python scripts/benchmark_memory.py --epochs 3 --max-growth-mb 1e9   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD_CODE = "import sys; from mpnn_ip.cli.train import main; sys.argv[0] = 'mpnn-train'; main()"


def analyse(rss_mb: list[float], warmup_epochs: int = 10) -> dict:
    """Statistics of a per-epoch RSS curve (``rss_mb[i]`` = RSS after epoch ``i + 1``).

    The window is epochs ``warmup_epochs .. len(rss_mb)`` (1-based, both ends included), i.e. the last
    ``len(rss_mb) - warmup_epochs`` epochs; ``warmup_epochs`` is clamped so the window has 2 points.
    Returns ``start_epoch``, ``end_epoch``, ``rss_start_mb``, ``rss_end_mb``, ``growth_mb`` (end - start),
    ``slope_mb_per_epoch`` (least squares over the window), ``fitted_growth_mb`` (slope x epochs),
    ``window_min_mb``, ``window_max_mb``.
    """
    n = len(rss_mb)
    if n < 2:
        raise ValueError(f"need RSS for at least 2 epochs, got {n}")
    start = min(max(int(warmup_epochs), 1), n - 1)  # 1-based epoch where the window starts
    ys = [float(v) for v in rss_mb[start - 1 :]]
    xs = list(range(start, n + 1))
    x_mean = sum(xs) / len(xs)
    y_mean = sum(ys) / len(ys)
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sxx
    return {
        "start_epoch": start,
        "end_epoch": n,
        "rss_start_mb": ys[0],
        "rss_end_mb": ys[-1],
        "growth_mb": ys[-1] - ys[0],
        "slope_mb_per_epoch": slope,
        "fitted_growth_mb": slope * (n - start),
        "window_min_mb": min(ys),
        "window_max_mb": max(ys),
    }


def read_epoch_memory(metrics_csv: Path) -> tuple[list[float], list[float]]:
    """``(rss, peak)`` per epoch (MB, epoch order) from the ``memory/*`` columns of a CSV-logger file."""
    per_epoch: dict[int, tuple[float, float]] = {}
    with open(metrics_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            rss = row.get("memory/rss_mb") or ""
            if not rss:
                continue
            peak = row.get("memory/peak_rss_mb") or "nan"
            per_epoch[int(float(row["epoch"]))] = (float(rss), float(peak))
    epochs = sorted(per_epoch)
    if epochs != list(range(len(epochs))):
        raise RuntimeError(f"{metrics_csv}: memory/rss_mb missing for some epochs (found {epochs})")
    return [per_epoch[e][0] for e in epochs], [per_epoch[e][1] for e in epochs]


def _proc_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


class OutsideSampler(threading.Thread):
    """Samples a process's VmRSS every ``interval`` s from ``/proc/<pid>/status`` (Linux; no-op elsewhere)."""

    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            rss = _proc_rss_mb(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - t0, rss))
            self.stop.wait(self.interval)


def run_training(
    epochs: int, model: str | None, run_dir: Path, extra: list[str], interval: float, threads: int | None = None
) -> dict:
    """``mpnn-train experiment=quickstart`` for ``epochs`` epochs into ``run_dir``; wall time and outside samples."""
    args = [
        "experiment=quickstart",
        f"trainer.max_epochs={epochs}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"hydra.run.dir={run_dir}",
        *([f"model={model}"] if model else []),
        *extra,
    ]
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "benchmark_memory.log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        sampler = OutsideSampler(proc.pid, interval)
        sampler.start()
        returncode = proc.wait()
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - start
    if returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"mpnn-train {' '.join(args)} failed ({returncode}); log {log_path}:\n{tail}")
    return {"args": args, "wall_s": wall, "outside_samples": sampler.samples, "log": str(log_path)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (default 50)")
    parser.add_argument("--model", default=None, help="model preset (default: the quickstart's, nequip_tiny)")
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=10,
        help="epochs left out of the growth window (default 10: the window is epochs 10..50)",
    )
    parser.add_argument(
        "--max-growth-mb",
        type=float,
        default=20.0,
        help="fail (exit 1) when slope x epochs over the window exceeds this (default 20 MB)",
    )
    parser.add_argument("--run-dir", type=Path, default=None, help="run folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=None, help="write the curve and the numbers as JSON here")
    parser.add_argument("--every", type=int, default=5, help="print every N-th epoch of the curve (default 5)")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="outside RSS sampling period (s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS of the training (default: inherited; 1 is faster on a busy machine)",
    )
    parser.add_argument("overrides", nargs="*", help="extra mpnn-train overrides (e.g. data.batch_size=8)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2")

    with tempfile.TemporaryDirectory(prefix="mpnn_memory_") as tmp:
        run_dir = args.run_dir.resolve() if args.run_dir else Path(tmp) / "run"
        run = run_training(args.epochs, args.model, run_dir, args.overrides, args.sample_interval, args.threads)
        rss, peak = read_epoch_memory(run_dir / "metrics.csv")
        if len(rss) != args.epochs:  # stopped early (a signal, early stopping, max_time): not the run asked for
            tail = Path(run["log"]).read_text()[-3000:]
            print(f"{tail}\nFAIL: {len(rss)} epochs logged, {args.epochs} asked for", file=sys.stderr)
            return 2
    stats = analyse(rss, args.warmup_epochs)
    outside = [mb for _, mb in run["outside_samples"]]
    growth = stats["fitted_growth_mb"]  # the fit over all the window's epochs, not two noisy end points
    passed = growth <= args.max_growth_mb

    print(f"mpnn-train {' '.join(a for a in run['args'] if not a.startswith('hydra.'))}")
    print(f"\n{'epoch':>5s} {'RSS MB':>9s} {'peak MB':>9s}")
    for i, (r, p) in enumerate(zip(rss, peak), start=1):
        if i == 1 or i % args.every == 0 or i == len(rss):
            print(f"{i:5d} {r:9.1f} {p:9.1f}")
    s, e, span = stats["start_epoch"], stats["end_epoch"], stats["end_epoch"] - stats["start_epoch"]
    print(f"\nRSS at epoch {s}:{'':<14s}{stats['rss_start_mb']:9.1f} MB")
    print(f"RSS at epoch {e}:{'':<14s}{stats['rss_end_mb']:9.1f} MB")
    print(f"range over epochs {s}-{e}:{'':<6s}{stats['window_min_mb']:9.1f} .. {stats['window_max_mb']:.1f} MB")
    print(f"slope over epochs {s}-{e}:{'':<6s}{stats['slope_mb_per_epoch']:9.3f} MB/epoch")
    print(
        f"growth over last {span} epochs:{'':<3s}{stats['growth_mb']:9.1f} MB (end - start), "
        f"{stats['fitted_growth_mb']:.1f} MB (slope x {span})"
    )
    print(f"peak RSS (VmHWM):{'':<13s}{max(peak):9.1f} MB")
    if outside:
        print(
            f"outside samples:{'':<14s}{len(outside):9d} (every {args.sample_interval:g} s; max {max(outside):.1f} MB, "
            f"last {outside[-1]:.1f} MB)"
        )
    print(f"wall time:{'':<20s}{run['wall_s']:9.1f} s ({run['wall_s'] / len(rss):.2f} s/epoch incl. set-up and test)")
    verdict = "PASS" if passed else "FAIL"
    print(
        f"\n{verdict}: growth {growth:.1f} MB (slope x {span}) over the last {span} epochs "
        f"(limit {args.max_growth_mb:g} MB)"
    )

    if args.out:
        record = {
            "command": ["mpnn-train", *run["args"]],
            "epochs": len(rss),
            "rss_mb": rss,
            "peak_rss_mb": peak,
            **stats,
            "peak_mb": max(peak),
            "wall_s": run["wall_s"],
            "max_growth_mb": args.max_growth_mb,
            "passed": passed,
            "outside_samples": run["outside_samples"],
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"Curve: {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
