"""Rebuild a trained potential from a checkpoint alone (no Hydra files, no pickled modules).

A checkpoint written by ``mpnn-train`` holds ``ckpt["mpnn_ip"]`` (model name, constructor
arguments, dtype, statistics, units) and the EMA weights under ``ckpt["state_dict"]["model.*"]``.
It is read with ``torch.load(weights_only=True)``, so loading never runs code from the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mpnn_ip.errors import ConfigError

#: Checkpoint format this package reads (``ckpt["mpnn_ip"]["format_version"]``).
FORMAT_VERSION = 1
#: Prefix of the model's entries in the LightningModule state dict.
MODEL_PREFIX = "model."
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"float32"``/``"float64"``/``torch.float*``/``None`` -> torch dtype or None (keep the checkpoint's)."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; use float32 or float64")
    return DTYPES[name]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (``weights_only=True``) after checking it is an mpnn_ip checkpoint.

    Raises:
        ConfigError: missing file, unreadable/corrupted file, or a file without ``mpnn_ip``
            metadata (e.g. a NequIP or MACE model file, a plain torch file).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"checkpoint {path} does not exist. Give the path of a .ckpt file written by mpnn-train "
            "(e.g. outputs/<run>/checkpoints/last.ckpt); relative paths start at the working directory."
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unpickling failure means the same to the user
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0][:160]
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {detail}). The file is corrupted, "
            "truncated, or not a checkpoint of plain tensors written by mpnn-train; copy it again or use "
            "another checkpoint of the run (e.g. checkpoints/last.ckpt)."
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("mpnn_ip"), dict) or "state_dict" not in ckpt:
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConfigError(
            f"{path} is not an mpnn_ip checkpoint: it has no 'mpnn_ip' metadata and model weights (found {keys}). "
            "Models from other packages (NequIP, MACE, plain torch files) cannot be loaded here; use a "
            "checkpoint written by mpnn-train."
        )
    meta = ckpt["mpnn_ip"]
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"checkpoint {path} has format version {meta.get('format_version')!r} but this mpnn_ip reads "
            f"version {FORMAT_VERSION}; load it with mpnn_ip {meta.get('package_version', '(unknown)')}, "
            "which wrote it."
        )
    for key in ("model_name", "model_config"):
        if key not in meta:
            raise ConfigError(f"checkpoint {path} lacks mpnn_ip metadata {key!r}; it is incomplete, use another checkpoint.")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None):
    """The trained :class:`mpnn_ip.models.Potential` of checkpoint ``path``, in eval mode.

    Args:
        path: a ``.ckpt`` written by ``mpnn-train``.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: ``"float32"`` or ``"float64"``; ``None`` keeps the dtype the model was trained in.

    The model carries the checkpoint's metadata as ``model.checkpoint_metadata`` (a dict with
    ``statistics``, ``units``, ``package_version``...).

    Raises:
        ConfigError: missing, corrupted or foreign file; unknown model name; weights that do not
            fit the model (a checkpoint of another model type or an edited config).
    """
    from mpnn_ip.models import MODEL_REGISTRY, build_model

    path = Path(path).expanduser()
    ckpt = read_checkpoint(path)
    meta = ckpt["mpnn_ip"]
    name = meta["model_name"]
    if name not in MODEL_REGISTRY:
        raise ConfigError(
            f"checkpoint {path} holds a model named {name!r}, which this mpnn_ip does not know "
            f"(known: {sorted(MODEL_REGISTRY)}); install the mpnn_ip version {meta.get('package_version', '')} "
            "that wrote it."
        )
    try:
        model = build_model(name, **meta["model_config"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint {path}: the stored constructor arguments do not build a {name!r} model ({exc}). "
            f"It was written by mpnn_ip {meta.get('package_version', '(unknown)')}; load it with that version."
        ) from exc
    state = {k[len(MODEL_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    if not state:
        raise ConfigError(f"checkpoint {path} has no model weights (no 'model.*' entries in its state_dict); use another checkpoint.")
    # Load in the stored precision first: a float64 checkpoint copied into float32 tensors loses digits.
    model = model.to(DTYPES.get(meta.get("dtype", "float32"), torch.float32))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise ConfigError(
            f"checkpoint {path}: the stored weights do not fit a {name!r} model built from its stored "
            f"config ({first}). The file was probably written by another model type or an edited checkpoint; "
            "use a checkpoint written by mpnn-train for this model."
        ) from exc
    target = resolve_dtype(dtype) or DTYPES.get(meta.get("dtype", "float32"), torch.float32)
    model = model.to(device=torch.device(device), dtype=target)
    model.checkpoint_metadata = {k: v for k, v in meta.items() if k != "model_config"} | {"path": str(path)}
    return model.eval()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; other names as given (checked)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available here; use device=cpu")
    return resolved


def check_species(model, atomic_numbers, source: str) -> None:
    """Raise ConfigError when ``source`` (a file name) has elements the model was not trained on."""
    from ase.data import chemical_symbols

    present = {int(z) for z in atomic_numbers}
    unknown = sorted(present - set(model.species))
    if unknown:
        known = [chemical_symbols[z] for z in model.species]
        missing = [chemical_symbols[z] for z in unknown]
        where = model.checkpoint_metadata["path"] if hasattr(model, "checkpoint_metadata") else "the model"
        raise ConfigError(
            f"{source} contains element(s) {missing} that {where} was not trained on (it knows {known}). "
            "Use a model trained on these elements, or structures made only of the known ones."
        )
