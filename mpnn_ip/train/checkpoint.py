"""The ``ckpt["mpnn_ip"]`` metadata of a checkpoint (reading it back: :func:`mpnn_ip.inference.read_checkpoint`).

A checkpoint is self-contained (see the checkpoint contract in the architecture notes):
``build_model(meta["model_name"], **meta["model_config"])`` + the ``model.``-prefixed entries of
``ckpt["state_dict"]`` (EMA weights) + ``.to(meta["dtype"])`` rebuild the trained model. Everything
here is plain python (loads with ``torch.load(path, weights_only=True)``).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from mpnn_ip.errors import ConfigError
from mpnn_ip.inference import DTYPES, FORMAT_VERSION
from mpnn_ip.inference import read_checkpoint as load_checkpoint  # one reader for training and inference

__all__ = ["DTYPES", "FORMAT_VERSION", "UNITS", "checkpoint_metadata", "dtype_name", "load_checkpoint", "plain",
           "registry_name"]

UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"}


def plain(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tensors, tuples and OmegaConf containers turned into plain python."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 and value.dim() == 0 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} {value!r} in a checkpoint (plain values only)")


def registry_name(model: torch.nn.Module | type) -> str:
    """The ``MODEL_REGISTRY`` name of ``model`` (a model or its class)."""
    from mpnn_ip.models import MODEL_REGISTRY

    cls = model if isinstance(model, type) else type(model)
    target = f"{cls.__module__}:{cls.__name__}"
    for name, entry in MODEL_REGISTRY.items():
        if entry == target:
            return name
    raise ConfigError(
        f"{target} is not in mpnn_ip.models.MODEL_REGISTRY; register it there so checkpoints can rebuild it"
    )


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ConfigError(f"dtype {dtype} is not supported; use float32 or float64")


def checkpoint_metadata(model: torch.nn.Module, statistics: Mapping | None) -> dict[str, Any]:
    """``ckpt["mpnn_ip"]`` for ``model`` (a ``Potential`` with ``.config``) and the training statistics."""
    import mpnn_ip

    config = plain(dict(model.config))
    config["species"] = [int(z) for z in model.species]
    if config.get("e0s") is not None:
        from ase.data import atomic_numbers

        config["e0s"] = {
            (atomic_numbers[k] if isinstance(k, str) else int(k)): float(v) for k, v in config["e0s"].items()
        }
    return {
        "format_version": FORMAT_VERSION,
        "package_version": mpnn_ip.__version__,
        "model_name": registry_name(model),
        "model_config": config,
        "dtype": dtype_name(model.dtype),
        "statistics": plain(statistics or {}),
        "units": dict(UNITS),
    }
