"""Decode the data-only records of a safely unpickled file: e3nn irreps, and plain python for provenance."""

from __future__ import annotations

from typing import Any

import numpy
import torch
from e3nn import o3

from mpnn_ip.interop.errors import UnsupportedModelError
from mpnn_ip.interop.safe_pickle import Record

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
