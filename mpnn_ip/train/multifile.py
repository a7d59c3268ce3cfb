"""A data module whose file paths may be glob patterns (``ta_snap/*.xyz``): the matches are concatenated."""

from __future__ import annotations

import glob
from pathlib import Path

from mpnn_ip.data.datamodule import AtomicDataModule
from mpnn_ip.errors import DataError


def expand_paths(pattern: str) -> list[str]:
    """Sorted files matching ``pattern`` (a plain path matches itself); ``DataError`` when none does."""
    if not glob.has_magic(pattern):
        return [pattern]
    matches = sorted(p for p in glob.glob(str(Path(pattern).expanduser())) if Path(p).is_file())
    if not matches:
        raise DataError(f"no file matches the pattern {pattern}; check the folder (e.g. MPNN_IP_SHARED_DATA)")
    return matches


class MultiFileDataModule(AtomicDataModule):
    """:class:`~mpnn_ip.data.AtomicDataModule` (same arguments) where ``train_path``, ``val_path`` and
    ``test_path`` may be glob patterns; frames of all matching files, in sorted file order, are
    read with the same options. Error messages name the file and the frame within that file."""

    def _read(self, path: str):
        graphs = []
        for file in expand_paths(str(path)):
            graphs.extend(super()._read(file))
        return graphs
