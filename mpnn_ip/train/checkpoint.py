"""The ``ckpt["mpnn_ip"]`` metadata of a checkpoint, and reading it back with helpful errors.

A checkpoint is self-contained (see the checkpoint contract in the architecture notes):
``build_model(meta["model_name"], **meta["model_config"])`` + the ``model.``-prefixed entries of
``ckpt["state_dict"]`` (EMA weights) + ``.to(meta["dtype"])`` rebuild the trained model. Everything
here is plain python (loads with ``torch.load(path, weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from mpnn_ip.errors import ConfigError

FORMAT_VERSION = 1
UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-paragraph errors for missing, corrupted or foreign files."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; give the path of a .ckpt file written by mpnn-train")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "The file is corrupted, truncated or not a checkpoint written by mpnn-train; use another "
            "checkpoint (e.g. checkpoints/last.ckpt of the run)."
        ) from exc
    if not isinstance(ckpt, dict) or "mpnn_ip" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(
            f"checkpoint {path} has no mpnn_ip metadata: it was not written by mpnn-train "
            "(a plain Lightning or torch file cannot be resumed or loaded here)"
        )
    meta = ckpt["mpnn_ip"]
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"checkpoint {path} has format version {meta.get('format_version')}, this package reads "
            f"{FORMAT_VERSION}; use the mpnn_ip version {meta.get('package_version')} that wrote it"
        )
    return ckpt
