"""Evaluate a potential on labelled frames: predictions, MAE/RMSE metrics, parity plots.

Used by ``mpnn-eval`` and by the training code after a fit. Metrics are masked by the
``has_energy`` / ``has_forces`` / ``has_stress`` flags of each frame, so partly labelled
files are fine. The quantities, their units and how each is paired with its label are those of
:mod:`mpnn_ip.outputs`, the same as the training metrics use:

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

from mpnn_ip.outputs import LABELLED_OUTPUTS, QUANTITY_UNITS, labelled_outputs, labels, paired_values


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
    "units": QUANTITY_UNITS, "energy": {"pred", "ref", "mask", "num_atoms"} [B] arrays (eV),
    "forces": {"pred", "ref" [N,3] eV/Å, "mask" [N]}, "stress": {"pred", "ref" [B,3,3] eV/Å³,
    "mask" [B]} (only when computed for some batch), "extra": {key: [B] array}}`` for additional
    per-frame outputs of the model such as ``energy_uncertainty``. Arrays are float64; predictions
    of a batch the model did not compute an output for are NaN and masked out.
    The model's train/eval mode is restored.
    """
    from tqdm import tqdm

    batches = _batches(graphs_or_loader, batch_size)
    device = _model_device(model)
    collected: dict[str, dict[str, list]] = {}
    frame_extras = [name for name, (per, _) in getattr(model, "extra_outputs", {}).items() if per == "frame"]
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
            batch = batch.to(device)
            stress = bool(batch.has_stress.any()) if compute_stress is None else bool(compute_stress)
            out = model(batch, compute_forces=True, compute_stress=stress)
            _collect(collected, out, batch, frame_extras)
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


def _collect(collected: dict[str, dict[str, list]], out: Mapping[str, torch.Tensor], batch, frame_extras) -> None:
    """Append the batch's predictions, references and masks (float64 numpy) to ``collected``, and the
    per-frame extra outputs the model declares (``frame_extras``).

    ``collected["computed"]`` lists the outputs the model returned for some batch.
    """
    labelled = labelled_outputs(out, batch, dtype=torch.float64)
    for output in LABELLED_OUTPUTS:
        entry = labelled.get(output)
        if entry is None:  # not computed for this batch (stress of frames without stress labels)
            entry = labels(batch, output, torch.float64)
            entry.update(pred=torch.full_like(entry["ref"], math.nan), mask=torch.zeros_like(entry["mask"]))
        for key, value in entry.items():
            collected.setdefault(output, {}).setdefault(key, []).append(value.detach().cpu().numpy())
    collected.setdefault("computed", {}).update(dict.fromkeys(labelled))
    extra = collected.setdefault("extra", {})
    for key in frame_extras:
        extra.setdefault(key, []).append(out[key].detach().to("cpu", torch.float64).numpy())


def _assemble(collected: dict[str, dict[str, list]]) -> dict:
    arrays = {
        name: {key: np.concatenate(values) for key, values in collected[name].items()}
        for name in (*LABELLED_OUTPUTS, "extra")
    }
    num_atoms = arrays["energy"]["num_atoms"]
    results = {
        "num_frames": int(len(num_atoms)),
        "num_atoms": int(num_atoms.sum()),
        "units": dict(QUANTITY_UNITS),
        **{output: arrays[output] for output in LABELLED_OUTPUTS if output in collected["computed"]},
        "extra": arrays["extra"],
    }
    results["metrics"] = compute_metrics(results)
    return results


def compute_metrics(results: Mapping) -> dict[str, float]:
    """``{"{quantity}_mae", "{quantity}_rmse", "{quantity}_count"}`` for each labelled quantity.

    ``results``: those of :func:`evaluate` (or any dict of ``{output: {"pred", "ref", "mask", ...}}``).
    """
    metrics: dict[str, float] = {}
    for quantity, (pred, ref) in paired_values(results).items():
        metrics[f"{quantity}_mae"], metrics[f"{quantity}_rmse"] = _mae_rmse(pred - ref)
        metrics[f"{quantity}_count"] = int(pred.size)
    return metrics


def _mae_rmse(error: np.ndarray) -> tuple[float, float]:
    return float(np.mean(np.abs(error))), float(np.sqrt(np.mean(error**2)))


def format_metrics_table(metrics: Mapping[str, float]) -> str:
    """A plain-text table: quantity, unit, MAE, RMSE, number of labelled values."""
    lines = [f"{'quantity':<16} {'unit':<8} {'MAE':>12} {'RMSE':>12} {'count':>8}"]
    for quantity, unit in QUANTITY_UNITS.items():
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
        "units": dict(QUANTITY_UNITS),
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
        unit = QUANTITY_UNITS[quantity]
        mae, rmse = _mae_rmse(pred - ref)
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
