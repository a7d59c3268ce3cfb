"""The data-only records of a safely unpickled file (:mod:`mpnn_ip.interop.safe_pickle`): :class:`Record`, the
submodules and tensors of a module record, and decoding: e3nn irreps, and plain python for provenance."""

from __future__ import annotations

from typing import Any

import numpy
import torch
from e3nn import o3

from mpnn_ip.interop.errors import UnsupportedModelError


class Record:
    """An instance of a class from the file, never constructed for real.

    Attributes:
        qualname: the class's ``module.name`` as the file spells it (torch.package prefix removed).
        args: the arguments the pickle gave its constructor.
        state: what the pickle's BUILD set (for ``torch.nn.Module`` and most objects the
            instance ``__dict__``), else None.
        listitems / dictitems: items a list- or dict-like class received.
    ``rec.name`` reads ``rec.state["name"]``; ``rec.get(name, default)`` likewise.
    """

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        record = object.__new__(cls)
        object.__setattr__(record, "args", tuple(args) + ((kwargs,) if kwargs else ()))
        object.__setattr__(record, "state", None)
        object.__setattr__(record, "listitems", [])
        object.__setattr__(record, "dictitems", {})
        return record

    def __setstate__(self, state):
        object.__setattr__(self, "state", state)

    def __setattr__(self, name, value):  # pickle's BUILD without __setstate__ never reaches here
        raise AttributeError(f"{self.qualname} record is read-only")

    def append(self, item):
        self.listitems.append(item)

    def extend(self, items):
        self.listitems.extend(items)

    def __setitem__(self, key, value):
        self.dictitems[key] = value

    def _attributes(self) -> dict:
        state = self.state
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            merged = dict(state[0] or {})  # (dict state, slots state)
            merged.update(state[1] or {})
            return merged
        return state if isinstance(state, dict) else {}

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attributes = self._attributes()
        if name in attributes:
            return attributes[name]
        raise AttributeError(f"the {self.qualname} record has no attribute {name!r}")

    def get(self, name: str, default: Any = None) -> Any:
        """``state[name]`` when present, else ``default``."""
        return self._attributes().get(name, default)

    def has(self, name: str) -> bool:
        """Whether the recorded state has attribute ``name``."""
        return name in self._attributes()

    @property
    def class_name(self) -> str:
        """The last part of :attr:`qualname` (``"ScaleShiftMACE"``)."""
        return self.qualname.rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"Record({self.qualname})"


def module_children(record: Record) -> dict[str, Record]:
    """The submodules of a ``torch.nn.Module`` record, by name (``_modules`` without the None entries)."""
    modules = record.get("_modules") or {}
    return {name: child for name, child in modules.items() if child is not None}


def module_tensors(record: Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every parameter and buffer of a ``torch.nn.Module`` record and its submodules, dotted names as
    ``state_dict()`` gives them (non-persistent buffers included)."""
    out: dict[str, torch.Tensor] = {}
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (record.get(kind) or {}).items():
            if isinstance(tensor, torch.Tensor):
                out[prefix + name] = tensor
    for name, child in module_children(record).items():
        if isinstance(child, Record):
            out.update(module_tensors(child, f"{prefix}{name}."))
    return out


_IRREPS = ("e3nn.o3._irreps.Irreps", "e3nn.o3._irreps._MulIr", "e3nn.o3._irreps.MulIr", "e3nn.o3._irreps.Irrep")


def _first_arg(record: Record):
    value = record.args[0] if record.args else None
    return tuple(value) if isinstance(value, (tuple, list)) else value


def _irrep(value) -> o3.Irrep:
    if isinstance(value, Record) and value.qualname == "e3nn.o3._irreps.Irrep":
        l, p = _first_arg(value)
        return o3.Irrep(int(l), int(p))
    return o3.Irrep(value)


def irreps_of(value: Any) -> o3.Irreps:
    """``o3.Irreps`` of a pickled e3nn ``Irreps`` / ``Irrep`` record, a string, or anything ``o3.Irreps`` takes.

    Raises:
        UnsupportedModelError: a record of another class.
    """
    if isinstance(value, Record):
        if value.qualname == "e3nn.o3._irreps.Irrep":
            return o3.Irreps([(1, _irrep(value))])
        if value.qualname != "e3nn.o3._irreps.Irreps":
            raise UnsupportedModelError(f"expected e3nn irreps, found a {value.qualname} record")
        items = []
        for mul_ir in _first_arg(value) or ():
            mul, ir = _first_arg(mul_ir) if isinstance(mul_ir, Record) else mul_ir
            items.append((int(mul), _irrep(ir)))
        return o3.Irreps(items)
    return o3.Irreps(value)


def plain(value: Any, depth: int = 0) -> Any:
    """Plain python (str/int/float/bool/None, lists, str-keyed dicts) for provenance: irreps as strings,
    tensors as lists (scalars as numbers; large ones as a shape note), other records as their class name."""
    if depth > 12:
        return "..."
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return value.item()
        return value.tolist() if value.numel() <= 256 else f"tensor{list(value.shape)}"
    if isinstance(value, Record):
        if value.qualname in _IRREPS:
            return str(irreps_of(value))
        return f"<{value.qualname}>"
    if isinstance(value, dict):
        return {str(k): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1) for v in value]
    if isinstance(value, numpy.generic):  # numpy scalars
        return plain(value.item(), depth + 1)
    return str(value)
