"""Assembled potentials, selectable by name (``model=NAME`` in the configs)."""

from __future__ import annotations

import importlib

from mpnn_ip.models.base import Potential, normalize_species

#: name -> "module:Class"; imported lazily so one model's import cost is not paid by all.
MODEL_REGISTRY = {
    "nequip": "mpnn_ip.models.nequip:NequIP",
    "mace": "mpnn_ip.models.mace:MACE",
    "schnet": "mpnn_ip.models.schnet:SchNet",
    "bpnn": "mpnn_ip.models.bpnn:BPNN",
    "gap": "mpnn_ip.models.gap:GAP",
}


def model_class(name: str) -> type[Potential]:
    """The class registered under ``name``."""
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_REGISTRY)}")
    module, cls = MODEL_REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, **kwargs) -> Potential:
    """Instantiate model ``name`` with its constructor keyword arguments."""
    return model_class(name)(**kwargs)


__all__ = ["MODEL_REGISTRY", "Potential", "build_model", "model_class", "normalize_species"]
