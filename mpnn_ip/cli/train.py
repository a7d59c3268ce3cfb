"""``mpnn-train``: fit a potential (Hydra app over ``configs/train.yaml``).

Examples::

    mpnn-train experiment=quickstart                      # embedded Cu-Au EMT data, a few minutes on CPU
    mpnn-train model=mace data=extxyz data.train_path=my.xyz
    mpnn-train experiment=quickstart ckpt_path=outputs/quickstart/<run>/checkpoints/last.ckpt   # new run from a checkpoint
    mpnn-train resume=outputs/quickstart/<run>            # continue a (killed) run in its own folder
    mpnn-train resume=outputs/quickstart/<run> trainer.max_epochs=400                   # ... and train longer
    mpnn-train finetune_from=pretrained.ckpt data=extxyz data.train_path=new.xyz finetune.freeze=[species_embedding]
    mpnn-train finetune_from=mace.ckpt data=extxyz data.train_path=new.xyz finetune.new_head=new \
        finetune.replay_path=old.xyz finetune.replay_fraction=0.3        # multi-head replay fine-tuning
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

    from mpnn_ip.data.problems import write_skipped_frames
    from mpnn_ip.train import PotentialModule, builders
    from mpnn_ip.train.model_source import model_source
    from mpnn_ip.train.report import finish_run

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    _set_matmul_precision(bool(cfg.tf32), str(cfg.trainer.get("accelerator", "cpu")))

    source = model_source(cfg, model_on_command_line=_model_on_command_line())  # new, continued or fine-tuned
    datamodule = source.datamodule()
    statistics = datamodule.statistics()
    writes_files = builders.is_global_zero()  # under DDP every process runs this function; rank 0 writes the files
    if writes_files:
        write_skipped_frames(
            getattr(datamodule, "skipped_frames", ()), output_dir / "skipped_frames.csv"
        )  # data.on_error=skip
    model, statistics = source.model(datamodule, statistics)
    with builders.training_data_statistics(statistics):
        if writes_files:
            OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        resolved = to_container(cfg)
    loggers = builders.build_loggers(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(resolved)
    source.prepare(model, datamodule, output_dir, loggers)
    optimizer = source.optimizer(model, builders.build_optimizer_factory(cfg.optim))
    if hasattr(model, "set_edge_chunk_size"):  # every Potential; a registered model of another base may lack it
        model.set_edge_chunk_size(
            cfg.get("edge_chunk_size"), lean_double_backward=bool(cfg.get("lean_training_memory", False))
        )

    task = PotentialModule(
        model,
        loss=resolved["loss"],
        optimizer=optimizer,
        scheduler=builders.build_scheduler_factory(cfg.get("scheduler")),
        scheduler_monitor=str(cfg.scheduler_monitor),
        statistics=statistics,
        max_bad_steps=int(cfg.get("max_bad_steps", 5)),
        compile=cfg.get("compile", "auto"),
        refit_energy_shift=bool(cfg.get("refit_energy_shift", True)),
    )
    callbacks = builders.build_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
    trainer = builders.build_trainer(cfg.trainer, callbacks, loggers)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path or None)
    summary = finish_run(trainer, task, datamodule, output_dir, test=bool(cfg.test_after_fit))
    metric = cfg.get("optimized_metric")
    return None if not metric else summary.get(metric)


def _model_on_command_line() -> bool:
    """Whether the command line chose or changed the model (``model=...``, ``model.x=...``); True outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return any(key == "model" or key.startswith("model.") for key in keys)


def _task(cfg) -> float | None:
    from mpnn_ip.train.finetune import check_run_settings
    from mpnn_ip.train.resume import resumed_config

    with friendly_errors(PROG):
        check_run_settings(
            cfg
        )  # the command line's settings; a resumed fine-tuning run has both finetune_from and ckpt_path
        if cfg.get("resume") not in (None, False):
            cfg = resumed_config(cfg)
        return fit(cfg)


def main() -> None:
    """Console entry point of ``mpnn-train``."""
    import sys

    from mpnn_ip.train.resume import prepare_resume_argv

    with friendly_errors(PROG):
        sys.argv[1:] = _one_run_dir_per_job(prepare_resume_argv(sys.argv[1:]))
    run_hydra_app(_task, config_name="train", prog=PROG)


def _one_run_dir_per_job(argv: list[str], environ=None) -> list[str]:
    """The command line of a process that ``torchrun`` or ``srun`` started as one of several (one per GPU): all
    of them share the run folder ``outputs/<run_name>/<torchrun|slurm>-<job id>`` (Hydra would name each one's
    folder by its own start time) unless ``hydra.run.dir`` is given; processes other than rank 0 write no
    ``.hydra/`` record and log to ``train_rank<R>.log``. Other command lines come back unchanged."""
    import os
    import socket

    from hydra._internal.utils import get_args_parser

    from mpnn_ip.train.resume import parse_overrides

    environ = os.environ if environ is None else environ
    if int(environ.get("WORLD_SIZE", "1") or 1) > 1 and environ.get("RANK", "").isdigit():
        rank, run_id = int(environ["RANK"]), environ.get("TORCHELASTIC_RUN_ID", "none")
        # torchrun's default rendezvous id is "none": the workers of one node share their agent's process id
        job = f"torchrun-{run_id}" if run_id not in ("", "none") else f"torchrun-{socket.gethostname()}-{os.getppid()}"
    elif (
        int(environ.get("SLURM_NTASKS", "1") or 1) > 1
        and environ.get("SLURM_PROCID", "").isdigit()
        and "SLURM_JOB_ID" in environ
    ):
        rank = int(environ["SLURM_PROCID"])
        job = f"slurm-{environ['SLURM_JOB_ID']}" + (
            f".{environ['SLURM_STEP_ID']}" if "SLURM_STEP_ID" in environ else ""
        )
    else:
        return argv
    args = get_args_parser().parse_args(argv)
    if args.multirun:
        return argv
    keys = {o.key_or_group for o in parse_overrides(args.overrides or [])}
    extra = [] if "hydra.run.dir" in keys else [f"hydra.run.dir=outputs/${{run_name}}/{job}"]
    if rank != 0:
        extra += ["hydra.output_subdir=null", f"hydra.job.name=train_rank{rank}"]
    return [*argv, *extra]


if __name__ == "__main__":
    main()
