"""``mpnn-eval``: metrics and parity plots of a checkpoint on a labelled file (config ``configs/eval.yaml``).

    mpnn-eval ckpt_path=outputs/run/checkpoints/last.ckpt data.path=test.extxyz [batch_size=32 device=cuda]
    mpnn-eval ckpt_path=[s0/best.ckpt,s1/best.ckpt,s2/best.ckpt] data.path=test.extxyz   # a committee
    mpnn-eval "ckpt_path='outputs/sweep/*/checkpoints/best.ckpt'" data.path=test.extxyz  # the same, by pattern
    mpnn-eval ckpt_path=finetuned.ckpt data.path=old.extxyz head=Default   # one head of a multi-head model

Prints a table of MAE/RMSE (energy per atom, energy, forces, stress) and writes into ``out_dir``:
``metrics.json``, ``predictions.npz`` (predicted and reference arrays with their masks), the
parity plots ``parity_*.png`` and ``per_frame.csv`` (each frame's errors). Several checkpoints are
evaluated as a committee (:class:`mpnn_ip.models.committee.Committee`: the members' mean); then
``per_frame.csv`` also holds each frame's ``energy_uncertainty`` and ``forces_uncertainty_mean/max``,
``metrics.json`` the Spearman rank correlations of errors and uncertainties, and
``error_vs_uncertainty.png`` plots them. User errors print one paragraph and exit with code 2.
"""

from __future__ import annotations

from pathlib import Path

PROG = "mpnn-eval"


def run_evaluation(cfg) -> dict:
    """The body of ``mpnn-eval`` for a composed config; returns the results of :func:`evaluate`."""
    from mpnn_ip.checkpoint import check_model_species, checkpoint_paths, load_potential
    from mpnn_ip.data import read_dataset
    from mpnn_ip.evaluation import (
        error_vs_uncertainty_plot,
        evaluate,
        format_metrics_table,
        parity_plots,
        write_metrics,
        write_per_frame,
        write_predictions,
    )
    from mpnn_ip.models.heads import select_head

    out_dir = Path(str(cfg.out_dir))
    paths = checkpoint_paths(cfg.ckpt_path)
    model = select_head(load_potential(paths, device=cfg.device, dtype=cfg.dtype), cfg.get("head"))
    data = dict(cfg.data)
    path = data.pop("path")
    graphs = read_dataset(path, **data)
    check_model_species(
        model, {int(z) for g in graphs for z in g.atomic_numbers.unique().tolist()}, f"data file {path}"
    )
    results = evaluate(model, graphs, batch_size=int(cfg.batch_size), progress=bool(cfg.progress))

    print(f"{PROG}: {results['num_frames']} frames, {results['num_atoms']} atoms from {path}")
    print(format_metrics_table(results["metrics"]))
    write_metrics(results, out_dir / "metrics.json", checkpoint=paths[0] if len(paths) == 1 else paths, data=str(path))
    write_predictions(results, out_dir / "predictions.npz")
    write_per_frame(results, out_dir / "per_frame.csv")
    plots = parity_plots(results, out_dir)
    uncertainty_plot = error_vs_uncertainty_plot(results, out_dir)
    also = f" and {uncertainty_plot.name}" if uncertainty_plot else ""
    print(
        f"{PROG}: wrote {out_dir / 'metrics.json'}, predictions.npz, per_frame.csv, {len(plots)} parity plot(s){also} to {out_dir}"
    )
    return results


def _task(cfg) -> None:
    from mpnn_ip.cli.hydra_app import friendly_errors

    with friendly_errors(PROG):
        run_evaluation(cfg)


def main() -> None:
    from mpnn_ip.cli.hydra_app import run_hydra_app

    run_hydra_app(_task, config_name="eval", prog=PROG)


if __name__ == "__main__":
    main()
