"""Bring your model: the peers' model files as mpnn_ip models and checkpoints.

- :mod:`.safe_pickle`: reads pickled files without running their code (allow-list, inert records);
- :mod:`.records`: decodes the records (e3nn irreps, plain python for provenance);
- :mod:`.mace`, :mod:`.nequip`: converters of mace-torch and NequIP models into ours, exactly;
- :mod:`.importer`: recognises the file, converts it, writes our checkpoint with its provenance;
- :mod:`.check`: compares an imported model with the original package run in the user's environment.

``import_model(path)`` returns our :class:`~mpnn_ip.models.Potential`; ``mpnn-import`` writes a checkpoint.
"""

from __future__ import annotations

from mpnn_ip.lazy import lazy_exports

_LAZY = {
    "import_model": "mpnn_ip.interop.importer",
    "read_source": "mpnn_ip.interop.importer",
    "write_imported_checkpoint": "mpnn_ip.interop.importer",
    "ImportedModel": "mpnn_ip.interop.imported",
    "UnsafeFileError": "mpnn_ip.interop.errors",
    "UnsupportedModelError": "mpnn_ip.interop.errors",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = list(_LAZY)
