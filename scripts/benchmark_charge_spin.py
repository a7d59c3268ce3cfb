"""Charge and spin states learnt apart: the same Cu-Au cluster geometries at total charges 0 / +1 and
multiplicities 1 / 2 (:mod:`mpnn_ip.data.charge_spin_states`), trained with and without
``model.charge_spin_embedding`` at the same budget; energy and force errors per state on new geometries.

    python scripts/benchmark_charge_spin.py [--train 60] [--test 25] [--epochs 150] [--energy-weight 100]
                                            [--model nequip_tiny] [--out DIR]

Each run is ``mpnn-train`` on one thread (the two runs side by side, one core each); the training frames are
every state of ``--train`` geometries (90 % training, 10 % validation), the test frames every state of
``--test`` other geometries. Prints a markdown table and writes ``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def command(
    model: str, embedding: bool, epochs: int, energy_weight: float, data: Path, count: int, run_dir: Path
) -> list[str]:
    val = max(count // 10, 4)
    return [
        sys.executable,
        "-m",
        "mpnn_ip.cli.train",
        f"model={model}",
        f"model.charge_spin_embedding={str(embedding).lower()}",
        "data=extxyz",
        f"data.train_path={data}",
        f"data.train_count={count - val}",
        f"data.val_count={val}",
        "data.test_count=0",
        "data.batch_size=8",
        f"trainer.max_epochs={epochs}",
        f"loss.energy.weight={energy_weight}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"hydra.run.dir={run_dir}",
    ]


def errors_per_state(checkpoint: Path, frames) -> dict[str, dict[str, float]]:
    """``{state: {energy_mae_meV, energy_mae_meV_per_atom, forces_mae_meV_per_A}}`` of ``frames`` (float64)."""
    import numpy as np

    from mpnn_ip.calculators import MPNNCalculator

    calc = MPNNCalculator.from_checkpoint(checkpoint, dtype="float64")
    rows: dict[str, list] = {}
    for atoms in frames:
        reference_energy, reference_forces = atoms.get_potential_energy(), atoms.get_forces()
        probe = atoms.copy()
        probe.calc = calc
        error = probe.get_potential_energy() - reference_energy
        force_error = np.abs(probe.get_forces() - reference_forces).mean()
        rows.setdefault(atoms.info["config_type"], []).append((abs(error), abs(error) / len(atoms), force_error))
    return {
        state: {
            "energy_mae_meV": 1000 * float(np.mean([r[0] for r in values])),
            "energy_mae_meV_per_atom": 1000 * float(np.mean([r[1] for r in values])),
            "forces_mae_meV_per_A": 1000 * float(np.mean([r[2] for r in values])),
            "frames": len(values),
        }
        for state, values in sorted(rows.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=60, help="training + validation geometries (x4 states)")
    parser.add_argument("--test", type=int, default=25, help="test geometries (x4 states)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--model", default="nequip_tiny")
    parser.add_argument("--energy-weight", type=float, default=100.0, help="loss.energy.weight (forces: 10)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import ase.io

    from mpnn_ip.data.charge_spin_states import cluster_geometries, state_frames

    out = args.out or Path(tempfile.mkdtemp(prefix="charge_spin_"))
    out.mkdir(parents=True, exist_ok=True)
    train = state_frames(cluster_geometries(args.train, seed=0))
    test = state_frames(cluster_geometries(args.test, seed=1))
    data = out / "train.xyz"
    ase.io.write(data, train, format="extxyz")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    runs = {}
    for embedding in (True, False):
        run_dir = out / ("embedding" if embedding else "no_embedding")
        log = open(out / f"{run_dir.name}.log", "w")
        runs[embedding] = (
            run_dir,
            subprocess.Popen(
                command(args.model, embedding, args.epochs, args.energy_weight, data, len(train), run_dir),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
        )
    results = {}
    for embedding, (run_dir, process) in runs.items():
        if process.wait() != 0:
            sys.exit(f"training failed: see {out / (run_dir.name + '.log')}")
        results["embedding" if embedding else "no_embedding"] = errors_per_state(
            run_dir / "checkpoints" / "best.ckpt", test
        )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{args.model}, {args.epochs} epochs, {len(train)} training frames, {len(test)} test frames ({out})")
    print(
        "| state (charge, multiplicity) | embedding: energy MAE meV/atom | forces MAE meV/Å | "
        "no embedding: energy MAE meV/atom | forces MAE meV/Å |"
    )
    print("|---|---|---|---|---|")
    for state in results["embedding"]:
        on, off = results["embedding"][state], results["no_embedding"][state]
        print(
            f"| {state} | {on['energy_mae_meV_per_atom']:.1f} | {on['forces_mae_meV_per_A']:.1f} | "
            f"{off['energy_mae_meV_per_atom']:.1f} | {off['forces_mae_meV_per_A']:.1f} |"
        )


if __name__ == "__main__":
    main()
