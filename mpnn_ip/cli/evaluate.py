"""``mpnn-eval``: metrics and parity plots of a checkpoint on a labelled file (config ``configs/eval.yaml``).

    mpnn-eval ckpt_path=outputs/run/checkpoints/last.ckpt data.path=test.extxyz [batch_size=32 device=cuda]

Prints a table of MAE/RMSE (energy per atom, energy, forces, stress) and writes into ``out_dir``:
``metrics.json``, ``predictions.npz`` (predicted and reference arrays with their masks) and the
parity plots ``parity_*.png``. User errors print one paragraph and exit with code 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROG = "mpnn-eval"


def run_evaluation(cfg) -> dict:
    """The body of ``mpnn-eval`` for a composed config; returns the results of :func:`evaluate`."""
    from mpnn_ip.checkpoint import check_model_species, load_model
    from mpnn_ip.data import read_dataset
    from mpnn_ip.evaluation import evaluate, format_metrics_table, parity_plots, write_metrics

    out_dir = Path(str(cfg.out_dir))
    model = load_model(cfg.ckpt_path, device=cfg.device, dtype=cfg.dtype)
    data = dict(cfg.data)
    path = data.pop("path")
    graphs = read_dataset(path, **data)
    check_model_species(model, {int(z) for g in graphs for z in g.atomic_numbers.unique().tolist()}, f"data file {path}")
    results = evaluate(model, graphs, batch_size=int(cfg.batch_size), progress=bool(cfg.progress))

    print(f"{PROG}: {results['num_frames']} frames, {results['num_atoms']} atoms from {path}")
    print(format_metrics_table(results["metrics"]))
    write_metrics(results, out_dir / "metrics.json", checkpoint=str(cfg.ckpt_path), data=str(path))
    _write_predictions(results, out_dir / "predictions.npz")
    plots = parity_plots(results, out_dir)
    print(f"{PROG}: wrote {out_dir / 'metrics.json'}, predictions.npz and {len(plots)} parity plot(s) to {out_dir}")
    return results


def _write_predictions(results: dict, path: Path) -> None:
    from mpnn_ip.outputs import LABELLED_OUTPUTS

    arrays = {}
    for quantity in LABELLED_OUTPUTS:
        for key, value in results.get(quantity, {}).items():
            arrays[f"{quantity}_{key}"] = np.asarray(value)
    for key, value in results["extra"].items():
        arrays[f"extra_{key}"] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def _task(cfg) -> None:
    from mpnn_ip.cli.hydra_app import friendly_errors

    with friendly_errors(PROG):
        run_evaluation(cfg)


def main() -> None:
    from mpnn_ip.cli.hydra_app import run_hydra_app

    run_hydra_app(_task, config_name="eval", prog=PROG)


if __name__ == "__main__":
    main()
