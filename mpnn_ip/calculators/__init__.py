"""ASE calculators: :class:`MPNNCalculator` runs any mpnn_ip potential (or checkpoint) in ASE;
:class:`ExportedCalculator` runs a model exported by ``mpnn-export`` without the model code.

Imported on first use, so that the exported calculator does not load the models (nor torch-cluster).
"""

from __future__ import annotations

from mpnn_ip.lazy import lazy_exports

_LAZY = {
    "MPNNCalculator": "mpnn_ip.calculators.ase_calculator",
    "ExportedCalculator": "mpnn_ip.calculators.exported",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = list(_LAZY)
