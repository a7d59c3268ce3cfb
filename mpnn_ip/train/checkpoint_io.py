"""Atomic checkpoint writes: a job killed while it saves keeps its previous checkpoint.

:class:`AtomicCheckpointIO` is the Lightning ``CheckpointIO`` plugin that
:func:`mpnn_ip.train.builders.build_trainer` gives every ``Trainer``. Its ``save_checkpoint`` calls
:func:`atomic_torch_save`: ``torch.save`` into a temporary file in the target's folder
(``.<name>.<random>.tmp``), flush and ``fsync`` it, ``os.replace`` it onto the target and ``fsync``
the folder. A reader therefore sees either the old file or the new one, never a torn one. On an
exception the temporary file is removed; only a kill (SIGKILL, power loss) in the middle of a save
can leave one behind, and :func:`remove_stale_temporary_files` clears those (``mpnn-train resume=``
does it). The file format is unchanged (``torch.save`` of the same dict), so checkpoints still load
with ``torch.load(path, weights_only=True)``.

Remote paths (``s3://...`` and other fsspec URLs) are saved by Lightning's own ``TorchCheckpointIO``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

#: Name pattern of the temporary files (``.last.ckpt.k3j2x9.tmp``).
TEMPORARY_PREFIX = "."
TEMPORARY_SUFFIX = ".tmp"


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> Path:
    return Path(path.removeprefix("file://"))


def _default_file_mode() -> int:
    """``0o666`` less the process umask (what ``open(path, "wb")`` would give; mkstemp gives 0o600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder, fsync and ``os.replace``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMPORARY_PREFIX}{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _default_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)


def remove_stale_temporary_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed save left in ``directory`` (``.<name>.ckpt.<random>.tmp``).

    Only call it when no other process writes checkpoints there. Returns the files removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for candidate in directory.glob(f"{TEMPORARY_PREFIX}*.ckpt.*{TEMPORARY_SUFFIX}"):
        with contextlib.suppress(OSError):
            candidate.unlink()
            removed.append(candidate)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``TorchCheckpointIO`` whose local saves are atomic (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{type(self).__name__}`. Please implement your custom `CheckpointIO`"
                " to define how you'd like to use `storage_options`."
            )
        path = str(path)
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, _local_path(path))
