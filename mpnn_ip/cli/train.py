"""``mpnn-train``: fit a potential (Hydra app over ``configs/train.yaml``).

Examples::

    mpnn-train experiment=quickstart                      # embedded Cu-Au EMT data, a few minutes on CPU
    mpnn-train model=mace data=extxyz data.train_path=my.xyz
    mpnn-train experiment=quickstart ckpt_path=outputs/quickstart/<run>/checkpoints/last.ckpt   # resume
    mpnn-train -m experiment=quickstart optim.lr=1e-3,5e-3 model.num_layers=2,3           # one folder per job
    mpnn-train --cfg job                                  # print the composed config

The run directory (Hydra's output dir) receives the resolved ``config.yaml``, ``checkpoints/``
(``best.ckpt``, ``last.ckpt``), ``metrics.csv``, ``metrics.json``, parity plots and the W&B run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mpnn_ip.cli.hydra_app import friendly_errors, run_hydra_app, to_container

PROG = "mpnn-train"


def _set_matmul_precision(tf32: bool, accelerator: str) -> None:
    """TF32 matmuls on CUDA only when asked (``tf32=true``); CPU runs are never affected."""
    import torch

    if tf32 and accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _route_lightning_logs_to_hydra() -> None:
    """Lightning adds its own console handler on import; in the CLI its messages go through Hydra's
    logging instead (all of them to ``<run dir>/train.log``, warnings also to the console)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def fit(cfg) -> float | None:
    """Build everything from ``cfg``, prepare the model, fit, test with the best checkpoint and write the reports.

    Returns the value of ``cfg.optimized_metric`` (for Hydra sweepers such as Optuna), or None.
    """
    import lightning as L
    from omegaconf import OmegaConf

    _route_lightning_logs_to_hydra()

    from mpnn_ip.checkpoint import read_checkpoint
    from mpnn_ip.train import PotentialModule, builders
    from mpnn_ip.train.report import finish_run

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    _set_matmul_precision(bool(cfg.tf32), str(cfg.trainer.get("accelerator", "cpu")))

    meta = read_checkpoint(cfg.ckpt_path)["mpnn_ip"] if cfg.ckpt_path else None  # bad files fail before data loading
    datamodule = builders.build_datamodule(cfg.data, cfg.model)
    statistics = datamodule.statistics()
    if meta is not None:
        model = builders.model_from_checkpoint_metadata(meta, cfg.model, cfg.ckpt_path, statistics["species"])
        statistics = meta["statistics"]
    else:
        model = builders.build_model(cfg.model, statistics, cfg.dtype)
    with builders.training_data_statistics(statistics):
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        resolved = to_container(cfg)
    loggers = builders.build_loggers(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(resolved)
    if meta is None:  # data-dependent set-up (e.g. BPNN's standardisation, GAP's closed-form fit); not on resume
        train_graphs = list(datamodule.train_dataset.graphs)
        _report_prepare(model.prepare(train_graphs), type(model).__name__, len(train_graphs), output_dir, loggers)
    if cfg.compile:
        model.compile(dynamic=True)

    task = PotentialModule(
        model,
        loss=resolved["loss"],
        optimizer=builders.build_optimizer_factory(cfg.optim),
        scheduler=builders.build_scheduler_factory(cfg.get("scheduler")),
        scheduler_monitor=str(cfg.scheduler_monitor),
        statistics=statistics,
    )
    callbacks = builders.build_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
    trainer = builders.build_trainer(cfg.trainer, callbacks, loggers)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path or None)
    summary = finish_run(trainer, task, datamodule, output_dir, test=bool(cfg.test_after_fit))
    metric = cfg.get("optimized_metric")
    return None if not metric else summary.get(metric)


def _report_prepare(report: dict, model_name: str, num_frames: int, output_dir: Path, loggers: list) -> None:
    """What ``Potential.prepare`` reported (e.g. a closed-form fit's timings, sizes and training residuals):
    to ``<run dir>/prepare.json``, the console and the loggers. Nothing when the report is empty."""
    import json

    if not report:
        return
    path = output_dir / "prepare.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    seconds = report.get("time_total_s")
    timing = f": {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    print(f"Prepared {model_name} on {num_frames} training frames{timing} (details: {path})", flush=True)
    for logger in loggers:
        logger.log_metrics({f"prepare/{k}": v for k, v in report.items() if isinstance(v, (int, float))}, step=0)


def _task(cfg) -> float | None:
    with friendly_errors(PROG):
        return fit(cfg)


def main() -> None:
    """Console entry point of ``mpnn-train``."""
    run_hydra_app(_task, config_name="train", prog=PROG)


if __name__ == "__main__":
    main()
