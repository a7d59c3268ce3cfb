"""Evaluate a potential on labelled frames: predictions, MAE/RMSE metrics, parity plots.

Used by ``mpnn-eval`` and by the training code after a fit. Metrics are masked by the
``has_energy`` / ``has_forces`` / ``has_stress`` flags of each frame, so partly labelled
files are fine. Quantities and units:

    energy_per_atom   eV/atom   per frame
    energy            eV        per frame (total energy)
    forces            eV/Å      per Cartesian component
    stress            eV/Å³     per tensor component (9 per frame)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

#: quantity -> unit, in the order they are reported.
QUANTITIES = {"energy_per_atom": "eV/atom", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³"}


def evaluate(
    model: torch.nn.Module,
    graphs_or_loader: Sequence | Iterable,
    batch_size: int = 16,
    compute_stress: bool | None = None,
    progress: bool = False,
) -> dict:
    """Run ``model`` over labelled frames and compare with the references.

    Args:
        model: a :class:`mpnn_ip.models.Potential` (any device/dtype; inputs are moved to it).
        graphs_or_loader: a list or Dataset of :class:`mpnn_ip.data.AtomicGraph`, a batch, or an iterable
            of batches (e.g. a ``DataLoader`` with ``collate_fn=collate``).
        batch_size: frames per forward pass when a list of graphs is given.
        compute_stress: ``None`` = only for batches where some frame has a stress label.
        progress: show a tqdm progress bar over batches.

    Returns: ``{"num_frames", "num_atoms", "metrics": {"forces_mae": float, ...},
    "units": QUANTITIES, "energy": {"pred", "ref", "mask", "num_atoms"} [B] arrays (eV),
    "forces": {"pred", "ref" [N,3] eV/Å, "mask" [N]}, "stress": {"pred", "ref" [B,3,3] eV/Å³,
    "mask" [B]} (only when computed), "extra": {key: [B] array}}`` for additional per-frame
    outputs of the model such as ``energy_uncertainty``. The model's train/eval mode is restored.
    """
    from tqdm import tqdm

    batches = _batches(graphs_or_loader, batch_size)
    device = _model_device(model)
    collected: dict[str, list] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
            batch = batch.to(device)
            stress = bool(batch.has_stress.any()) if compute_stress is None else bool(compute_stress)
            out = model(batch, compute_forces=True, compute_stress=stress)
            _collect(collected, out, batch, stress)
    finally:
        model.train(was_training)
    if not collected:
        from mpnn_ip.errors import DataError

        raise DataError("nothing to evaluate: the dataset has no frames")
    return _assemble(collected)


def _batches(source, batch_size: int):
    from torch_geometric.data import Batch

    from mpnn_ip.data import AtomicGraph, collate

    if isinstance(source, Batch):
        return [source]
    if isinstance(source, AtomicGraph):
        return [collate([source])]
    if isinstance(source, torch.utils.data.Dataset):
        source = [source[i] for i in range(len(source))]
    if isinstance(source, Sequence):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return [collate(source[i : i + batch_size]) for i in range(0, len(source), batch_size)]
    return source


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy()


def _collect(collected: dict, out: Mapping[str, torch.Tensor], batch, stress: bool) -> None:
    num_graphs = int(batch.num_graphs)
    n_atoms = torch.diff(batch.ptr)
    rows = {
        "energy_pred": _numpy(out["energy"]),
        "energy_ref": _numpy(batch.energy),
        "energy_mask": batch.has_energy.cpu().numpy(),
        "num_atoms": n_atoms.cpu().numpy(),
        "forces_pred": _numpy(out["forces"]),
        "forces_ref": _numpy(batch.forces),
        "forces_mask": batch.has_forces[batch.batch].cpu().numpy(),
    }
    if stress:
        rows["stress_pred"] = _numpy(out["stress"])
        rows["stress_ref"] = _numpy(batch.stress)
        rows["stress_mask"] = batch.has_stress.cpu().numpy()
    else:
        rows["stress_pred"] = np.full((num_graphs, 3, 3), np.nan)
        rows["stress_ref"] = _numpy(batch.stress)
        rows["stress_mask"] = np.zeros(num_graphs, dtype=bool)
    known = {"energy", "node_energy", "forces", "stress", "virial"}
    for key, value in out.items():
        if key not in known and isinstance(value, torch.Tensor) and value.shape[:1] == (num_graphs,):
            rows[f"extra:{key}"] = _numpy(value)
    for key, value in rows.items():
        collected.setdefault(key, []).append(value)


def _assemble(collected: dict) -> dict:
    cat = {key: np.concatenate(values) for key, values in collected.items()}
    num_atoms = cat["num_atoms"].astype(np.int64)
    results = {
        "num_frames": int(len(num_atoms)),
        "num_atoms": int(num_atoms.sum()),
        "units": dict(QUANTITIES),
        "energy": {
            "pred": cat["energy_pred"],
            "ref": cat["energy_ref"],
            "mask": cat["energy_mask"].astype(bool),
            "num_atoms": num_atoms,
        },
        "forces": {"pred": cat["forces_pred"], "ref": cat["forces_ref"], "mask": cat["forces_mask"].astype(bool)},
        "extra": {key.removeprefix("extra:"): value for key, value in cat.items() if key.startswith("extra:")},
    }
    if cat["stress_mask"].any():
        results["stress"] = {"pred": cat["stress_pred"], "ref": cat["stress_ref"], "mask": cat["stress_mask"].astype(bool)}
    results["metrics"] = compute_metrics(results)
    return results


def paired_values(results: Mapping) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{quantity: (predicted, reference)}`` flat arrays of the labelled entries only."""
    pairs = {}
    energy = results["energy"]
    mask = energy["mask"]
    if mask.any():
        n = energy["num_atoms"][mask]
        pairs["energy_per_atom"] = (energy["pred"][mask] / n, energy["ref"][mask] / n)
        pairs["energy"] = (energy["pred"][mask], energy["ref"][mask])
    forces = results["forces"]
    if forces["mask"].any():
        pairs["forces"] = (forces["pred"][forces["mask"]].ravel(), forces["ref"][forces["mask"]].ravel())
    stress = results.get("stress")
    if stress is not None and stress["mask"].any():
        pairs["stress"] = (stress["pred"][stress["mask"]].ravel(), stress["ref"][stress["mask"]].ravel())
    return pairs


def compute_metrics(results: Mapping) -> dict[str, float]:
    """``{"{quantity}_mae", "{quantity}_rmse", "{quantity}_count"}`` for each labelled quantity."""
    metrics: dict[str, float] = {}
    for quantity, (pred, ref) in paired_values(results).items():
        error = pred - ref
        metrics[f"{quantity}_mae"] = float(np.mean(np.abs(error)))
        metrics[f"{quantity}_rmse"] = float(np.sqrt(np.mean(error**2)))
        metrics[f"{quantity}_count"] = int(error.size)
    return metrics


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """A plain-text table: quantity, unit, MAE, RMSE, number of labelled values."""
    lines = [f"{'quantity':<16} {'unit':<8} {'MAE':>12} {'RMSE':>12} {'count':>8}"]
    for quantity, unit in QUANTITIES.items():
        if f"{quantity}_mae" not in metrics:
            continue
        lines.append(
            f"{quantity:<16} {unit:<8} {metrics[f'{quantity}_mae']:>12.6f} "
            f"{metrics[f'{quantity}_rmse']:>12.6f} {int(metrics[f'{quantity}_count']):>8d}"
        )
    if len(lines) == 1:
        lines.append("(no labelled quantities)")
    return "\n".join(lines)


def write_metrics(results: Mapping, path: str | Path, **extra) -> Path:
    """Write ``metrics.json``: metrics, units, frame/atom counts and any ``extra`` plain values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "metrics": {k: v for k, v in results["metrics"].items() if not (isinstance(v, float) and math.isnan(v))},
        "units": dict(QUANTITIES),
        "num_frames": results["num_frames"],
        "num_atoms": results["num_atoms"],
        **extra,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def parity_plots(results: Mapping, out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Predicted vs reference scatter plots (PNG) for every labelled quantity except total energy.

    Files: ``{prefix}parity_energy_per_atom.png``, ``{prefix}parity_forces.png`` and, with stress
    labels, ``{prefix}parity_stress.png``; each title gives MAE and RMSE in the quantity's unit.
    Returns the paths written.
    """
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for quantity, (pred, ref) in paired_values(results).items():
        if quantity == "energy":
            continue
        unit = QUANTITIES[quantity]
        error = pred - ref
        mae, rmse = float(np.mean(np.abs(error))), float(np.sqrt(np.mean(error**2)))
        fig = Figure(figsize=(4.5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        ax.scatter(ref, pred, s=6, alpha=0.5, edgecolors="none")
        low, high = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        pad = 0.05 * (high - low) or 0.5
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", lw=0.8, ls="--")
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
        ax.set_aspect("equal")
        label = quantity.replace("_", " ")
        ax.set_xlabel(f"reference {label} ({unit})")
        ax.set_ylabel(f"predicted {label} ({unit})")
        ax.set_title(f"{label}: MAE {mae:.4g}, RMSE {rmse:.4g} {unit}", fontsize=10)
        path = out_dir / f"{prefix}parity_{quantity}.png"
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths
