"""The checkpoint format: its version, the ``ckpt["mpnn_ip"]`` metadata, reading, :func:`load_model`, and
:func:`load_potential` (one checkpoint's model, or the committee of several, as ``mpnn-eval``/``mpnn-select`` take them).

A checkpoint written by ``mpnn-train`` (a Lightning checkpoint) is self-contained:
``ckpt["mpnn_ip"]`` holds the model's registry name, its constructor arguments (recorded by
:class:`~mpnn_ip.models.Potential` from the bound signature), dtype, training statistics and
units; ``ckpt["state_dict"]["model.*"]`` holds the (EMA) weights. Everything is plain python
and tensors, read with ``torch.load(weights_only=True)``, so loading never runs code from the file.

Format versions: 1 (mpnn_ip 0.1.0 before the constructor arguments were recorded by the base
class; BPNN and GAP stored arguments they never used) and 2 (now). Version 1 files are read by
dropping those retired arguments (:data:`RETIRED_ARGUMENTS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mpnn_ip.elements import symbols, unknown_elements
from mpnn_ip.errors import ConfigError
from mpnn_ip.models import MODEL_REGISTRY, Potential, build_model
from mpnn_ip.models.arguments import plain
from mpnn_ip.outputs import UNITS

#: Format this package writes (``ckpt["mpnn_ip"]["format_version"]``), and the ones it reads.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: Version 1 constructor arguments that the models no longer take: ``{model name: [argument]}``.
RETIRED_ARGUMENTS = {"bpnn": ["avg_num_neighbors"], "gap": ["avg_num_neighbors", "energy_scale"]}
#: Prefix of the model's entries in the LightningModule state dict.
MODEL_PREFIX = "model."
DTYPES = {"float32": torch.float32, "float64": torch.float64}

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "MODEL_PREFIX",
    "check_model_species",
    "checkpoint_metadata",
    "checkpoint_paths",
    "dtype_name",
    "load_model",
    "load_potential",
    "model_from_metadata",
    "plain",
    "read_checkpoint",
    "registry_name",
    "resolve_device",
    "resolve_dtype",
]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"float32"``/``"float64"``/``torch.float*``/``None``/``"auto"`` -> torch dtype, or None (None and
    ``"auto"``: keep the model's, or its class's default for a new model)."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if str(dtype).strip().lower() == "auto":
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not supported; use float32 or float64")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"`` (only the supported dtypes)."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ConfigError(f"dtype {dtype} is not supported; use float32 or float64")


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


def registry_name(model: torch.nn.Module | type) -> str:
    """The ``MODEL_REGISTRY`` name of ``model`` (a model or its class)."""
    cls = model if isinstance(model, type) else type(model)
    target = f"{cls.__module__}:{cls.__name__}"
    for name, entry in MODEL_REGISTRY.items():
        if entry == target:
            return name
    raise ConfigError(
        f"{target} is not in mpnn_ip.models.MODEL_REGISTRY; register it there so checkpoints can rebuild it"
    )


def checkpoint_metadata(model: Potential, statistics: Mapping | None) -> dict[str, Any]:
    """``ckpt["mpnn_ip"]`` for ``model`` and the training statistics."""
    import mpnn_ip

    return {
        "format_version": FORMAT_VERSION,
        "package_version": mpnn_ip.__version__,
        "model_name": registry_name(model),
        "model_config": model.config,
        "dtype": dtype_name(model.dtype),
        "statistics": plain(statistics or {}),
        "units": dict(UNITS),
    }


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (``weights_only=True``), checked and upgraded to the current format.

    Raises:
        ConfigError: missing, unreadable or corrupted file; a file without ``mpnn_ip`` metadata
            (e.g. a NequIP or MACE model file, a plain torch file); an unknown format version.
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
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ConfigError(
            f"checkpoint {path} has format version {meta.get('format_version')!r} but this mpnn_ip reads "
            f"versions {list(READABLE_VERSIONS)}; load it with mpnn_ip {meta.get('package_version', '(unknown)')}, "
            "which wrote it."
        )
    for key in ("model_name", "model_config"):
        if key not in meta:
            raise ConfigError(
                f"checkpoint {path} lacks mpnn_ip metadata {key!r}; it is incomplete, use another checkpoint."
            )
    if meta["format_version"] == 1:
        retired = RETIRED_ARGUMENTS.get(meta["model_name"], [])
        meta["model_config"] = {k: v for k, v in meta["model_config"].items() if k not in retired}
        meta["format_version"] = FORMAT_VERSION
    return ckpt


def model_from_metadata(meta: Mapping, path: str | Path) -> Potential:
    """The (untrained) model ``meta`` describes, in its stored dtype; ``path`` names the file in errors."""
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
    return model.to(DTYPES.get(meta.get("dtype", "float32"), torch.float32))


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> Potential:
    """The trained :class:`mpnn_ip.models.Potential` of checkpoint ``path``, in eval mode.

    Args:
        path: a ``.ckpt`` written by ``mpnn-train``.
        device: where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"auto"``).
        dtype: ``"float32"`` or ``"float64"``; ``None`` keeps the dtype the model was trained in.

    The model carries the checkpoint's metadata as ``model.checkpoint_metadata`` (a dict with
    ``statistics``, ``units``, ``package_version``, ``path``...).

    Raises:
        ConfigError: missing, corrupted or foreign file; unknown model name; weights that do not
            fit the model (a checkpoint of another model type or an edited config).
    """
    path = Path(path).expanduser()
    ckpt = read_checkpoint(path)
    meta = ckpt["mpnn_ip"]
    model = model_from_metadata(meta, path)
    load_weights(model, ckpt, path)
    model = model.to(device=resolve_device(device), dtype=resolve_dtype(dtype) or model.dtype)
    model.checkpoint_metadata = {k: v for k, v in meta.items() if k != "model_config"} | {"path": str(path)}
    return model.eval()


def checkpoint_paths(spec) -> list[str]:
    """The checkpoint files of a ``ckpt_path``/``ckpts`` setting: a path or a list of them, each
    possibly a glob pattern (``outputs/sweep/*/checkpoints/best.ckpt``, matches sorted).

    Raises:
        DataError: a pattern that matches no file.
    """
    from mpnn_ip.data.reading import expand_paths

    entries = [spec] if isinstance(spec, (str, Path)) else list(spec)
    return [path for entry in entries for path in expand_paths(entry)]


def load_potential(paths: list[str], device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None):
    """The model of one checkpoint (:func:`load_model`), or the :class:`~mpnn_ip.models.committee.Committee`
    (mean and spread of the members' predictions) of several; ``device`` and ``dtype`` as for :func:`load_model`."""
    from mpnn_ip.models.committee import Committee

    models = [load_model(path, device=device, dtype=dtype) for path in paths]
    return models[0] if len(models) == 1 else Committee(models)


def check_model_species(model: Potential, atomic_numbers, source: str) -> None:
    """``ConfigError`` when ``source`` (e.g. ``"data file x.xyz"``) has elements the model was not trained on."""
    unknown = unknown_elements(model.species, atomic_numbers)
    if unknown:
        where = getattr(model, "checkpoint_metadata", {}).get("path", "the model")
        raise ConfigError(
            f"{source} contains element(s) {unknown} that {where} was not trained on (it knows {symbols(model.species)}). "
            "Use a model trained on these elements, or structures made only of the known ones."
        )


def load_weights(model: Potential, ckpt: Mapping, path: str | Path) -> None:
    """Copy the ``model.*`` tensors of checkpoint dict ``ckpt`` into ``model`` (strict: same names and shapes).

    Raises:
        ConfigError: no model weights, or weights that do not fit the architecture the metadata
            describes (missing, unexpected or differently shaped tensors; names the first ones).
    """
    state = {k[len(MODEL_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    if not state:
        raise ConfigError(
            f"checkpoint {path} has no model weights (no 'model.*' entries in its state_dict); use another checkpoint."
        )
    try:  # in the stored precision first: float64 weights copied into float32 tensors lose digits
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:400]
        raise ConfigError(
            f"checkpoint {path}: the stored weights do not fit the {ckpt['mpnn_ip']['model_name']!r} model its "
            f"metadata describes ({first}). The file was probably written by another model type or edited; "
            "use a checkpoint written by mpnn-train for this model."
        ) from exc
