"""Build the pieces of a training run from the composed Hydra config (``configs/train.yaml``).

Each function takes the part of the config it needs and returns a built object; the CLI
(:mod:`mpnn_ip.cli.train`) chains them. Statistics of the training split reach the model through
the config resolver ``${training_data_stats:NAME}`` named in each model's YAML (as NequIP's
``training_data_stats``), so a model takes only the statistics it uses: ``species`` (elements of
the data), ``e0s`` (eV, isolated-atom or least-squares per-species energies),
``avg_num_neighbors`` and ``force_rms`` (eV/Å; its value in eV sets readout scales).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
from typing import Any, Iterator, Mapping

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
    if name not in statistics:
        raise ConfigError(f"${{{STATISTICS_RESOLVER}:{name}}}: no such statistic; known: {sorted(statistics)}")
    return plain(statistics[name])


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


def build_model(model_cfg: Mapping, statistics: Mapping, dtype: str = "float64") -> torch.nn.Module:
    """The potential of ``model_cfg`` with its statistics resolved, in ``dtype``."""
    cls, kwargs = model_arguments(model_cfg, statistics)
    target = resolve_dtype(dtype)
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

    ``trainer.enable_progress_bar=false`` also drops a progress-bar callback (Lightning refuses both).
    Checkpoints are written atomically (:class:`mpnn_ip.train.checkpoint_io.AtomicCheckpointIO`, added
    to the config's ``trainer.plugins``) unless those plugins already hold a ``CheckpointIO`` of their own.
    """
    from hydra.utils import instantiate
    from lightning.fabric.plugins import CheckpointIO
    from lightning.pytorch.callbacks import ProgressBar
    from omegaconf import DictConfig, open_dict

    from mpnn_ip.train.checkpoint_io import AtomicCheckpointIO

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
        trainer_cfg, callbacks=callbacks, logger=loggers or False, inference_mode=False, plugins=plugins, _convert_="all"
    )
