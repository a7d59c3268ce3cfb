"""Import NequIP 0.19 Lightning training checkpoints (``.ckpt``): recognise them, take the weights the
training module evaluates (the state dict's ``model.*`` weights, or their EMA), and convert the model with
:func:`mpnn_ip.interop.nequip.convert_model`."""

from __future__ import annotations

from typing import Any

import torch

from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.imported import ImportedModel
from mpnn_ip.interop.nequip import CONSTANT_TENSOR, convert_model, func_tensors
from mpnn_ip.interop.nequip_config import options_with_species, plain_config
from mpnn_ip.interop.records import plain

__all__ = ["convert_nequip_checkpoint", "looks_like_nequip_checkpoint"]

#: the training modules whose ``model.*`` weights are the evaluated model
PLAIN_TRAINING_MODULES = {
    "nequip.train.NequIPLightningModule",
    "nequip.train.lightning.NequIPLightningModule",
    "nequip.train.ConFIGLightningModule",
    "nequip.train.config.ConFIGLightningModule",
}
#: the training modules that evaluate the exponential moving average ``ema.ema_weight_{i}`` of the parameters
EMA_TRAINING_MODULES = {
    "nequip.train.EMALightningModule",
    "nequip.train.ema.EMALightningModule",
    "nequip.train.EMAConFIGLightningModule",
    "nequip.train.config.EMAConFIGLightningModule",
}


def looks_like_nequip_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` (what :func:`~mpnn_ip.interop.safe_pickle.load_torch_file` returned) is a NequIP Lightning checkpoint."""
    if not isinstance(obj, dict) or "state_dict" not in obj or "hyper_parameters" not in obj:
        return False
    hyper = plain_config(obj["hyper_parameters"])
    if not isinstance(hyper, dict):
        return False
    versions = (hyper.get("info_dict") or {}).get("versions") or {}
    model = hyper.get("model") or {}
    return "nequip" in versions or str(model.get("_target_", "")).startswith("nequip.")


def _is_parameter(key: str, tensor: torch.Tensor, options: dict) -> bool:
    """Whether NequIP registers this model tensor as a parameter (what ``model.parameters()`` yields, in
    state-dict order): every non-empty weight, and the Bessel weights / energy scales / shifts when trainable."""
    if (
        tensor.numel() == 0
        or CONSTANT_TENSOR.search(key)
        or key.startswith("pair_potential.")
        or key.endswith(".alpha")
    ):
        return False
    if key.endswith("avg_num_neighbors_norm.norm_const"):
        return False
    trainable = {
        "bessel_encode.bessel_weights": options["bessel_trainable"],
        "per_type_energy_scale_shift.scales": options["per_type_energy_scales_trainable"],
        "per_type_energy_scale_shift.shifts": options["per_type_energy_shifts_trainable"],
    }
    return bool(trainable.get(key, True))


def _with_ema_weights(
    tensors: dict[str, torch.Tensor], state: dict, options: dict, where: str
) -> dict[str, torch.Tensor]:
    """The model tensors with the parameters replaced by the EMA weights an EMA training module evaluates.

    ``ema.ema_weight_{i}`` is the average of the i-th of ``model.parameters()``; the parameter list is
    rebuilt from the state dict and must match the EMA weights one for one in shape.
    """
    extra = state.get("ema._extra_state")
    if isinstance(extra, dict) and extra.get("is_holding_ema_weights") is False:
        raise UnsupportedModelError(
            f"{where}: the checkpoint was saved while its EMA weights were swapped into the model; not converted"
        )
    ema = {
        int(k[len("ema.ema_weight_") :]): v
        for k, v in state.items()
        if k.startswith("ema.ema_weight_") and k[len("ema.ema_weight_") :].isdigit()
    }
    ema_weights = [ema[i] for i in range(len(ema))] if sorted(ema) == list(range(len(ema))) else None
    parameters = [k for k, v in tensors.items() if _is_parameter(k, v, options)]
    if ema_weights is None or [tuple(tensors[k].shape) for k in parameters] != [tuple(w.shape) for w in ema_weights]:
        raise UnsupportedModelError(
            f"{where}: the EMA weights ({len(ema)}) do not match the model's parameters ({len(parameters)}) one for one; not converted"
        )
    return {**tensors, **dict(zip(parameters, ema_weights))}


def convert_nequip_checkpoint(ckpt: dict, where: str = "NequIP checkpoint") -> ImportedModel:
    """Convert a NequIP 0.19 Lightning training checkpoint (read by ``load_torch_file``).

    Raises:
        UnsupportedModelError: another training module (EMA, ...), model builder or option (named).
    """
    hyper = plain_config(ckpt.get("hyper_parameters"))
    if not isinstance(hyper, dict) or "model" not in hyper:
        raise UnsupportedModelError(
            f"{where}: hyper_parameters has no model config; not a NequIP 0.19 training checkpoint"
        )
    info = hyper.get("info_dict") or {}
    module = str((info.get("training_module") or {}).get("_target_", "nequip.train.NequIPLightningModule"))
    if module not in PLAIN_TRAINING_MODULES | EMA_TRAINING_MODULES:
        raise UnsupportedModelError(
            f"{where}: training_module {module!r} is not supported (its evaluated weights are neither the state_dict's "
            "model.* weights nor their EMA); package the checkpoint with `nequip-package build` and import the .nequip.zip"
        )
    options = options_with_species(hyper["model"], info.get("data"), where)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise UnsupportedModelError(f"{where}: state_dict is a {type(state).__name__}, not a mapping")
    tensors = func_tensors({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, where)
    if module in EMA_TRAINING_MODULES:
        tensors = _with_ema_weights(tensors, state, options, where)
    model = convert_model(options, tensors, where)
    versions = info.get("versions") or {}
    return ImportedModel(
        potential=model,
        package="nequip",
        package_version=str(versions["nequip"]) if versions.get("nequip") else None,
        hyperparameters=plain(hyper["model"]),
        heads=["Default"],
    )
