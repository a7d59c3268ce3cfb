"""Constructor arguments as plain values: what a checkpoint stores to rebuild a model.

:class:`~mpnn_ip.models.base.Potential` records each model's arguments once, from the bound
signature of the most derived ``__init__`` (:func:`record_constructor_arguments`), so no model
keeps a second list of its options.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch


def plain(value: Any) -> Any:
    """``value`` with numpy values, tensors, tuples, irreps and OmegaConf containers turned into plain python.

    Raises ``TypeError`` for anything else that is not None, bool, int, float or str.
    """
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value).__module__ == "builtins":
        return [plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if type(value).__module__.startswith("e3nn"):  # o3.Irreps / o3.Irrep: their str() parses back
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cannot store {type(value).__name__} {value!r} as a plain value (checkpoints hold plain values only)"
    )


def record_constructor_arguments(init: Callable) -> Callable:
    """Wrap a model's ``__init__`` so that it stores its bound arguments (defaults applied, plain values)
    in ``self._constructor_arguments``; the most derived class's wrapper runs last and wins."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def recording_init(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        init(self, *args, **kwargs)
        arguments = {}
        for name, value in list(bound.arguments.items())[1:]:
            kind = signature.parameters[name].kind
            if kind == inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            elif kind != inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = value
        try:
            self._constructor_arguments = plain(arguments)
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__}: {exc}") from exc

    recording_init.__signature__ = signature
    return recording_init
