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

    from mpnn_ip.checkpoint import read_checkpoint
    from mpnn_ip.data.problems import write_skipped_frames
    from mpnn_ip.train import PotentialModule, builders
    from mpnn_ip.train import finetune as finetuning
    from mpnn_ip.train.report import finish_run

    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    _set_matmul_precision(bool(cfg.tf32), str(cfg.trainer.get("accelerator", "cpu")))

    meta = read_checkpoint(cfg.ckpt_path)["mpnn_ip"] if cfg.ckpt_path else None  # bad files fail before data loading
    finetune_from = cfg.get("finetune_from")  # with ckpt_path too: resume= continues a fine-tuning run
    finetune = finetuning.finetune_settings(cfg)
    pretrained = finetuning.read_pretrained(finetune_from) if finetune_from and meta is None else None
    if pretrained is not None:
        finetuning.use_checkpoint_architecture(cfg, pretrained, finetune_from, _model_on_command_line())
    source_meta = meta if meta is not None else pretrained["mpnn_ip"] if pretrained is not None else None
    heads = None  # (heads of the fine-tuned model, head of the replayed frames) of multi-head fine-tuning
    if finetune_from and source_meta is not None:
        checkpoint_heads = source_meta["model_config"].get("heads") or ["Default"]
        heads = finetuning.multihead_layout(finetune, checkpoint_heads, resumed=meta is not None)
    # fine-tuning: the data may hold any subset of the pretrained species (checked below, with its own message)
    datamodule = builders.build_datamodule(cfg.data, None if finetune_from else cfg.model)
    if finetune_from and finetune["replay_path"]:
        datamodule.add_replay(finetune["replay_path"], finetune["replay_fraction"], head=None if heads is None else heads[1])
    statistics = datamodule.statistics()
    writes_files = builders.is_global_zero()  # under DDP every process runs this function; rank 0 writes the files
    if writes_files:
        write_skipped_frames(getattr(datamodule, "skipped_frames", ()), output_dir / "skipped_frames.csv")  # data.on_error=skip
    if meta is not None:
        model = builders.model_from_checkpoint_metadata(meta, cfg.model, cfg.ckpt_path, statistics["species"])
        statistics = meta["statistics"]
    elif pretrained is not None:
        model, statistics = _finetuned_model(cfg, pretrained, datamodule, statistics, finetune, heads)
    else:
        model = builders.build_model(cfg.model, statistics, cfg.dtype)
    with builders.training_data_statistics(statistics):
        if writes_files:
            OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        resolved = to_container(cfg)
    loggers = builders.build_loggers(cfg.get("logger"))
    for logger in loggers:
        logger.log_hyperparams(resolved)
    if meta is None and pretrained is None:  # data-dependent set-up (e.g. BPNN's standardisation, GAP's closed-form fit)
        train_graphs = list(datamodule.train_dataset.graphs)
        _report_prepare(model.prepare(train_graphs), type(model).__name__, len(train_graphs), output_dir, loggers)
    optimizer = builders.build_optimizer_factory(cfg.optim)
    if finetune_from:
        trainable, total = finetuning.freeze(model, finetune["freeze"])
        optimizer = finetuning.trainable_optimizer(optimizer, finetune["lr"])
        frozen = f" (frozen: {', '.join(finetune['freeze'])})" if finetune["freeze"] else ""
        if writes_files:
            print(f"Fine-tuning {finetune_from}: {trainable:,} of {total:,} parameters trainable{frozen}", flush=True)
    if hasattr(model, "set_edge_chunk_size"):  # every Potential; a registered model of another base may lack it
        model.set_edge_chunk_size(cfg.get("edge_chunk_size"), lean_double_backward=bool(cfg.get("lean_training_memory", False)))

    task = PotentialModule(
        model,
        loss=resolved["loss"],
        optimizer=optimizer,
        scheduler=builders.build_scheduler_factory(cfg.get("scheduler")),
        scheduler_monitor=str(cfg.scheduler_monitor),
        statistics=statistics,
        max_bad_steps=int(cfg.get("max_bad_steps", 5)),
        compile=cfg.get("compile", "auto"),
    )
    callbacks = builders.build_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
    trainer = builders.build_trainer(cfg.trainer, callbacks, loggers)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path or None)
    summary = finish_run(trainer, task, datamodule, output_dir, test=bool(cfg.test_after_fit))
    metric = cfg.get("optimized_metric")
    return None if not metric else summary.get(metric)


def _finetuned_model(cfg, pretrained: dict, datamodule, statistics: dict, finetune: dict, heads=None):
    """The pretrained model (with the new head in front, for ``heads`` from
    :func:`~mpnn_ip.train.finetune.multihead_layout`) with E0 re-fitted on the training split (unless
    ``finetune.refit_e0=false``; the new head's only), and the statistics to store
    (:func:`mpnn_ip.train.finetune.finetuned_statistics`); ``cfg.model`` records the model's arguments."""
    import torch
    from omegaconf import OmegaConf

    from mpnn_ip.elements import symbols
    from mpnn_ip.train import builders
    from mpnn_ip.train import finetune as finetuning

    path = cfg.finetune_from
    model = finetuning.pretrained_model(pretrained, path, statistics["species"], cfg.dtype)
    if heads is not None:
        model = finetuning.with_new_head(model, *heads)
    source = "pretrained (finetune.refit_e0=false)"
    if finetune["refit_e0"]:
        isolated = statistics["e0s"] if statistics.get("e0s_source") == "isolated_atoms" else None
        on_gpu = str(cfg.trainer.get("accelerator", "cpu")) != "cpu" and torch.cuda.is_available()
        graphs = datamodule.train_dataset.graphs
        model, source = finetuning.refit_energy_references(model, graphs, isolated, device="cuda" if on_gpu else "cpu")
        cfg.model.e0s = OmegaConf.create(model.config["e0s"])
    if heads is not None:  # config.yaml and resume= see the model with its heads
        cfg.model = OmegaConf.create(finetuning.model_config_node(pretrained["mpnn_ip"]["model_name"], model.config))
    if builders.is_global_zero():
        e0s = ", ".join(f"{symbol} {e:+.4f}" for symbol, e in zip(symbols(model.species), model.head_e0s(0).values()))
        new = "" if heads is None else f" of the new head {heads[0][0]!r} (heads {heads[0]}; replayed frames: {heads[0][heads[1]]!r})"
        print(f"Fine-tuning {path}: E0 (eV){new} {e0s} [{source}]", flush=True)
    return model, finetuning.finetuned_statistics(statistics, model, source, path)


def _model_on_command_line() -> bool:
    """Whether the command line chose or changed the model (``model=...``, ``model.x=...``); True outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return any(key == "model" or key.startswith("model.") for key in keys)


def _report_prepare(report: dict, model_name: str, num_frames: int, output_dir: Path, loggers: list) -> None:
    """What ``Potential.prepare`` reported (e.g. a closed-form fit's timings, sizes and training residuals):
    to ``<run dir>/prepare.json``, the console and the loggers. Nothing when the report is empty."""
    import json

    from mpnn_ip.train.builders import is_global_zero

    if not report or not is_global_zero():
        return
    path = output_dir / "prepare.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    seconds = report.get("time_total_s")
    timing = f": {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    print(f"Prepared {model_name} on {num_frames} training frames{timing} (details: {path})", flush=True)
    for logger in loggers:
        logger.log_metrics({f"prepare/{k}": v for k, v in report.items() if isinstance(v, (int, float))}, step=0)


# ----------------------------------------------------------------------------------------------------
# resume=<run dir>: continue a run in its own folder from checkpoints/last.ckpt and its saved config.yaml

#: The only settings ``resume=`` accepts on the command line (besides ``hydra.*``): how long to train,
#: whether to test afterwards, the progress bar. Everything else comes from the run's ``config.yaml``.
RESUME_OVERRIDABLE = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.max_time",
    "trainer.enable_progress_bar",
    "test_after_fit",
)
#: Where Hydra's own record of a resumed job goes (the original run's ``.hydra/`` is kept).
RESUME_HYDRA_SUBDIR = ".hydra/resume"
def _parsed(overrides) -> list:
    """Hydra's own parse of command-line overrides (``key_or_group``, typed ``value()``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def check_resume_dir(run_dir: Path) -> None:
    """ConfigError unless ``run_dir`` holds what ``resume=`` needs: ``checkpoints/last.ckpt`` and ``config.yaml``."""
    from mpnn_ip.errors import ConfigError

    if not run_dir.is_dir():
        raise ConfigError(
            f"resume: the run folder {run_dir} does not exist. Give the folder of an earlier mpnn-train run "
            "(the one that holds config.yaml and checkpoints/), e.g. resume=outputs/<run_name>/<date_time>."
        )
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(
            f"resume: {last} does not exist, so the run in {run_dir} cannot be continued (it was stopped before "
            "its first checkpoint, or checkpoints went elsewhere). Start it again without resume=, or start a new "
            "run from another checkpoint with ckpt_path=<file>.ckpt."
        )
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(
            f"resume: {run_dir / 'config.yaml'} does not exist, so the settings of the run in {run_dir} are unknown. "
            f"Start a new run from its checkpoint with the original overrides plus ckpt_path={last}."
        )


def _prepare_resume(argv: list[str]) -> list[str]:
    """The command line with ``hydra.run.dir`` set to the run folder of ``resume=``; checks that folder and the
    other overrides (ConfigError). Command lines without ``resume`` come back unchanged."""
    from hydra._internal.utils import get_args_parser

    from mpnn_ip.errors import ConfigError

    if not any(a.lstrip("+~").startswith("resume=") for a in argv):
        return argv
    args = get_args_parser().parse_args(argv)
    overrides = _parsed(args.overrides or [])
    values = {o.key_or_group: o.value() for o in overrides}
    value = values.get("resume")
    if value in (None, False, ""):
        return argv
    if args.multirun:
        raise ConfigError("resume= continues one run; it does not work with -m/--multirun.")
    run_dir_given = values.get("hydra.run.dir")
    if value is True:
        if run_dir_given is None:
            raise ConfigError(
                "resume=true needs the run folder: add hydra.run.dir=<run dir>, or give it as resume=<run dir>."
            )
        run_dir = Path(str(run_dir_given)).expanduser().resolve()
    else:
        run_dir = Path(str(value)).expanduser().resolve()
        if run_dir_given is not None and Path(str(run_dir_given)).expanduser().resolve() != run_dir:
            raise ConfigError(
                f"resume={value} continues the run in its own folder, but hydra.run.dir={run_dir_given} names "
                "another one. Drop hydra.run.dir (or use resume=true with hydra.run.dir=<run dir>)."
            )
    others = [
        o.input_line for o in overrides
        if o.key_or_group not in ("resume", *RESUME_OVERRIDABLE) and not o.key_or_group.startswith("hydra.")
    ]
    if others:
        raise ConfigError(
            f"resume continues the run in {run_dir} with the settings saved in its config.yaml; it only accepts "
            f"{', '.join(RESUME_OVERRIDABLE)} (and hydra.*) on the command line, not {' '.join(others)}. "
            f"To change other settings start a new run from its checkpoint: the original overrides plus "
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}."
        )
    check_resume_dir(run_dir)
    extra = [] if run_dir_given is not None else [f"hydra.run.dir={_quote(str(run_dir))}"]
    if "hydra.output_subdir" not in values:
        extra.append(f"hydra.output_subdir={RESUME_HYDRA_SUBDIR}")
    return [*argv, *extra]


def _quote(value: str) -> str:
    """A Hydra override value: quoted when it holds characters the override grammar would parse."""
    if all(c.isalnum() or c in "/._-:" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _replace_prefix(node, old: str, new: str):
    """``node`` (plain containers) with every string that is ``old`` or starts with ``old/`` moved to ``new``."""
    if isinstance(node, dict):
        return {k: _replace_prefix(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_prefix(v, old, new) for v in node]
    if isinstance(node, str) and (node == old or node.startswith(old.rstrip("/") + "/")):
        return new + node[len(old.rstrip("/")):]
    return node


def resumed_config(cfg):
    """The config of a ``resume=`` job: the run's saved ``config.yaml`` with ``ckpt_path`` set to its
    ``checkpoints/last.ckpt``, the allowed command-line settings (:data:`RESUME_OVERRIDABLE`) applied, and
    paths of the run folder moved to where the folder is now. Stale temporary files of a save that was
    killed are removed from ``checkpoints/``."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from mpnn_ip.train.checkpoint_io import remove_stale_temporary_files

    run_dir = Path(cfg.output_dir).resolve()
    check_resume_dir(run_dir)
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)
    old_dir = saved.get("output_dir")
    if isinstance(old_dir, str) and old_dir and Path(old_dir).resolve() != run_dir:
        saved = _replace_prefix(saved, old_dir, str(run_dir))  # the folder was moved or copied
    saved = OmegaConf.create(saved)
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    for key in dict.fromkeys(o.key_or_group for o in _parsed(given)):
        if key in RESUME_OVERRIDABLE:
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    saved.output_dir = str(run_dir)
    saved.ckpt_path = str(last)
    saved.resume = None
    for stale in remove_stale_temporary_files(last.parent):
        logging.getLogger(__name__).warning("removed %s (left by a checkpoint save that was killed)", stale)
    _keep_metrics_history(run_dir)
    print(f"Resuming the run in {run_dir} from {last}", flush=True)
    return saved


def _keep_metrics_history(run_dir: Path) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv``; keep the earlier rows as ``metrics.partN.csv``."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        return
    number = 1
    while (run_dir / f"metrics.part{number}.csv").exists():
        number += 1
    metrics.replace(run_dir / f"metrics.part{number}.csv")


def _task(cfg) -> float | None:
    from mpnn_ip.train.finetune import check_run_settings

    with friendly_errors(PROG):
        check_run_settings(cfg)  # the command line's settings; a resumed fine-tuning run has both finetune_from and ckpt_path
        if cfg.get("resume") not in (None, False):
            cfg = resumed_config(cfg)
        return fit(cfg)


def main() -> None:
    """Console entry point of ``mpnn-train``."""
    import sys

    with friendly_errors(PROG):
        sys.argv[1:] = _one_run_dir_per_job(_prepare_resume(sys.argv[1:]))
    run_hydra_app(_task, config_name="train", prog=PROG)


def _one_run_dir_per_job(argv: list[str], environ=None) -> list[str]:
    """The command line of a process that ``torchrun`` or ``srun`` started as one of several (one per GPU): all
    of them share the run folder ``outputs/<run_name>/<torchrun|slurm>-<job id>`` (Hydra would name each one's
    folder by its own start time) unless ``hydra.run.dir`` is given; processes other than rank 0 write no
    ``.hydra/`` record and log to ``train_rank<R>.log``. Other command lines come back unchanged."""
    import os
    import socket

    from hydra._internal.utils import get_args_parser

    environ = os.environ if environ is None else environ
    if int(environ.get("WORLD_SIZE", "1") or 1) > 1 and environ.get("RANK", "").isdigit():
        rank, run_id = int(environ["RANK"]), environ.get("TORCHELASTIC_RUN_ID", "none")
        # torchrun's default rendezvous id is "none": the workers of one node share their agent's process id
        job = f"torchrun-{run_id}" if run_id not in ("", "none") else f"torchrun-{socket.gethostname()}-{os.getppid()}"
    elif int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and environ.get("SLURM_PROCID", "").isdigit() and "SLURM_JOB_ID" in environ:
        rank = int(environ["SLURM_PROCID"])
        job = f"slurm-{environ['SLURM_JOB_ID']}" + (f".{environ['SLURM_STEP_ID']}" if "SLURM_STEP_ID" in environ else "")
    else:
        return argv
    args = get_args_parser().parse_args(argv)
    if args.multirun:
        return argv
    keys = {o.key_or_group for o in _parsed(args.overrides or [])}
    extra = [] if "hydra.run.dir" in keys else [f"hydra.run.dir=outputs/${{run_name}}/{job}"]
    if rank != 0:
        extra += ["hydra.output_subdir=null", f"hydra.job.name=train_rank{rank}"]
    return [*argv, *extra]


if __name__ == "__main__":
    main()
