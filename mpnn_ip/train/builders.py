"""Build the pieces of a training run from the composed Hydra config (``configs/train.yaml``).

Each function takes the part of the config it needs and returns a built object; the CLI
(:mod:`mpnn_ip.cli.train`) and :mod:`mpnn_ip.train.model_source` chain them. Statistics of the training split reach the model through
the config resolver ``${training_data_stats:NAME}`` named in each model's YAML (as NequIP's
``training_data_stats``), so a model takes only the statistics it uses: ``species`` (elements of
the data), ``e0s`` (eV, isolated-atom or least-squares per-species energies),
``avg_num_neighbors``, ``force_rms`` (eV/Å; its value in eV sets readout scales) and
``energy_shifts`` (eV per atom left after E0, per species: the models' initial shifts).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from mpnn_ip.checkpoint import load_weights, model_from_metadata, plain, read_checkpoint, registry_name, resolve_dtype
from mpnn_ip.elements import symbols, unknown_elements
from mpnn_ip.errors import ConfigError
from mpnn_ip.models import normalize_species

#: Name of the OmegaConf resolver that gives training-data statistics to the configs.
STATISTICS_RESOLVER = "training_data_stats"
_statistics: contextvars.ContextVar[Mapping | None] = contextvars.ContextVar("training_data_stats", default=None)


def _statistic(name: str) -> Any:
    statistics = _statistics.get()
    if statistics is None:
        raise ConfigError(
            f"${{{STATISTICS_RESOLVER}:{name}}} is only known once mpnn-train has read the training split; "
            f"outside a training run give the value itself (e.g. model.{name}=...)"
        )
    if name not in statistics and name in _ADDED_LATER:
        return _ADDED_LATER[name](statistics)
    if name not in statistics:
        raise ConfigError(f"${{{STATISTICS_RESOLVER}:{name}}}: no such statistic; known: {sorted(statistics)}")
    return plain(statistics[name])


#: Statistics that checkpoints written before they existed lack: what those runs were built with.
_ADDED_LATER = {"energy_shifts": lambda statistics: {int(z): 0.0 for z in statistics.get("species", ())}}


def register_statistics_resolver() -> None:
    """Make ``${training_data_stats:NAME}`` known to OmegaConf (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(STATISTICS_RESOLVER):
        OmegaConf.register_new_resolver(STATISTICS_RESOLVER, _statistic)


@contextlib.contextmanager
def training_data_statistics(statistics: Mapping) -> Iterator[None]:
    """Within the block, ``${training_data_stats:NAME}`` resolves to ``statistics[NAME]``."""
    register_statistics_resolver()
    token = _statistics.set(statistics)
    try:
        yield
    finally:
        _statistics.reset(token)


def model_target_class(model_cfg: Mapping) -> type:
    """The class named by ``model._target_``."""
    from hydra.utils import get_class

    target = model_cfg.get("_target_")
    if not target:
        raise ConfigError("the model config has no _target_; choose a model with model=nequip or model=mace")
    try:
        return get_class(target)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported the same way
        raise ConfigError(f"model._target_={target!r} cannot be imported ({exc}); check the name") from exc


def model_arguments(model_cfg: Mapping, statistics: Mapping) -> tuple[type, dict[str, Any]]:
    """The model class and its constructor kwargs: the config's values, statistics resolved from ``statistics``.

    Raises ``ConfigError`` for an argument the class does not take, or when the data holds an
    element outside a ``species`` list the user gave.
    """
    cls = model_target_class(model_cfg)
    with training_data_statistics(statistics):
        kwargs = {k: v for k, v in plain(model_cfg).items() if k != "_target_"}
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model setting(s) {unknown} are not arguments of {cls.__module__}.{cls.__name__}; "
            f"its arguments are {sorted(k for k in accepted if k not in ('self', 'kwargs'))}"
        )
    check_species(normalize_species(kwargs["species"]), statistics["species"])
    return cls, kwargs


def check_species(model_species, data_species) -> None:
    """``ConfigError`` naming the elements of the training data that the model does not know."""
    missing = unknown_elements(model_species, data_species)
    if missing:
        every = symbols(sorted({*map(int, model_species), *map(int, data_species)}))
        raise ConfigError(
            f"the training data contains element(s) {missing} that the model's species "
            f"{symbols(model_species)} do not include. Remove model.species (the default takes the species "
            f"from the data) or list every element of the data, e.g. model.species=[{','.join(every)}]"
        )


def build_model(model_cfg: Mapping, statistics: Mapping, dtype: str = "auto") -> torch.nn.Module:
    """The potential of ``model_cfg`` with its statistics resolved, in ``dtype`` (``"auto"``: the
    class's :attr:`~mpnn_ip.models.base.Potential.default_dtype`)."""
    cls, kwargs = model_arguments(model_cfg, statistics)
    target = resolve_dtype(dtype) or getattr(cls, "default_dtype", torch.float32)
    return cls(**kwargs).to(target)


def model_from_checkpoint_metadata(meta: Mapping, model_cfg: Mapping, path, data_species) -> torch.nn.Module:
    """Rebuild the model a resumed run continues (the checkpoint's constructor arguments win over the config)."""
    wanted = registry_name(model_target_class(model_cfg))
    if meta["model_name"] != wanted:
        raise ConfigError(
            f"checkpoint {path} holds a {meta['model_name']!r} model but the config builds {wanted!r}. "
            f"Resume with model={meta['model_name']} (and the other overrides of the original run), "
            "or start a new run without ckpt_path."
        )
    model = model_from_metadata(meta, path)
    load_weights(model, read_checkpoint(path), path)  # mismatched tensors are refused here, not inside Lightning
    check_species(model.species, data_species)
    return model


def build_optimizer_factory(optim_cfg):
    """``partial(torch.optim.X, ...)`` from ``optim`` (a ``_partial_: true`` config)."""
    from hydra.utils import instantiate

    return instantiate(optim_cfg)


def build_scheduler_factory(scheduler_cfg):
    """``partial(lr_scheduler.X, ...)`` or ``None`` when the ``scheduler`` group is ``none``/empty."""
    from hydra.utils import instantiate

    if not scheduler_cfg:
        return None
    return instantiate(scheduler_cfg)


def build_datamodule(data_cfg, model_cfg=None):
    """The ``AtomicDataModule`` (or any ``_target_``) of ``data``, set up for fitting.

    When ``data.species`` is null and ``model_cfg`` fixes the species (a list, not the statistics
    resolver), those are the elements the files may hold (and the statistics cover).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    overrides = {}
    if (
        model_cfg is not None
        and "species" in data_cfg
        and data_cfg.get("species") is None
        and "species" in model_cfg
        and not OmegaConf.is_interpolation(model_cfg, "species")
    ):
        overrides["species"] = plain(model_cfg.species)
    datamodule = instantiate(data_cfg, _convert_="all", **overrides)
    datamodule.setup("fit")
    return datamodule


def build_callbacks(callbacks_cfg, has_logger: bool) -> list:
    """Instantiated callbacks of the ``callbacks`` group (a dict name -> config; ``null`` entries skipped)."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor

    callbacks = []
    for name, cfg in (callbacks_cfg or {}).items():
        if not cfg:
            continue
        if "_target_" not in cfg:
            raise ConfigError(f"callbacks.{name} has no _target_ (the class to build)")
        callback = instantiate(cfg, _convert_="all")
        if isinstance(callback, LearningRateMonitor) and not has_logger:
            continue  # it needs a logger to write to
        callbacks.append(callback)
    return callbacks


def build_loggers(logger_cfg) -> list:
    """Instantiated loggers of the ``logger`` group (a dict name -> config)."""
    from hydra.utils import instantiate

    return [instantiate(cfg, _convert_="all") for cfg in (logger_cfg or {}).values() if cfg]


def build_trainer(trainer_cfg, callbacks: list, loggers: list):
    """The Lightning ``Trainer``; ``inference_mode`` is always off (forces need autograd in validation).

    ``use_distributed_sampler`` is off: the data module shares each epoch's frames between DDP processes
    itself (:mod:`mpnn_ip.data.sampler`; seeded by ``seed`` and the epoch, validation frames not repeated).
    A multi-node run (``trainer.num_nodes`` > 1) needs a launcher that says where this process stands
    (SLURM's ``srun``, ``torchrun``, or ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK`` by hand); without
    one it is a ConfigError naming the missing variables, instead of a process waiting for nodes that
    never come (:func:`check_launcher_environment`).

    ``trainer.enable_progress_bar=false`` also drops a progress-bar callback (Lightning refuses both).
    Checkpoints are written atomically (:class:`mpnn_ip.train.checkpoint_io.AtomicCheckpointIO`, added
    to the config's ``trainer.plugins``) unless those plugins already hold a ``CheckpointIO`` of their own.
    """
    from hydra.utils import instantiate
    from lightning.fabric.plugins import CheckpointIO
    from lightning.pytorch.callbacks import ProgressBar
    from omegaconf import DictConfig, open_dict

    from mpnn_ip.train.checkpoint_io import AtomicCheckpointIO

    check_launcher_environment(int(trainer_cfg.get("num_nodes") or 1))
    if trainer_cfg.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    configured = trainer_cfg.get("plugins")
    if configured is None:
        plugins = []
    else:
        configured = instantiate(configured, _convert_="all")
        trainer_cfg = copy.deepcopy(trainer_cfg)  # a DictConfig copy keeps its parent (for ${output_dir})
        with open_dict(trainer_cfg) if isinstance(trainer_cfg, DictConfig) else contextlib.nullcontext():
            del trainer_cfg["plugins"]
        plugins = list(configured) if isinstance(configured, (list, tuple)) else [configured]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return instantiate(
        trainer_cfg,
        callbacks=callbacks,
        logger=loggers or False,
        inference_mode=False,
        plugins=plugins,
        use_distributed_sampler=False,
        _convert_="all",
    )


def is_global_zero(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is rank 0 of its job, from what the launcher set (torchrun ``RANK``, SLURM
    ``SLURM_PROCID``, jsrun; Lightning's own DDP processes ``NODE_RANK``/``LOCAL_RANK``): known before the
    Trainer exists, so that files written before ``fit`` (``config.yaml``, ``skipped_frames.csv``,
    ``prepare.json``) are written once. True in a process nobody launched."""
    import os

    environ = os.environ if environ is None else environ
    for name in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if environ.get(name, "").isdigit():
            return int(environ[name]) == 0
    return all(int(environ.get(name, "0") or 0) == 0 for name in ("NODE_RANK", "LOCAL_RANK"))


#: Variables by which each launcher tells a process its place in a multi-node job.
LAUNCHER_VARIABLES = {
    "SLURM (srun)": ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"),
    "torchrun": ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE"),
    "by hand": ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK"),
}


def check_launcher_environment(num_nodes: int, environ: Mapping[str, str] | None = None) -> None:
    """ConfigError when ``num_nodes`` > 1 and no launcher set all of its variables (:data:`LAUNCHER_VARIABLES`),
    naming the variables missing from the launcher that came closest."""
    import os

    if num_nodes <= 1:
        return
    environ = os.environ if environ is None else environ
    missing = {name: [v for v in names if v not in environ] for name, names in LAUNCHER_VARIABLES.items()}
    if any(not names for names in missing.values()):
        return
    closest = min(missing, key=lambda name: len(missing[name]) / len(LAUNCHER_VARIABLES[name]))
    raise ConfigError(
        f"trainer.num_nodes={num_nodes} needs a launcher that starts one process per GPU on every node and tells "
        f"each its place, but {', '.join(missing[closest])} {'is' if len(missing[closest]) == 1 else 'are'} not set "
        f"(looked for {closest}: {', '.join(LAUNCHER_VARIABLES[closest])}). Start the job with srun (see "
        "scripts/slurm/train.sbatch) or torchrun --nnodes=N --nproc_per_node=G ..., or set MASTER_ADDR, MASTER_PORT "
        "and NODE_RANK on every node; trainer.num_nodes=1 trains on this node only."
    )
