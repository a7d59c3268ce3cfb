"""ASE calculators: :class:`MPNNCalculator` runs any mpnn_ip potential (or checkpoint) in ASE;
:class:`ExportedCalculator` runs a model exported by ``mpnn-export`` without the model code.

Imported on first use, so that the exported calculator does not load the models (nor torch-cluster).
"""

from __future__ import annotations

import importlib

_LAZY = {
    "MPNNCalculator": "mpnn_ip.calculators.ase_calculator",
    "ExportedCalculator": "mpnn_ip.calculators.exported",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mpnn_ip.calculators' has no attribute {name!r}")


__all__ = list(_LAZY)
