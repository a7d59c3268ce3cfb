#!/usr/bin/env python
"""Speed on the same weights: an imported model in mpnn_ip against the original package (prints numbers).

    python scripts/benchmark_import.py                                  # both families, 3BPA x16 and Cu 2,048
    python scripts/benchmark_import.py --families mace --workloads mol27x16 --quick --md-steps 0
    MACE_PY=../peers/mace/bin/python NEQUIP_PY=../peers/nequip/bin/python python scripts/benchmark_import.py

1. The peers' venvs make the models at benchmark time (``scripts/benchmark_import_peer.py make-*``): a
   foundation-size MACE (128x0e+128x1o, max_ell 3, correlation 3, 89 elements, random weights) and a
   NequIP of the harness size (nequip-s) as a real nequip-train checkpoint. Nothing is committed.
2. Energy+forces (and the other harness measurements) on the shared workloads (``../shared/bench``):
   the original in its own venv with its own data path, ours through ``mpnn_ip.interop.import_model``
   (float32 like the harness), each in its own process, one after the other, same machine.
3. MD steps/s through the two ASE calculators (``scripts/benchmark_md.py --model-file``; Cu, NVE).
Ratio = original / ours (> 1: ours is faster). Compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO.parent / "peers"
FILES = {"mace": "mace_foundation.model", "nequip": "nequip_s.ckpt"}


def json_lines(command: list[str], env: dict | None = None) -> list[dict]:
    """Run ``command``; its JSON lines (stderr passed through)."""
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        print(f"# {' '.join(command[:4])}... exited {proc.returncode}", file=sys.stderr)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def peer_python(family: str, given: str | None) -> str:
    python = given or os.environ.get(f"{family.upper()}_PY") or str(PEERS / family / "bin" / "python")
    if not Path(python).exists():
        raise SystemExit(
            f"no python for {family}: pass --{family}-python (a venv with {family}), or set {family.upper()}_PY"
        )
    return python


def make_model(family: str, python: str, folder: Path) -> Path:
    path = folder / FILES[family]
    if not path.exists():
        subprocess.run(
            [python, str(REPO / "scripts" / "benchmark_import_peer.py"), f"make-{family}", str(folder)], check=True
        )
    return path


def harness_rows(family: str, python: str, model_file: Path, args) -> list[dict]:
    """Harness records of the original (code = family) and ours (code = mpnn_ip), per workload."""
    quick = ["--quick"] if args.quick else []
    rows = []
    for workload in args.workloads.split(","):
        rows += json_lines(
            [
                python,
                str(REPO / "scripts" / "benchmark_import_peer.py"),
                f"time-{family}",
                str(model_file),
                "--workloads",
                workload,
                "--threads",
                str(args.threads),
                *quick,
            ]
        )
        rows += json_lines(
            [
                sys.executable,
                str(REPO / "scripts" / "benchmark.py"),
                "--child",
                "--models",
                family,
                "--workloads",
                workload,
                "--threads",
                str(args.threads),
                "--model-file",
                str(model_file),
                *quick,
            ]
        )
    return rows


def md_rows(family: str, python: str, model_file: Path, args) -> list[dict]:
    common = [
        "--model-file",
        str(model_file),
        "--atoms",
        str(args.md_atoms),
        "--steps",
        str(args.md_steps),
        "--threads",
        str(args.threads),
    ]
    script = str(REPO / "scripts" / "benchmark_md.py")
    return json_lines([python, script, "--code", family, *common]) + json_lines(
        [sys.executable, script, "--code", "ours", *common]
    )


def print_table(family: str, rows: list[dict], md: list[dict]) -> None:
    timing = {(r["code"], r["workload"], r["measurement"]): r["median_s"] for r in rows if "median_s" in r}
    print(f"\n{family}: same weights ({FILES[family]}), median seconds")
    print(f"{'workload':10s} {'measurement':18s} {'original':>10s} {'ours':>10s} {'original/ours':>14s}")
    for (code, workload, measurement), seconds in sorted(timing.items()):
        if code != "mpnn_ip" or measurement == "nl":
            continue
        original = timing.get((family, workload, measurement))
        ratio = f"{original / seconds:14.2f}" if original else f"{'-':>14s}"
        print(f"{workload:10s} {measurement:18s} {original or float('nan'):10.4f} {seconds:10.4f} {ratio}")
    by_code = {r["code"]: r for r in md}
    if family in by_code and "ours" in by_code:
        theirs, ours = by_code[family]["steps_per_s"], by_code["ours"]["steps_per_s"]
        print(
            f"{'md':10s} {'steps/s Cu ' + str(by_code['ours']['atoms']):18s} {theirs:10.3f} {ours:10.3f} {ours / theirs:14.2f}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="mace,nequip")
    parser.add_argument("--workloads", default="mol27x16,cu2048")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 2 repeats (the harness's quick protocol)")
    parser.add_argument("--md-atoms", type=int, default=2048)
    parser.add_argument("--md-steps", type=int, default=5, help="timed MD steps per code (0: no MD)")
    parser.add_argument("--mace-python", default=None)
    parser.add_argument("--nequip-python", default=None)
    parser.add_argument("--dir", type=Path, default=Path("outputs/benchmark_import"), help="where the made models go")
    parser.add_argument("--out", type=Path, help="also write every record as JSON lines here")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    everything = []
    for family in args.families.split(","):
        python = peer_python(family, getattr(args, f"{family}_python"))
        model_file = make_model(family, python, args.dir)
        rows = harness_rows(family, python, model_file, args)
        md = md_rows(family, python, model_file, args) if args.md_steps > 0 else []
        print_table(family, rows, md)
        everything += rows + md
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in everything))
    return 0


if __name__ == "__main__":
    sys.exit(main())
