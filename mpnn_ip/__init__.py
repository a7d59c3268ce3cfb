"""mpnn_ip: E(3)-equivariant message-passing interatomic potentials.

The names a user needs: read data (:func:`read_dataset`), build graphs (:class:`AtomicGraph`,
:func:`collate`), build or load models (:func:`build_model`, :func:`load_model`) and run them
in ASE (:class:`MPNNCalculator`). Heavy submodules are imported on first use.
"""

from __future__ import annotations

from mpnn_ip.errors import ConfigError, DataError
from mpnn_ip.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "AtomicGraph": "mpnn_ip.data",
    "collate": "mpnn_ip.data",
    "read_dataset": "mpnn_ip.data",
    "read_isolated_atom_energies": "mpnn_ip.data",
    "AtomicDataModule": "mpnn_ip.data",
    "compute_statistics": "mpnn_ip.data",
    "radius_graph_pbc": "mpnn_ip.graph",
    "edge_vectors": "mpnn_ip.graph",
    "build_model": "mpnn_ip.models",
    "Potential": "mpnn_ip.models",
    "load_model": "mpnn_ip.checkpoint",
    "MPNNCalculator": "mpnn_ip.calculators",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = ["ConfigError", "DataError", "__version__", *_LAZY]
