"""Energy offset after training: per-frame energy MAE against RMSE on hidden AcAc frames, with and without
the least-squares refit of MACE's fixed shift (``refit_energy_shift``).

    python scripts/benchmark_energy_offset.py [--minutes 15] [--models mace_small] [--out /tmp/energy_offset]
    python scripts/benchmark_energy_offset.py --runs mace_small:true nequip_small:true

Data: the first 150 frames of ``acac/train_300K.xyz`` (shared data folder: ``$MPNN_IP_SHARED_DATA`` or
``../shared/data``) are the training (100) and validation (50) frames, the other 350 300 K frames are hidden
(the test split). Each run is ``mpnn-train experiment=acac`` for ``--minutes`` of wall time on one thread,
pinned to its own core; the runs go side by side (one core each; ``--serial`` runs them one after another).
A constant offset shows as per-frame energy MAE ≈ RMSE; without one, MAE is well below RMSE (for Gaussian
errors MAE ≈ 0.8 RMSE, and the errors themselves are small).

Prints one JSON line per run: model, refit, epochs, and the test metrics on the hidden frames (energy MAE and
RMSE in meV per frame, energy per atom in meV/atom, forces RMSE in meV/Å), with the mean (the offset) and the
standard deviation of the signed per-frame energy errors of the tested checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

POOL, TRAIN, VAL = 150, 100, 50


def shared_data() -> Path:
    """The shared data folder (``$MPNN_IP_SHARED_DATA``, else ``../shared/data`` beside the repository)."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("MPNN_IP_SHARED_DATA", default))


def write_splits(out: Path) -> tuple[Path, Path]:
    """The training/validation pool and the hidden frames, as extxyz files in ``out``."""
    import ase.io

    frames = ase.io.read(shared_data() / "acac" / "train_300K.xyz", index=":")
    pool, hidden = out / "pool.xyz", out / "hidden.xyz"
    ase.io.write(pool, frames[:POOL], format="extxyz")
    ase.io.write(hidden, frames[POOL:], format="extxyz")
    return pool, hidden


def command(model: str, refit: bool, minutes: float, pool: Path, hidden: Path, run_dir: Path) -> list[str]:
    """The ``mpnn-train`` command line of one run."""
    seconds = int(minutes * 60)
    return [
        sys.executable,
        "-m",
        "mpnn_ip.cli.train",
        "experiment=acac",
        f"model={model}",
        f"data.train_path={pool}",
        f"data.test_path={hidden}",
        f"data.train_count={TRAIN}",
        f"data.val_count={VAL}",
        f"refit_energy_shift={str(refit).lower()}",
        f"+trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"hydra.run.dir={run_dir}",
    ]


def signed_errors(checkpoint: Path, hidden: Path):
    """Predicted minus reference energy (eV) of every hidden frame, in float64."""
    import ase.io
    import numpy as np
    import torch

    from mpnn_ip.checkpoint import load_model
    from mpnn_ip.data import AtomicGraph, collate

    model, frames, errors = load_model(checkpoint, dtype="float64"), ase.io.read(hidden, index=":"), []
    for start in range(0, len(frames), 50):
        chunk = frames[start : start + 50]
        with torch.no_grad():
            energy = model(collate([AtomicGraph.from_atoms(a) for a in chunk]), compute_forces=False)["energy"]
        errors.append(energy.numpy() - np.array([a.get_potential_energy() for a in chunk]))
    return np.concatenate(errors)


def summary(model: str, refit: bool, run_dir: Path, hidden: Path) -> dict:
    """The run's test metrics on the hidden frames, and the mean and spread of its signed errors, in meV."""
    report = json.loads((run_dir / "metrics.json").read_text())
    metrics = report["metrics"]
    errors = 1000 * signed_errors(Path(report["checkpoint_tested"]), hidden)
    return {
        "model": model,
        "refit_energy_shift": refit,
        "epochs": report["epochs_trained"],
        "hidden_frames": report["num_frames"],
        "energy_mae_meV_per_frame": round(1000 * metrics["energy_mae"], 2),
        "energy_rmse_meV_per_frame": round(1000 * metrics["energy_rmse"], 2),
        "energy_mean_error_meV_per_frame": round(float(errors.mean()), 2),
        "energy_error_std_meV_per_frame": round(float(errors.std()), 2),
        "energy_per_atom_mae_meV": round(1000 * metrics["energy_per_atom_mae"], 3),
        "forces_rmse_meV_per_A": round(1000 * metrics["forces_rmse"], 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--models", nargs="+", default=["mace_small"])
    parser.add_argument(
        "--runs", nargs="+", help="MODEL:REFIT pairs (e.g. mace_small:true nequip_small:true) instead of --models"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/energy_offset"))
    parser.add_argument("--serial", action="store_true", help="one run after another (else one core each)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pool, hidden = write_splits(args.out)
    runs = [(model, refit) for model in args.models for refit in (False, True)]
    if args.runs:
        runs = [(run.split(":")[0], run.split(":")[1].lower() == "true") for run in args.runs]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    processes = []
    for index, (model, refit) in enumerate(runs):
        run_dir = args.out / f"{model}_refit_{str(refit).lower()}"
        line = command(model, refit, args.minutes, pool, hidden, run_dir)
        cores = os.sched_getaffinity(0)
        core = sorted(cores)[index % len(cores)]
        log = open(args.out / f"{run_dir.name}.log", "w")  # noqa: SIM115 - closed after the run
        process = subprocess.Popen(["taskset", "-c", str(core), *line], env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append((model, refit, run_dir, process, log))
        if args.serial:
            process.wait()
    failed = 0
    for model, refit, run_dir, process, log in processes:
        code = process.wait()
        log.close()
        if code != 0:
            print(json.dumps({"model": model, "refit_energy_shift": refit, "exit": code, "log": log.name}))
            failed += 1
            continue
        print(json.dumps(summary(model, refit, run_dir, hidden)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
