"""After ``fit``: test with the best checkpoint, write ``metrics.json`` and parity plots, say where things are."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mpnn_ip.checkpoint import checkpoint_metadata, plain
from mpnn_ip.outputs import QUANTITY_UNITS
from mpnn_ip.train.loggers import is_wandb, log_best_checkpoint, log_images


def _checkpoint_paths(trainer) -> tuple[Path | None, Path | None]:
    """``(best, last)`` checkpoint paths: best of the first monitoring ``ModelCheckpoint``, last of the first
    unmonitored one (``callbacks.last_checkpoint``), else that callback's ``save_last`` file."""
    callbacks = trainer.checkpoint_callbacks
    monitored = [c for c in callbacks if c.monitor is not None]
    latest = [c for c in callbacks if c.monitor is None and c.best_model_path]
    best = Path(monitored[0].best_model_path) if monitored and monitored[0].best_model_path else None
    if latest:
        return best, Path(latest[0].best_model_path)
    last = next((Path(c.last_model_path) for c in callbacks if getattr(c, "last_model_path", "")), None)
    return best, last


def _evaluation_split(datamodule) -> tuple[str, Any, Any]:
    """The test split when there is one, else the validation split (named so in the report): its name, this
    process's loader (``trainer.test``; under DDP each process tests its share) and a loader of the whole
    split (parity plots, drawn by rank 0)."""
    test = getattr(datamodule, "test_dataset", None)
    split = "test" if test is not None and len(test) > 0 else "val"
    shared = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    if isinstance(shared, (list, tuple)):  # the replayed frames' loader comes second (multi-head fine-tuning)
        shared = shared[0]
    whole = getattr(datamodule, "evaluation_dataloader", None)
    return split, shared, whole(split) if whole is not None else shared


def _parity(model, loader, output_dir: Path) -> tuple[dict, list[Path]]:
    """Predictions vs references on ``loader`` and their parity plots (:mod:`mpnn_ip.evaluation`)."""
    from mpnn_ip.evaluation import evaluate, parity_plots

    results = evaluate(model, loader)
    paths = parity_plots(results, output_dir / "plots")
    return results, [Path(p) for p in paths]


def finish_run(trainer, task, datamodule, output_dir: Path, test: bool = True) -> dict[str, float]:
    """Test the best checkpoint, write ``metrics.json`` and plots, log them, print a summary.

    Under DDP every process tests its share of the frames (the metrics are reduced over processes);
    only rank 0 writes ``metrics.json`` and the plots, logs them and prints the summary.

    Returns the flat metric dict (``val/loss``, ``test/forces_rmse``, ...), used as the sweep objective.
    """
    best, last = _checkpoint_paths(trainer)
    ckpt = best if best is not None and best.is_file() else last
    summary = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_score is not None:
        summary["best_val_loss"] = float(trainer.checkpoint_callback.best_model_score)
    report: dict[str, Any] = {
        "run_dir": str(output_dir),
        "best_checkpoint": str(best) if best else None,
        "last_checkpoint": str(last) if last else None,
        "epochs_trained": int(trainer.current_epoch),
        "best_val_loss": summary.get("best_val_loss"),
        "statistics": plain(task.statistics),
    }
    plots: list[Path] = []
    if test:
        split, shared, loader = _evaluation_split(datamodule)
        tested = trainer.test(task, dataloaders=shared, ckpt_path=str(ckpt) if ckpt else None, verbose=False)
        metrics = {k.removeprefix("test/"): float(v) for k, v in (tested[0] if tested else {}).items()}
        summary.update({f"test/{k}": v for k, v in metrics.items()})
    if not trainer.is_global_zero:
        return summary
    if test:
        task.model.eval()
        _, plots = _parity(task.model, loader, output_dir)
        force_rms = task.statistics.get("force_rms")
        report.update(split=split, num_frames=len(loader.dataset), checkpoint_tested=str(ckpt) if ckpt else None)
        report["metrics"] = metrics
        report["units"] = {f"{q}_{m}": unit for q, unit in QUANTITY_UNITS.items() for m in ("mae", "rmse")}
        if force_rms and "forces_rmse" in metrics:
            report["forces_rmse_over_force_rms"] = metrics["forces_rmse"] / force_rms
        report["plots"] = [str(p) for p in plots]
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")

    loggers = trainer.loggers
    log_images(loggers, "parity", plots)
    log_best_checkpoint(loggers, best, checkpoint_metadata(task.model, task.statistics))
    _print_summary(report, output_dir)
    for logger in loggers:
        if is_wandb(logger):
            import wandb

            wandb.finish()
    return summary


def _fmt(value: float | None, unit: str, scale: float = 1.0) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value * scale:.4g} {unit}"


def _print_summary(report: dict, output_dir: Path) -> None:
    lines = [f"Run directory:    {output_dir}"]
    lines.append(f"Best checkpoint:  {report.get('best_checkpoint')}")
    lines.append(f"Last checkpoint:  {report.get('last_checkpoint')}")
    metrics = report.get("metrics")
    if metrics:
        split = report["split"]
        lines.append(f"{split.capitalize()} metrics ({report['num_frames']} frames, best checkpoint):")
        for quantity, unit in QUANTITY_UNITS.items():
            if f"{quantity}_rmse" in metrics:
                lines.append(
                    f"  {quantity:<16} MAE {_fmt(metrics[f'{quantity}_mae'], unit):>16}   "
                    f"RMSE {_fmt(metrics[f'{quantity}_rmse'], unit):>16}"
                )
        if "forces_rmse_over_force_rms" in report:
            lines.append(f"  force RMSE / force RMS of the training data = {report['forces_rmse_over_force_rms']:.3%}")
    lines.append(f"Metrics:          {output_dir / 'metrics.json'}")
    for plot in report.get("plots", []):
        lines.append(f"Parity plot:      {plot}")
    print("\n".join(lines), flush=True)
