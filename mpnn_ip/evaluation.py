"""Evaluate a potential on labelled frames: predictions, MAE/RMSE metrics, parity plots.

Used by ``mpnn-eval`` and by the training code after a fit. Metrics are masked by the
``has_energy`` / ``has_forces`` / ``has_stress`` flags of each frame, so partly labelled
files are fine. The quantities, their units and how each is paired with its label are those of
:mod:`mpnn_ip.outputs`, the same as the training metrics use:

    energy_per_atom   eV/atom   per frame
    energy            eV        per frame (total energy)
    forces            eV/Å      per Cartesian component
    stress            eV/Å³     per tensor component (9 per frame)
    dipole            e·Å       per Cartesian component (frames without periodicity; models with latent charges)

and those of labels added with :func:`mpnn_ip.outputs.register_label` (their results hold
``{label: {"pred", "ref", "mask"}}`` like forces and stress).

A model's declared uncertainties (``energy_uncertainty`` [B] eV of a committee or a GAP,
``forces_uncertainty`` [N] eV/Å of a committee) are compared with the errors frame by frame
(:func:`per_frame_table`, :func:`uncertainty_metrics`, :func:`error_vs_uncertainty_plot`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

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
    "mask" [B]} (only when computed for some batch), "extra": {key: [B, ...] array},
    "atom_extra": {key: [N, ...] array}}``: the extra outputs the model declares, per frame (e.g.
    ``energy_uncertainty``) and per atom (e.g. ``forces_uncertainty``); ``metrics`` then also holds
    :func:`uncertainty_metrics`. Arrays are float64; predictions
    of a batch the model did not compute an output for are NaN and masked out.
    The model's train/eval mode is restored.
    """
    from tqdm import tqdm

    batches = _batches(graphs_or_loader, batch_size)
    device = _model_device(model)
    collected: dict[str, dict[str, list]] = {}
    declared = getattr(model, "extra_outputs", {})
    extras = {
        kind: [name for name, (per, _) in declared.items() if per == rows]
        for kind, rows in (("extra", "frame"), ("atom_extra", "atom"))
    }
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress, leave=False):
            batch = batch.to(device)
            stress = bool(batch.has_stress.any()) if compute_stress is None else bool(compute_stress)
            out = model(batch, compute_forces=True, compute_stress=stress)
            _collect(collected, out, batch, extras)
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


def _collect(collected: dict[str, dict[str, list]], out: Mapping[str, torch.Tensor], batch, extras) -> None:
    """Append the batch's predictions, references and masks (float64 numpy) to ``collected``, and the
    extra outputs the model declares (``extras``: ``{"extra": per-frame names, "atom_extra": per-atom names}``).

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
    for kind, names in extras.items():
        found = collected.setdefault(kind, {})
        for key in names:
            if key in out:  # a committee returns its force spread only with forces
                found.setdefault(key, []).append(out[key].detach().to("cpu", torch.float64).numpy())


def _assemble(collected: dict[str, dict[str, list]]) -> dict:
    arrays = {
        name: {key: np.concatenate(values) for key, values in collected[name].items()}
        for name in (*LABELLED_OUTPUTS, "extra", "atom_extra")
    }
    num_atoms = arrays["energy"]["num_atoms"]
    results = {
        "num_frames": int(len(num_atoms)),
        "num_atoms": int(num_atoms.sum()),
        "units": dict(QUANTITY_UNITS),
        **{output: arrays[output] for output in LABELLED_OUTPUTS if output in collected["computed"]},
        "extra": arrays["extra"],
        "atom_extra": arrays["atom_extra"],
    }
    results["metrics"] = compute_metrics(results) | uncertainty_metrics(results)
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
    for key, unit in (("energy_uncertainty_mean", "eV"), ("forces_uncertainty_mean", "eV/Å")):
        if key in metrics:
            lines.append(f"mean {key.removesuffix('_mean').replace('_', ' ')}: {metrics[key]:.6f} {unit}")
    for _, _, key, _ in ERROR_UNCERTAINTY_PAIRS:
        if key in metrics and not math.isnan(metrics[key]):
            lines.append(f"{key.replace('_', ' ')} (per frame): {metrics[key]:.3f}")
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


#: (error column, uncertainty column, metric name, label) pairs that :func:`uncertainty_metrics` and
#: :func:`error_vs_uncertainty_plot` compare frame by frame.
ERROR_UNCERTAINTY_PAIRS = (
    ("energy_abs_error", "energy_uncertainty", "spearman_energy_error_vs_uncertainty", "energy (eV)"),
    ("forces_rmse", "forces_uncertainty_mean", "spearman_forces_rmse_vs_uncertainty", "forces (eV/Å)"),
)


def per_frame_table(results: Mapping) -> dict[str, np.ndarray]:
    """One row per frame of :func:`evaluate`'s ``results``: ``{column: [B] array}``.

    Columns: ``frame`` (index in evaluation order), ``num_atoms``, ``energy_error`` (predicted -
    reference, eV), ``energy_abs_error`` (eV), ``energy_per_atom_error`` (eV/atom), ``forces_rmse``
    (eV/Å, over the frame's force components); NaN where the frame has no such label. Then every
    one-valued per-frame extra output (``energy_uncertainty``, eV) under its name, and every
    one-valued per-atom extra (``forces_uncertainty``, eV/Å) as ``{name}_mean`` and ``{name}_max``
    over the frame's atoms.
    """
    num_atoms = results["energy"]["num_atoms"].astype(np.int64)
    frames = len(num_atoms)
    frame_of_atom = np.repeat(np.arange(frames), num_atoms)
    energy = results["energy"]
    energy_error = np.where(energy["mask"], energy["pred"] - energy["ref"], np.nan)
    table = {
        "frame": np.arange(frames),
        "num_atoms": num_atoms,
        "energy_error": energy_error,
        "energy_abs_error": np.abs(energy_error),
        "energy_per_atom_error": energy_error / num_atoms,
    }
    if "forces" in results:
        forces = results["forces"]
        squared = np.where(forces["mask"], ((forces["pred"] - forces["ref"]) ** 2).sum(axis=1), 0.0)
        counts = np.bincount(frame_of_atom, weights=3.0 * forces["mask"], minlength=frames)
        sums = np.bincount(frame_of_atom, weights=squared, minlength=frames)
        with np.errstate(invalid="ignore", divide="ignore"):
            table["forces_rmse"] = np.where(counts > 0, np.sqrt(sums / counts), np.nan)
    for key, values in results.get("extra", {}).items():
        if values.ndim == 1:
            table[key] = values
    starts = np.concatenate([[0], np.cumsum(num_atoms)[:-1]])
    for key, values in results.get("atom_extra", {}).items():
        if values.ndim == 1:
            table[f"{key}_mean"] = np.bincount(frame_of_atom, weights=values, minlength=frames) / num_atoms
            table[f"{key}_max"] = np.maximum.reduceat(values, starts)
    return table


def uncertainty_metrics(results: Mapping) -> dict[str, float]:
    """How well the model's uncertainties rank its errors, frame by frame (empty without uncertainties).

    ``energy_uncertainty_mean`` (eV) and ``forces_uncertainty_mean`` (eV/Å, over all atoms) where
    the model returns them, and the Spearman rank correlations ``spearman_energy_error_vs_uncertainty``
    (|energy error| vs ``energy_uncertainty``) and ``spearman_forces_rmse_vs_uncertainty`` (the frame's
    force RMSE vs its mean ``forces_uncertainty``) over the labelled frames (NaN with fewer than
    three, or constant values).
    """
    from scipy.stats import spearmanr

    metrics: dict[str, float] = {}
    if "energy_uncertainty" in results.get("extra", {}):
        metrics["energy_uncertainty_mean"] = float(np.mean(results["extra"]["energy_uncertainty"]))
    if "forces_uncertainty" in results.get("atom_extra", {}):
        metrics["forces_uncertainty_mean"] = float(np.mean(results["atom_extra"]["forces_uncertainty"]))
    if not metrics:
        return metrics
    table = per_frame_table(results)
    for error, uncertainty, name, _ in ERROR_UNCERTAINTY_PAIRS:
        if error in table and uncertainty in table:
            x, y = _finite_pairs(table[error], table[uncertainty])
            constant = len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0
            metrics[name] = math.nan if constant else float(spearmanr(x, y).statistic)
    return metrics


def _finite_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def write_per_frame(results: Mapping, path: str | Path) -> Path:
    """Write :func:`per_frame_table` as CSV (a header row, then one row per frame; NaN as ``nan``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = per_frame_table(results)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(table)
        for row in zip(*table.values()):
            writer.writerow([f"{v:.10g}" if isinstance(v, (float, np.floating)) else int(v) for v in row])
    return path


def write_predictions(results: Mapping, path: str | Path) -> Path:
    """Write the arrays of :func:`evaluate`'s results as ``.npz``: ``<quantity>_<key>`` for each labelled
    quantity (``energy_pred``, ``forces_ref``, ``stress_mask``, ...; units as in :func:`evaluate`) and
    ``extra_<name>`` for the model's per-frame extra outputs (e.g. ``extra_energy_uncertainty``)."""
    path = Path(path)
    arrays = {}
    for quantity in LABELLED_OUTPUTS:
        for key, value in results.get(quantity, {}).items():
            arrays[f"{quantity}_{key}"] = np.asarray(value)
    for key, value in results["extra"].items():
        arrays[f"extra_{key}"] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def error_vs_uncertainty_plot(results: Mapping, out_dir: str | Path, prefix: str = "") -> Path | None:
    """``{prefix}error_vs_uncertainty.png``: per frame, |energy error| vs ``energy_uncertainty`` and force
    RMSE vs mean ``forces_uncertainty`` (log axes, the line error = uncertainty dashed, Spearman ρ in
    the titles). None (nothing written) when the model returns no uncertainty or no frame is labelled."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    table = per_frame_table(results)
    metrics = uncertainty_metrics(results)
    panels = []
    for error, uncertainty, name, label in ERROR_UNCERTAINTY_PAIRS:
        if error in table and uncertainty in table:
            x, y = _finite_pairs(table[uncertainty], table[error])
            if len(x):
                panels.append((x, y, metrics.get(name, math.nan), label, error))
    if not panels:
        return None
    fig = Figure(figsize=(4.5 * len(panels), 4.2), layout="constrained")
    for k, (uncertainty, error, rho, label, column) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.scatter(uncertainty, error, s=8, alpha=0.6, edgecolors="none")
        positive = np.concatenate([uncertainty, error])
        positive = positive[positive > 0]
        if len(positive):
            low, high = positive.min() / 2, positive.max() * 2
            ax.plot([low, high], [low, high], color="black", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_yscale("log")
            for axis in (ax.xaxis, ax.yaxis):  # plain tick labels: mathtext ones need fonts a server may lack
                axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
                axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"uncertainty, {label}")
        ax.set_ylabel(f"{'|error|' if column == 'energy_abs_error' else 'RMSE'}, {label}")
        ax.set_title(f"{label.split(' ')[0]}: Spearman ρ = {rho:.3f}", fontsize=10)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{prefix}error_vs_uncertainty.png"
    fig.savefig(path, dpi=120)
    return path
