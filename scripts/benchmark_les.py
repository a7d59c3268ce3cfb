"""Latent Ewald summation (LES) against the same model without it, on two charged clusters farther apart than r_max.

    python scripts/benchmark_les.py [--epochs 90] [--model nequip_tiny] [--out /tmp/benchmark_les.json]

Data (:mod:`mpnn_ip.data.charged_clusters`): frames of Na3Cl2 (+1 e) and Na2Cl3 (-1 e), centres of charge 7-14 Å
apart, closest atoms more than r_max = 4 Å apart; reference = Born-Mayer repulsion (cutoff 4 Å) + Coulomb of the
fixed ionic charges. ``--train``/``--val``/``--test`` frames (400/50/200) from one seed, written to extxyz in
``--work`` (energies and forces only). Each run is ``mpnn-train data=extxyz model=<model> model.r_max=4.0`` with
``model.long_range=les`` or without, for the SAME number of epochs (``--epochs``; ``--max-minutes`` is only a
safety cap on the wall time, and the epochs each run trained are reported), one thread each, side by side on
two cores (``--serial``: one after another). Both runs: batches of 5 frames, lr 0.01, loss weights energy 100
(per atom) and forces 10. The latent charges start near neutral, where the long-range energy's gradient with
respect to them vanishes; they leave it slowly (about 5,000 steps here), so short budgets show no gain.

Then, in float64 with each run's best checkpoint: energy MAE/RMSE (meV per frame, meV/atom) and force MAE/RMSE
(meV/Å) on the test frames, the latent net charge of each cluster, and the interaction curve ``E(d) - E(d_far)``
of one pair of relaxed clusters from just beyond r_max to ``d_far`` = 20 Å (centre distance) for the reference,
the LES model and the local model, with a least-squares fit of ``a (1/d - 1/d_far)`` to the LES and reference
curves (``a``, R², largest residual) and the local model's spread (max - min; 0 for a local model).

Prints a markdown table and writes all numbers as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

R_MAX = 4.0
FAR_DISTANCE = 20.0
#: The curve is also fitted from this centre distance on (Å), where the clusters' quadrupoles matter less.
FIT_FAR_FROM = 10.0


def write_splits(work: Path, sizes: tuple[int, int, int], seed: int):
    """Train/val/test extxyz files in ``work`` (labels: energy, forces) and the test frames themselves."""
    import ase.io

    from mpnn_ip.data.charged_clusters import charged_cluster_frames

    frames = charged_cluster_frames(sum(sizes), seed=seed, r_max=R_MAX)
    bounds = np.cumsum([0, *sizes])
    paths = {}
    for name, start, stop in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
        split = [atoms.copy() for atoms in frames[start:stop]]
        for atoms, original in zip(split, frames[start:stop]):
            atoms.calc = original.calc
            del atoms.info["dipole"]  # trained on energies and forces only
        paths[name] = work / f"{name}.xyz"
        ase.io.write(paths[name], split, format="extxyz")
    return paths, frames[bounds[2] :]


def command(args, paths: dict, long_range: bool, run_dir: Path) -> list[str]:
    """The ``mpnn-train`` command line of one run."""
    seconds = int(args.max_minutes * 60)
    return [
        sys.executable,
        "-m",
        "mpnn_ip.cli.train",
        "data=extxyz",
        f"model={args.model}",
        f"model.r_max={R_MAX}",
        f"model.long_range={'les' if long_range else 'null'}",
        f"data.train_path={paths['train']}",
        f"data.val_path={paths['val']}",
        f"data.test_path={paths['test']}",
        f"data.batch_size={args.batch_size}",
        f"optim.lr={args.lr}",
        f"loss.energy.weight={args.energy_weight}",
        f"loss.forces.weight={args.forces_weight}",
        f"seed={args.seed}",
        f"trainer.max_epochs={args.epochs}",
        f"+trainer.max_time=00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"hydra.run.dir={run_dir}",
    ]


def train(args, paths: dict) -> dict:
    """Both runs (LES and local); returns ``{name: (run_dir, wall seconds)}``, raises if one fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cores = sorted(os.sched_getaffinity(0))
    runs, processes = {}, []
    for index, (name, long_range) in enumerate((("les", True), ("local", False))):
        run_dir = args.work / f"run_{name}"
        line = command(args, paths, long_range, run_dir)
        log = open(args.work / f"run_{name}.log", "w")  # noqa: SIM115 - closed after the run
        pinned = ["taskset", "-c", str(cores[index % len(cores)]), *line]
        process = subprocess.Popen(pinned, env=env, stdout=log, stderr=subprocess.STDOUT)
        processes.append((name, run_dir, process, log, time.perf_counter()))
        if args.serial:
            process.wait()
    for name, run_dir, process, log, start in processes:
        code = process.wait()
        log.close()
        if code != 0:
            raise RuntimeError(f"the {name} run failed (exit {code}); its output: {log.name}")
        runs[name] = (run_dir, time.perf_counter() - start)
    return runs


def validation_history(run_dir: Path, every: int = 10) -> list[list[float]]:
    """[epoch, val energy RMSE meV per frame, val force RMSE meV/Å] every ``every`` epochs and at the last."""
    import csv

    with open(run_dir / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("val/energy_rmse")]
    picked = [row for row in rows if int(row["epoch"]) % every == every - 1 or row is rows[-1]]
    return [
        [int(row["epoch"]) + 1, 1000 * float(row["val/energy_rmse"]), 1000 * float(row["val/forces_rmse"])]
        for row in picked
    ]


def predict(model, frames) -> dict:
    """Energies [B] eV, forces [B, n, 3] eV/Å and, for LES, charges [B, n] e and dipoles [B, 3] e·Å, float64."""
    from mpnn_ip.data import AtomicGraph, collate, to_inputs

    out = model(to_inputs(collate([AtomicGraph.from_atoms(atoms) for atoms in frames])), compute_forces=True)
    shape = (len(frames), len(frames[0]))
    result = {"energy": out["energy"].detach().numpy(), "forces": out["forces"].detach().numpy().reshape(*shape, 3)}
    if "charges" in out:
        result["charges"] = out["charges"].detach().numpy().reshape(shape)
        result["dipole"] = out["dipole"].detach().numpy()
    return result


def test_errors(prediction: dict, frames) -> dict:
    """Energy and force errors on the test frames (meV per frame, meV/atom, meV/Å); latent cluster charges."""
    energy = 1000 * (prediction["energy"] - np.array([atoms.get_potential_energy() for atoms in frames]))
    forces = 1000 * (prediction["forces"] - np.stack([atoms.get_forces() for atoms in frames]))
    per_atom = energy / len(frames[0])
    errors = {
        "energy_mae_meV_per_frame": float(np.abs(energy).mean()),
        "energy_rmse_meV_per_frame": float(np.sqrt((energy**2).mean())),
        "energy_mae_meV_per_atom": float(np.abs(per_atom).mean()),
        "energy_rmse_meV_per_atom": float(np.sqrt((per_atom**2).mean())),
        "forces_mae_meV_per_A": float(np.abs(forces).mean()),
        "forces_rmse_meV_per_A": float(np.sqrt((forces**2).mean())),
    }
    if "charges" in prediction:
        clusters = prediction["charges"][:, :5].sum(axis=1), prediction["charges"][:, 5:].sum(axis=1)
        dipoles = np.stack([atoms.info["dipole"] for atoms in frames])
        errors["latent_charge_cluster_a_e"] = [float(clusters[0].mean()), float(clusters[0].std())]
        errors["latent_charge_cluster_b_e"] = [float(clusters[1].mean()), float(clusters[1].std())]
        errors["dipole_mae_eA_untrained"] = float(np.abs(prediction["dipole"] - dipoles).mean())
    return errors


def fit_inverse_distance(distances: np.ndarray, interaction: np.ndarray, shortest: float = 0.0) -> dict:
    """Least squares of ``a (1/d - 1/d_far)`` to ``interaction`` (meV) at ``d >= shortest``: a (meV Å), R², largest
    residual (meV)."""
    keep = distances >= shortest
    distances, interaction = distances[keep], interaction[keep]
    basis = 1 / distances - 1 / FAR_DISTANCE
    a = float(basis @ interaction / (basis @ basis))
    residual = interaction - a * basis
    total = ((interaction - interaction.mean()) ** 2).sum()
    return {
        "a_meV_A": a,
        "r_squared": float(1 - (residual**2).sum() / total),
        "max_residual_meV": float(np.abs(residual).max()),
    }


def interaction_curve(models: dict, points: int) -> dict:
    """``E(d) - E(d_far)`` (meV) of the reference and each model, from just beyond r_max to ``d_far``."""
    from mpnn_ip.data.charged_clusters import cluster_interaction_curve, contact_distance

    distances = np.linspace(contact_distance(r_max=R_MAX) + 0.05, FAR_DISTANCE, points)
    frames = cluster_interaction_curve(distances, r_max=R_MAX)
    energies = {"reference": np.array([atoms.get_potential_energy() for atoms in frames])}
    energies |= {name: predict(model, frames)["energy"] for name, model in models.items()}
    curve = {name: 1000 * (values - values[-1]) for name, values in energies.items()}
    return {
        "centre_distance_A": distances.tolist(),
        "closest_intercluster_distance_A": [atoms.info["closest_intercluster_distance"] for atoms in frames],
        "interaction_meV": {name: values.tolist() for name, values in curve.items()},
        "fit_reference": fit_inverse_distance(distances, curve["reference"]),
        "fit_les": fit_inverse_distance(distances, curve["les"]),
        f"fit_reference_beyond_{FIT_FAR_FROM:g}A": fit_inverse_distance(distances, curve["reference"], FIT_FAR_FROM),
        f"fit_les_beyond_{FIT_FAR_FROM:g}A": fit_inverse_distance(distances, curve["les"], FIT_FAR_FROM),
        "les_minus_reference_rms_meV": float(np.sqrt(((curve["les"] - curve["reference"]) ** 2).mean())),
        "local_spread_meV": float(np.ptp(curve["local"])),
    }


def markdown(results: dict) -> str:
    """The test errors and the interaction curve as markdown tables."""
    runs, curve = results["runs"], results["curve"]
    rows = [
        "| model | epochs | wall (s) | E MAE (meV/atom) | E RMSE (meV/atom) | E MAE (meV/frame) | E RMSE (meV/frame) "
        "| F MAE (meV/Å) | F RMSE (meV/Å) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        e = run["test"]
        rows.append(
            f"| {run['label']} | {run['epochs']} | {run['wall_s']:.0f} | {e['energy_mae_meV_per_atom']:.2f} "
            f"| {e['energy_rmse_meV_per_atom']:.2f} | {e['energy_mae_meV_per_frame']:.1f} "
            f"| {e['energy_rmse_meV_per_frame']:.1f} | {e['forces_mae_meV_per_A']:.1f} | {e['forces_rmse_meV_per_A']:.1f} |"
        )
    rows += ["", "| d (Å) | closest (Å) | reference (meV) | LES (meV) | local (meV) |", "|---|---|---|---|---|"]
    energies = curve["interaction_meV"]
    for index, distance in enumerate(curve["centre_distance_A"]):
        rows.append(
            f"| {distance:.2f} | {curve['closest_intercluster_distance_A'][index]:.2f} "
            f"| {energies['reference'][index]:.1f} | {energies['les'][index]:.1f} | {energies['local'][index]:.3f} |"
        )
    rows += [
        "",
        f"| fit of a (1/d - 1/{FAR_DISTANCE:g}) | a (meV Å) | R² | largest residual (meV) |",
        "|---|---|---|---|",
    ]
    for what, suffix in (("", ""), (f", d >= {FIT_FAR_FROM:g} Å", f"_beyond_{FIT_FAR_FROM:g}A")):
        for name in ("reference", "les"):
            fit = curve[f"fit_{name}{suffix}"]
            rows.append(
                f"| {name}{what} | {fit['a_meV_A']:.0f} | {fit['r_squared']:.5f} | {fit['max_residual_meV']:.1f} |"
            )
    rows += [
        "",
        f"LES - reference RMS over the curve: {curve['les_minus_reference_rms_meV']:.1f} meV; local model's spread "
        f"beyond r_max: {curve['local_spread_meV']:.2e} meV.",
    ]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nequip_tiny", help="model preset of both runs")
    parser.add_argument("--epochs", type=int, default=90, help="training epochs of each run (the shared budget)")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="wall-time cap of each run (safety)")
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--val", type=int, default=50)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--energy-weight", type=float, default=100.0, help="loss.energy.weight (energy per atom)")
    parser.add_argument("--forces-weight", type=float, default=10.0, help="loss.forces.weight")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and of training")
    parser.add_argument("--curve-points", type=int, default=15)
    parser.add_argument("--work", type=Path, default=Path("/tmp/benchmark_les"), help="data files and run folders")
    parser.add_argument("--out", type=Path, default=Path("/tmp/benchmark_les.json"), help="JSON of the results")
    parser.add_argument("--serial", action="store_true", help="one run after another (else one core each)")
    args = parser.parse_args(argv)

    import torch

    from mpnn_ip.checkpoint import load_model

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    paths, test_frames = write_splits(args.work, (args.train, args.val, args.test), args.seed)
    trained = train(args, paths)
    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": {}}
    models = {}
    for name, (run_dir, wall) in trained.items():
        report = json.loads((run_dir / "metrics.json").read_text())
        models[name] = load_model(report["checkpoint_tested"], dtype="float64")
        results["runs"][name] = {
            "label": f"{args.model}{' + LES' if name == 'les' else ''}",
            "epochs": report["epochs_trained"],
            "wall_s": wall,
            "parameters": sum(p.numel() for p in models[name].parameters()),
            "test": test_errors(predict(models[name], test_frames), test_frames),
            "validation_every_10_epochs": validation_history(run_dir),
        }
    results["curve"] = interaction_curve(models, args.curve_points)
    print(markdown(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
