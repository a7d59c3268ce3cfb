"""Heads: named outputs of one model that share everything but their own small parts (mace-torch's multi-head models).

A model with heads ``["pbe", "r2scan"]`` computes one node energy per head from the same features; each
frame is evaluated with its own head (``inputs["head"] [B]``, an index into the heads; absent = 0, the
first head, which is the *default head*). What is per head: E0 (the base class, ``e0 [H, S]``) and what a
model declares in :meth:`~mpnn_ip.models.base.Potential.per_head_tensors` (MACE: the readout columns and
the scale/shift). A model with one head has exactly the parameters of a model without heads.

Per-head constructor values (``e0s``, ``energy_scale``, ``energy_shift``) are given either once for every
head, in their usual form, or as ``{head name: value}`` with every head named (models with several heads).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mpnn_ip.errors import ConfigError

#: Name of the one head of a model built without ``heads`` (mace-torch's name too).
DEFAULT_HEAD = "Default"


def normalize_heads(heads: Sequence[str] | None) -> list[str]:
    """Head names as a list of distinct non-empty strings; None = ``[DEFAULT_HEAD]``."""
    if heads is None:
        return [DEFAULT_HEAD]
    if isinstance(heads, str):
        raise ValueError(f"heads must be a list of names, e.g. ['{heads}'], not the string {heads!r}")
    names = [str(h) for h in heads]
    if not names or any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"heads must be distinct non-empty names (at least one), got {list(heads)}")
    return names


def is_per_head(value: Any, heads: Sequence[str]) -> bool:
    """Whether ``value`` is a ``{head name: value}`` mapping naming every head of a several-head model."""
    return len(heads) > 1 and isinstance(value, Mapping) and {str(k) for k in value} == set(heads)


def per_head_values(value: Any, heads: Sequence[str]) -> list[Any]:
    """One value per head: ``value[head]`` of a per-head mapping, else ``value`` for every head."""
    if is_per_head(value, heads):
        by_name = {str(k): v for k, v in value.items()}
        return [by_name[head] for head in heads]
    return [value] * len(heads)


def map_per_head(value: Any, heads: Sequence[str], fn: Callable[[Any], Any]) -> Any:
    """``fn`` applied to each head's value of a per-head mapping, or to ``value`` itself."""
    if is_per_head(value, heads):
        return {str(k): fn(v) for k, v in value.items()}
    return fn(value)


def selected_per_head(value: Any, heads: Sequence[str], index: Sequence[int], new_heads: Sequence[str]) -> Any:
    """The per-head ``value`` of a model with ``heads`` for a model whose head k is head ``index[k]``:
    a plain value when the new model has one head or every selected head has the same one."""
    values = per_head_values(value, heads)
    selected = [values[i] for i in index]
    if len(new_heads) == 1 or all(v == selected[0] for v in selected):
        return selected[0]
    return dict(zip(new_heads, selected))


def head_index(heads: Sequence[str], name: str, owner: str) -> int:
    """Index of head ``name`` in ``heads``; ``ConfigError`` listing the heads of ``owner`` when it has none so named."""
    if str(name) not in heads:
        raise ConfigError(
            f"{owner} has no head {name!r}; its heads are {list(heads)} (the first is the default): pass one of them"
        )
    return list(heads).index(str(name))


def select_head(model, head: str | None):
    """``model`` evaluated with head ``head`` (a one-head copy, see ``Potential.with_heads``); None: ``model`` itself
    (its default head). A ``Committee`` selects the head in each member."""
    if head is None:
        return model
    if hasattr(model, "with_heads"):
        return model.with_heads([head])
    members = getattr(model, "members", None)
    if members is not None and all(hasattr(m, "with_heads") for m in members):
        return type(model)([m.with_heads([head]) for m in members], names=model.names)
    raise ConfigError(f"head={head!r}: a {type(model).__name__} has no heads to choose from; leave head unset")


def selected_head_state(model, rebuilt, index: list[int]) -> dict:
    """The state dict of ``rebuilt`` (heads ``index`` of ``model``, a Potential): per-head tensors selected, shared ones
    copied; constant buffers whose shape depends on the number of heads (e3nn's output masks) are rebuilt's."""
    source, target = model.state_dict(), rebuilt.state_dict()
    per_head = model.per_head_tensors()
    parameters = {name for name, _ in rebuilt.named_parameters()}
    selection = torch.tensor(index, device=model.e0.device)
    state = {}
    for name, value in target.items():
        if name in per_head:
            shape, axis = per_head[name]
            state[name] = source[name].reshape(shape).index_select(axis, selection).reshape(value.shape).clone()
        elif name in source and source[name].shape == value.shape:
            state[name] = source[name]
        elif name not in parameters:
            state[name] = value
        else:
            raise ValueError(
                f"{type(model).__name__}.per_head_tensors does not declare {name}, whose shape depends on the heads"
            )
    return state
