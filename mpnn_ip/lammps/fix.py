"""A LAMMPS ``fix external pf/callback`` driven by a potential: :func:`attach` and :class:`LammpsPotential`.

Every time LAMMPS needs forces (each MD step, each minimiser iteration, the setup of every run), the
fix calls :class:`LammpsPotential` on every MPI rank with that rank's atoms. The ranks' atoms are
sent to rank 0, ordered by atom ID and unwrapped with their image flags (so that the positions
move continuously and the Verlet list survives LAMMPS's re-wrapping and atom migration); rank 0
evaluates the whole system once (:class:`~mpnn_ip.calculators.evaluator.StructureEvaluator`) and sends
every rank the forces, per-atom energies and per-atom virials of its atoms, the total energy, the
virial and, for a committee, the uncertainties. This is not domain decomposition: one rank computes,
the others wait (asleep, so that rank 0's torch threads keep the cores); more ranks help LAMMPS's own
work (integration, computes, I/O), not the model.

What LAMMPS receives (metal units: eV, Å):
    forces              eV/Å, per atom
    global energy       eV (``fix_modify ID energy yes``: part of ``pe``; the minimiser's energy)
    global virial       eV, xx yy zz xy xz yz (``fix_modify ID virial yes``: part of the pressure)
    per-atom energies   eV (``compute pe/atom``)
    per-atom virials    eV, symmetric part, same order (``compute stress/atom``, heat flux)
    global vector       for a model with uncertainties (a committee): ``f_ID[1]`` energy
                        uncertainty (eV), ``f_ID[2]`` largest per-atom force uncertainty (eV/Å)
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mpnn_ip.calculators.evaluator import StructureEvaluator
from mpnn_ip.errors import ConfigError, DataError
from mpnn_ip.lammps.types import type_atomic_numbers

#: the units LAMMPS must use: our models take Å and give eV
REQUIRED_UNITS = "metal"
#: (row, column) of the 6 virial components in LAMMPS's order: xx yy zz xy xz yz
VIRIAL_ORDER = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
ON_ERROR = ("stop", "exit")
#: MPI tag of the callback's messages; seconds between the idle ranks' looks for rank 0's answer
MESSAGE_TAG, POLL_SECONDS = 7193, 1e-4


class LammpsPotential:
    """The callback of a LAMMPS ``fix external pf/callback`` (see the module docstring); use :func:`attach`.

    Attributes:
        calls: callbacks so far (on this rank).
        model_seconds: wall time of the model evaluations (rank 0).
        callback_seconds: wall time of the whole callbacks (gather, evaluation, scatter, setting LAMMPS's arrays).
        error: the exception that stopped the run (``on_error="stop"``), else None.
    """

    def __init__(
        self,
        lmp,
        evaluator: StructureEvaluator,
        elements: Sequence[str] | None = None,
        fix_id: str = "mpnn",
        comm=None,
        on_error: str = "stop",
        thermo: bool = True,
        prog: str = "mpnn_ip.lammps",
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.lmp, self.evaluator, self.fix_id, self.on_error, self.prog = lmp, evaluator, fix_id, on_error, prog
        self.comm = comm if comm is not None and comm.Get_size() > 1 else None
        self.rank = 0 if self.comm is None else self.comm.Get_rank()
        self._check_fix_and_units()
        masses = lmp.numpy.extract_atom("mass")
        self.type_numbers = type_atomic_numbers(
            int(lmp.extract_global("ntypes")),
            evaluator.species,
            elements,
            None if masses is None else np.asarray(masses, dtype=np.float64),
        )
        self.uncertainty = "energy_uncertainty" in evaluator.extra_outputs
        self.calls, self.model_seconds, self.callback_seconds = 0, 0.0, 0.0
        self.error: BaseException | None = None
        self._structure = None  # (sorted atom IDs, atomic numbers, pbc) of the structure the evaluator holds
        self._fix_id_bytes = fix_id.encode()
        self._image_bits = tuple(
            int(lmp.extract_setting(name)) for name in ("IMGMASK", "IMGMAX", "IMGBITS", "IMG2BITS")
        )
        try:
            lmp.set_fix_external_callback(fix_id, self, None)
        except Exception as exc:  # noqa: BLE001 - LAMMPS's own exception type
            raise ConfigError(
                f"LAMMPS fix {fix_id!r} is not a `fix external pf/callback`: declare it as `fix {fix_id} all external pf/callback 1 1` ({exc})"
            ) from exc
        if self.uncertainty:
            lmp.fix_external_set_vector_length(fix_id, 2)
        if thermo:
            lmp.command(f"fix_modify {fix_id} energy yes virial yes")

    def _check_fix_and_units(self) -> None:
        if not self.lmp.has_id("fix", self.fix_id):
            raise ConfigError(
                f"LAMMPS has no fix {self.fix_id!r}: declare `fix {self.fix_id} all external pf/callback 1 1` after the box "
                "and atoms exist, before attaching the potential"
            )
        units = self.lmp.extract_global("units")
        if units != REQUIRED_UNITS:
            raise ConfigError(
                f"the LAMMPS script uses `units {units}`; mpnn_ip potentials need `units metal` (positions in Å, energies in "
                "eV, forces in eV/Å, time in ps): change the units command (and the time step, which metal gives in ps)"
            )

    # -- the callback ---------------------------------------------------------------------------

    def __call__(self, _caller: Any, step: int, nlocal: int, tag: np.ndarray, x: np.ndarray, f: np.ndarray) -> None:
        """LAMMPS's callback: sets ``f`` and the fix's energy, virial, per-atom arrays and vector."""
        start = time.perf_counter()
        self.calls += 1
        if self.error is not None:  # a failed run: stop every later run at once
            f[:] = 0.0
            self.lmp.force_timeout()
            return
        box = self._box()  # read once per call: unwrapping here, the cell of the evaluation on rank 0
        try:
            local = self._local_atoms(nlocal, tag, x, box[0])
        except Exception as exc:  # noqa: BLE001 - reported below, never inside LAMMPS
            local = exc
        if self.comm is None:
            mine = self._evaluate(step, [local], box)[0]
        elif self.rank == 0:
            gathered = [local] + [
                self.comm.recv(source=rank, tag=MESSAGE_TAG) for rank in range(1, self.comm.Get_size())
            ]
            parts = self._evaluate(step, gathered, box)
            for rank in range(1, len(parts)):
                self.comm.send(parts[rank], dest=rank, tag=MESSAGE_TAG)
            mine = parts[0]
        else:
            self.comm.send(local, dest=0, tag=MESSAGE_TAG)
            mine = _receive_sleeping(self.comm)
        if not isinstance(mine, str):
            try:
                self._deliver(mine, nlocal, f)
            except Exception as exc:  # noqa: BLE001 - an exception would be lost inside LAMMPS's call
                mine = self._message(step, exc)
        if isinstance(mine, str):
            self._fail(step, mine, f)
        self.callback_seconds += time.perf_counter() - start

    def _local_atoms(self, nlocal: int, tag: np.ndarray, x: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, ...]:
        """This rank's atom IDs [n], types [n] and positions [n, 3] (Å) unwrapped by their image flags."""
        types = np.array(self.lmp.numpy.extract_atom("type")[:nlocal], dtype=np.int64)
        image = np.array(self.lmp.numpy.extract_atom("image")[:nlocal], dtype=np.int64)
        mask, offset, bits, bits2 = self._image_bits
        shifts = np.stack(
            [(image & mask) - offset, ((image >> bits) & mask) - offset, (image >> bits2) - offset], axis=1
        )
        positions = np.array(x[:nlocal], dtype=np.float64) + shifts @ cell
        return np.array(tag[:nlocal], dtype=np.int64), types, positions

    def _box(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cell [3, 3] Å, rows a b c; origin [3] Å; pbc [3] bool)`` of LAMMPS's (restricted triclinic) box."""
        boxlo, boxhi, xy, yz, xz, periodicity, _ = self.lmp.extract_box()
        lengths = np.subtract(boxhi, boxlo)
        cell = np.array([[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]], dtype=np.float64)
        return cell, np.asarray(boxlo, dtype=np.float64), np.asarray(periodicity, dtype=bool)

    def _evaluate(self, step: int, gathered: list, box: tuple) -> list:
        """On rank 0: every rank's part of the results, or the error message for every rank."""
        try:
            failed = next((item for item in gathered if isinstance(item, BaseException)), None)
            if failed is not None:
                raise failed
            return self._results_by_rank(gathered, *box)
        except Exception as exc:  # noqa: BLE001 - becomes a user-facing error on every rank
            return [self._message(step, exc)] * len(gathered)

    def _results_by_rank(self, gathered: list, cell: np.ndarray, origin: np.ndarray, pbc: np.ndarray) -> list[dict]:
        tags = np.concatenate([g[0] for g in gathered])
        order = np.argsort(tags, kind="stable")
        types = np.concatenate([g[1] for g in gathered])[order]
        positions = np.concatenate([g[2] for g in gathered])[order]
        structure = (tags[order], self.type_numbers[types], pbc)
        if self._structure is None or not all(np.array_equal(a, b) for a, b in zip(structure, self._structure)):
            self.evaluator.set_arrays(positions - origin, structure[1], cell, pbc)
            self._structure = structure
        else:
            self.evaluator.move(positions - origin, cell)
        start = time.perf_counter()
        out = self.evaluator.evaluate(stress=True, atomic_virial=True)
        per_atom = {
            "forces": _numpy(out["forces"]),
            "energies": _numpy(out["node_energy"]),
            "virials": _voigt(_numpy(out["atomic_virial"])),
        }
        shared = {"energy": float(out["energy"].detach().sum()), "virial": _voigt(_numpy(out["virial"])[0])}
        if self.uncertainty:
            forces_uncertainty = _numpy(out["forces_uncertainty"]) if "forces_uncertainty" in out else np.zeros(1)
            shared["vector"] = (float(_numpy(out["energy_uncertainty"])[0]), float(forces_uncertainty.max(initial=0.0)))
        self.model_seconds += time.perf_counter() - start
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        bounds = np.cumsum([0] + [len(g[0]) for g in gathered])
        return [
            {**shared, **{key: np.ascontiguousarray(value[inverse[lo:hi]]) for key, value in per_atom.items()}}
            for lo, hi in zip(bounds[:-1], bounds[1:])
        ]

    def _deliver(self, part: dict, nlocal: int, f: np.ndarray) -> None:
        """This rank's results into LAMMPS's arrays."""
        f[:nlocal] = part["forces"]
        lib, handle, fix_id = self.lmp.lib, self.lmp.lmp, self._fix_id_bytes
        lib.lammps_fix_external_set_energy_global(handle, fix_id, ctypes.c_double(part["energy"]))
        self.lmp.fix_external_set_virial_global(self.fix_id, [float(v) for v in part["virial"]])
        energies = part["energies"]
        lib.lammps_fix_external_set_energy_peratom(
            handle, fix_id, energies.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        )
        virials = part["virials"]  # [nlocal, 6], C order: LAMMPS takes an array of row pointers
        rows = virials.ctypes.data + virials.strides[0] * np.arange(max(nlocal, 1), dtype=np.uint64)
        lib.lammps_fix_external_set_virial_peratom(
            handle, fix_id, rows.ctypes.data_as(ctypes.POINTER(ctypes.POINTER(ctypes.c_double)))
        )
        if "vector" in part:
            for index, value in enumerate(part["vector"], start=1):
                self.lmp.fix_external_set_vector(self.fix_id, index, value)

    # -- errors ---------------------------------------------------------------------------------

    def _message(self, step: int, exc: BaseException) -> str:
        if isinstance(exc, DataError):
            text = f"{exc.problem} (atoms counted from 0 in the order of their LAMMPS atom IDs)"
        elif isinstance(exc, ConfigError):
            text = str(exc)
        else:
            text = f"{type(exc).__name__}: {exc}"
        return f"LAMMPS step {step}, fix {self.fix_id}: {text}"

    def _fail(self, step: int, message: str, f: np.ndarray) -> None:
        """Stop the run: exit the process (``on_error="exit"``) or stop LAMMPS's run and keep the error."""
        f[:] = 0.0
        self.error = LammpsRunError(message, step)
        if self.on_error == "exit":
            if self.rank == 0:
                print(f"{self.prog}: error: {message}", file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        if self.rank == 0:
            print(f"{self.prog}: {message} (the run stops; LammpsPotential.check() raises it)", file=sys.stderr)
        self.lmp.force_timeout()

    def check(self) -> None:
        """Raise the error that stopped a run (``on_error="stop"``); nothing when all went well."""
        if self.error is not None:
            raise self.error

    @property
    def rebuild_fraction(self) -> float:
        """Share of the evaluations that searched the radius graph (rank 0)."""
        neighbor_list = self.evaluator.neighbor_list
        return neighbor_list.rebuild_fraction if neighbor_list is not None else 1.0


class LammpsRunError(ConfigError):
    """The potential could not evaluate a LAMMPS step (collapsed atoms, non-finite positions, ...)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def attach(
    lmp,
    model: torch.nn.Module | Sequence[torch.nn.Module] | StructureEvaluator,
    elements: Sequence[str] | None = None,
    fix_id: str = "mpnn",
    *,
    device: str | None = None,
    dtype: str | None = None,
    skin: float = 1.0,
    compile: bool | str = "auto",
    head: str | None = None,
    dispersion: str | None = None,
    charge: float | None = None,
    spin: float | None = None,
    comm: Any = None,
    on_error: str = "stop",
    prog: str = "mpnn_ip.lammps",
) -> LammpsPotential:
    """Drive the ``fix external pf/callback`` ``fix_id`` of the LAMMPS instance ``lmp`` with ``model``.

    ``lmp`` must already hold the box, the atoms and the fix, in ``units metal``. Switches on
    ``fix_modify fix_id energy yes virial yes`` (LAMMPS's ``pe``, pressure and minimiser see the
    potential).

    Args:
        lmp: a ``lammps.lammps`` instance (:func:`mpnn_ip.lammps.library.create_lammps` makes one).
        model: a potential, a list of them (a committee), or a ready :class:`StructureEvaluator`.
        elements: element symbol of each LAMMPS type, in type order; None = from the per-type masses.
        device, dtype, skin, compile, head, dispersion: as for :class:`~mpnn_ip.calculators.ase_calculator.MPNNCalculator`
            (``skin`` in Å, default 1.0: the graph is searched again only when an atom moved 0.5 Å).
        charge, spin: the system's total charge (e) and multiplicity, for a model with a charge/spin embedding
            (or latent charges); None = neutral / singlet.
        comm: mpi4py communicator of ``lmp`` (default: ``COMM_WORLD`` when mpi4py is installed).
        on_error: ``"stop"`` (stop the run, keep the error: :meth:`LammpsPotential.check` raises it) or
            ``"exit"`` (print it and end the process with status 2, as ``mpnn-lammps`` does).
        prog: what error messages start with.
    Returns: the callback object (keep a reference while LAMMPS runs); ``calls``, ``model_seconds`` and
    ``callback_seconds`` time it.
    Raises:
        ConfigError: no such fix, other units, a type without an element or with one the model lacks.
    """
    from mpnn_ip.lammps.library import restore_torch_threads, world_communicator

    comm = comm if comm is not None else world_communicator()
    ranks = 1 if comm is None else comm.Get_size()
    if ranks == 1 or comm.Get_rank() == 0:
        restore_torch_threads(ranks)  # LAMMPS (or mpiexec) left OpenMP one thread
    if not isinstance(model, StructureEvaluator):
        options = dict(device=device, dtype=dtype, skin=skin, compile=compile, head=head, dispersion=dispersion)
        model = make_evaluator(model, fix_id, prog, **options, charge=charge, spin=spin)
    return LammpsPotential(lmp, model, elements, fix_id, comm, on_error, prog=prog)


def make_evaluator(model, fix_id: str, prog: str, **options) -> StructureEvaluator:
    """The evaluator of a potential or committee (a list) for the fix ``fix_id``; ``options``: ``device``,
    ``dtype``, ``skin``, ``compile``, ``head``, ``dispersion``, ``charge``, ``spin`` (see :func:`attach`)."""
    return StructureEvaluator(model, **options, source=f"LAMMPS fix {fix_id}", name=prog)


def _receive_sleeping(comm) -> Any:
    """Rank 0's answer, waited for asleep: MPI's blocking receive spins a core at 100 %, which on a
    node shared with rank 0's torch threads slows the model many times over."""
    while not comm.iprobe(source=0, tag=MESSAGE_TAG):
        time.sleep(POLL_SECONDS)
    return comm.recv(source=0, tag=MESSAGE_TAG)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy()


def _voigt(tensor: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` -> ``[..., 6]`` in LAMMPS's order, symmetric part."""
    symmetric = 0.5 * (tensor + np.swapaxes(tensor, -1, -2))
    return np.ascontiguousarray(np.stack([symmetric[..., i, j] for i, j in VIRIAL_ORDER], axis=-1))
