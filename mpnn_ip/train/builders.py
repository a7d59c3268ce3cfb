"""Build the pieces of a training run from the composed Hydra config (``configs/train.yaml``).

Each function takes the part of the config it needs and returns a built object; the CLI
(:mod:`mpnn_ip.cli.train`) chains them. Statistics of the training split fill the model
arguments the user left ``null``: ``species`` (elements of the data), ``e0s`` (eV, isolated-atom
or least-squares per-species energies), ``avg_num_neighbors`` and ``energy_scale`` (the force
RMS; its value in eV/Å sets the readout's scale in eV).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from ase.data import chemical_symbols

from mpnn_ip.errors import ConfigError
from mpnn_ip.train.checkpoint import DTYPES, plain

#: model argument -> how it is derived from the training statistics when left null.
STATISTICS_ARGUMENTS = ("species", "e0s", "avg_num_neighbors", "energy_scale")


def _container(cfg) -> Any:
    return plain(cfg)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is not supported; use dtype=float32 or dtype=float64")
    return DTYPES[name]


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


def _symbols(numbers) -> list[str]:
    return [chemical_symbols[int(z)] for z in numbers]


def model_arguments(model_cfg: Mapping, statistics: Mapping) -> tuple[type, dict[str, Any]]:
    """The model class and its constructor kwargs: the config's values, ``null`` ones filled from statistics.

    Raises ``ConfigError`` for an argument the class does not take, or when the data holds an
    element outside a ``species`` list the user gave.
    """
    from mpnn_ip.models import normalize_species

    cls = model_target_class(model_cfg)
    kwargs = {k: v for k, v in _container(model_cfg).items() if k != "_target_"}
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model setting(s) {unknown} are not arguments of {cls.__module__}.{cls.__name__}; "
            f"its arguments are {sorted(k for k in accepted if k not in ('self', 'kwargs'))}"
        )
    data_species = [int(z) for z in statistics["species"]]
    derived = {
        "species": data_species,
        "e0s": {int(z): float(e) for z, e in statistics["e0s"].items()},
        "avg_num_neighbors": float(statistics["avg_num_neighbors"]),
        "energy_scale": float(statistics["force_rms"]),
    }
    for key, value in derived.items():
        if kwargs.get(key) is None:
            kwargs[key] = value
    check_species(normalize_species(kwargs["species"]), data_species)
    return cls, kwargs


def check_species(model_species, data_species) -> None:
    """``ConfigError`` naming the elements of the data that the model does not know."""
    missing = sorted(set(int(z) for z in data_species) - set(int(z) for z in model_species))
    if missing:
        raise ConfigError(
            f"the training data contains element(s) {_symbols(missing)} that the model's species "
            f"{_symbols(model_species)} do not include. Remove model.species (null = take the species "
            "from the data) or list every element of the data, e.g. "
            f"model.species=[{','.join(_symbols(sorted(set(model_species) | set(missing))))}]"
        )


def build_model(model_cfg: Mapping, statistics: Mapping, dtype: str = "float64") -> torch.nn.Module:
    """The potential of ``model_cfg`` with statistics-derived defaults, in ``dtype``."""
    cls, kwargs = model_arguments(model_cfg, statistics)
    return cls(**kwargs).to(resolve_dtype(dtype))


def model_from_checkpoint_metadata(meta: Mapping, model_cfg: Mapping, path, data_species) -> torch.nn.Module:
    """Rebuild the model a resumed run continues (the checkpoint's constructor arguments win over the config)."""
    from mpnn_ip.models import build_model as build_registered
    from mpnn_ip.train.checkpoint import registry_name

    cls = model_target_class(model_cfg)
    wanted = registry_name(cls)
    if meta["model_name"] != wanted:
        raise ConfigError(
            f"checkpoint {path} holds a {meta['model_name']!r} model but the config builds {wanted!r}. "
            f"Resume with model={meta['model_name']} (and the other overrides of the original run), "
            "or start a new run without ckpt_path."
        )
    model = build_registered(meta["model_name"], **meta["model_config"])
    check_species(model.species, data_species)
    return model.to(resolve_dtype(meta["dtype"]))


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


def build_datamodule(data_cfg):
    """The ``AtomicDataModule`` (or any ``_target_``) of ``data``, set up for fitting."""
    from hydra.utils import instantiate

    datamodule = instantiate(data_cfg, _convert_="all")
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
    """
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    if trainer_cfg.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False, inference_mode=False, _convert_="all")
