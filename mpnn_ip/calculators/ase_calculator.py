"""ASE calculator around a trained :class:`mpnn_ip.models.Potential`.

Example::

    from mpnn_ip import MPNNCalculator
    atoms.calc = MPNNCalculator.from_checkpoint("outputs/run/checkpoints/last.ckpt", device="cuda")
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
"""

from __future__ import annotations

import itertools
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mpnn_ip.calculators.results import check_stress_possible, energy_forces_stress
from mpnn_ip.calculators.results import to_numpy as _numpy
from mpnn_ip.checkpoint import load_model, resolve_dtype
from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap
from mpnn_ip.data.atomic_graph import MIN_INTERATOMIC_DISTANCE, MODEL_INPUT_KEYS, AtomicGraph, to_inputs
from mpnn_ip.errors import DataError
from mpnn_ip.graph import edge_vectors
from mpnn_ip.graph.verlet import VerletList
from mpnn_ip.models.committee import Committee
from mpnn_ip.models.compiled import CompileDecision, compile_potential, normalize_mode
from mpnn_ip.models.heads import select_head

logger = logging.getLogger(__name__)


class MPNNCalculator(Calculator):
    """ASE calculator: energy, free_energy (eV), energies (eV per atom), forces (eV/Å), stress.

    ``stress`` (eV/Å³, Voigt ``xx, yy, zz, yz, xz, xy``, ASE sign: positive = tensile) is computed
    only when asked for, and only for structures with a periodic direction and a cell of non-zero
    volume; for a molecule it raises ASE's ``PropertyNotImplementedError`` (like ASE's own EMT).
    ``stresses`` (per atom, eV/Å³, Voigt ``[N, 6]``, same conditions) are the atomic virials
    (``Potential.forward(compute_atomic_virial=True)``) divided by ``-volume``: their sum is
    ``stress``, as ASE's ``Atoms.get_stresses`` expects.
    The extra outputs the model declares (``Potential.extra_outputs``, e.g. ``energy_uncertainty``
    of a Gaussian-process model) are implemented properties too, under their own names: per-frame
    ones as floats (arrays when they have more axes), per-atom ones as arrays.

    A committee (a list of models, or :meth:`from_checkpoints`) runs as one
    :class:`mpnn_ip.models.committee.Committee`: energy, forces, stress... are the members' mean, and
    ``energy_uncertainty`` (eV), ``forces_uncertainty`` ([N], eV/Å), ``energy_committee`` ([M], eV)
    and ``forces_committee`` ([N, M, 3], eV/Å) are properties (definitions in ``Committee``).

    Args:
        model: the potential (e.g. from :func:`mpnn_ip.load_model`), or a list of them (a committee,
            see above); put in eval mode.
        device: move the model there (``"cpu"``, ``"cuda"``); ``None`` = leave it where it is.
        dtype: ``"float32"`` or ``"float64"`` converts the model; ``None`` keeps its dtype.
        skin: Å, Verlet skin of the neighbour list (:class:`mpnn_ip.graph.verlet.VerletList`): the
            radius graph is searched at ``r_max + skin`` and reused, filtered to ``r_max``, until some
            atom has moved more than ``skin / 2`` since the search or the cell changed. ``0`` (default)
            searches at every call. Results do not depend on it; MD runs faster with ``skin=1.0``.
            ``neighbor_list.builds`` / ``neighbor_list.calls`` count the searches.
        compile: ``"auto"`` (default), ``True`` or ``False``: ``torch.compile`` of the model, checked
            on the first structure (equal to eager and faster, else eager with the reason; see
            :mod:`mpnn_ip.models.compiled`). ``auto`` tries on CUDA, and on the CPU for structures of at
            least 1,000 atoms (compiling takes 30-100 s there); ``compile_decision`` holds
            the outcome after the first call, and a ``compile=True`` that falls back warns.
        head: the head of a model with several heads (:mod:`mpnn_ip.models.heads`) to compute with, by
            name; ``None`` = its default head (the first; for a multi-head fine-tuned model, the new
            head). An unknown name is a ``ConfigError`` listing the model's heads.

    Elements the model was not trained on raise :class:`mpnn_ip.errors.DataError`.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "stresses"]

    def __init__(
        self,
        model: torch.nn.Module | Sequence[torch.nn.Module],
        device: str | torch.device | None = None,
        dtype=None,
        skin: float = 0.0,
        compile: bool | str = "auto",
        head: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.compile_mode = normalize_mode(compile)
        #: the :class:`~mpnn_ip.models.compiled.CompileDecision` of the first call (None before it)
        self.compile_decision: CompileDecision | None = None
        keep_tensor_buffers_in_heap()  # see mpnn_ip.cpu_allocator
        if isinstance(model, (list, tuple)):
            model = Committee([select_head(member, head) for member in model])
        else:
            model = select_head(model, head)
        self.extra_outputs = dict(getattr(model, "extra_outputs", {}))
        self.implemented_properties = [*type(self).implemented_properties, *self.extra_outputs]
        target = resolve_dtype(dtype)
        if device is not None:
            model = model.to(torch.device(device))
        if target is not None:
            model = model.to(target)
        self.model = model.eval()
        r_max = getattr(model, "r_max", None)  # a model without one builds its own graph
        if r_max is None and skin:
            raise ValueError(f"skin={skin} needs a model with an r_max attribute (the cutoff, Å); {type(model).__name__} has none")
        self.neighbor_list = VerletList(float(r_max), float(skin)) if r_max is not None else None
        self._inputs = None  # inputs of the last structure, reused when only positions change

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", dtype=None, **kwargs) -> "MPNNCalculator":
        """Calculator for the model of checkpoint ``path`` (see :func:`mpnn_ip.load_model`); ``kwargs``
        (e.g. ``skin=1.0``, ``head="pbe"``) go to the constructor."""
        return cls(load_model(path, device=device, dtype=dtype), **kwargs)

    @classmethod
    def from_exported(cls, path: str | Path, **kwargs):
        """Calculator for a ``.pt2`` written by ``mpnn-export``: an
        :class:`~mpnn_ip.calculators.exported.ExportedCalculator` (no model code; ``kwargs``, e.g.
        ``device``, go to its constructor)."""
        from mpnn_ip.calculators.exported import ExportedCalculator

        return ExportedCalculator(path, **kwargs)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], device: str | torch.device = "cpu", dtype=None, **kwargs) -> "MPNNCalculator":
        """Calculator for the committee of the models of checkpoints ``paths`` (at least two, with the
        same species, r_max and dtype; else a ``ConfigError`` naming the files); ``kwargs`` as for
        :meth:`from_checkpoint`."""
        return cls(Committee([load_model(path, device=device, dtype=dtype) for path in paths]), **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (inputs are moved there)."""
        first = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        return torch.device("cpu") if first is None else first.device

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        """Run the model on ``atoms``; fills ``self.results`` (ASE units: eV, Å)."""
        properties = list(properties or ["energy"])
        super().calculate(atoms, properties, system_changes)
        want_stresses = "stresses" in properties
        want_stress = "stress" in properties or want_stresses
        if want_stress:
            check_stress_possible(self.atoms)
        inputs = self._model_inputs(system_changes)
        if self.compile_decision is None:
            self.compile_decision = self._decide_compile(inputs, want_stress)
        with torch.enable_grad():
            extra = {"compute_atomic_virial": True} if want_stresses else {}
            out = self.model(inputs, compute_forces=True, compute_stress=want_stress, **extra)

        self.results = energy_forces_stress(out, want_stress)
        if want_stresses:
            self.results["stresses"] = full_3x3_to_voigt_6_stress(-_numpy(out["atomic_virial"]) / self.atoms.get_volume())
        for key, (per, _) in self.extra_outputs.items():
            value = _numpy(out[key])
            self.results[key] = (float(value[0]) if value.ndim == 1 else value[0]) if per == "frame" else value

    def _decide_compile(self, inputs: dict[str, torch.Tensor], want_stress: bool) -> CompileDecision:
        """Compile the model if it pays on these inputs (:func:`~mpnn_ip.models.compiled.compile_potential`)."""
        with torch.enable_grad():  # a committee has no atomic_outputs: compile_potential leaves it eager
            decision = compile_potential(self.model, inputs, self.compile_mode, compute_stress=want_stress)
        if self.compile_mode == "true" and not decision.compiled:
            warnings.warn(f"MPNNCalculator(compile=True): {decision}", RuntimeWarning, stacklevel=3)
        else:
            logger.info("MPNNCalculator: %s", decision)
        return decision

    def _model_inputs(self, system_changes) -> dict[str, torch.Tensor]:
        """Model inputs on the model's device, with edges when the calculator keeps a neighbour list.

        A new structure (atoms, cell or periodicity changed) goes through every check of
        :meth:`AtomicGraph.from_atoms`; when only positions changed (an MD or relaxation step) only
        finiteness and the closest distance are checked, the latter from the edges.
        """
        device = self.device
        positions_only = self.neighbor_list is not None and self._inputs is not None and set(system_changes) <= {"positions"}
        if positions_only:
            pos = np.asarray(self.atoms.positions, dtype=np.float64)
            if not np.isfinite(pos).all():
                raise DataError("positions contain NaN or inf", path="the ASE Atoms given to MPNNCalculator")
            inputs = dict(self._inputs, pos=torch.as_tensor(pos).to(device))
        else:
            graph = AtomicGraph.from_atoms(self.atoms)
            inputs = {k: v.to(device) for k, v in to_inputs(graph).items() if k in MODEL_INPUT_KEYS}
            self._inputs = dict(inputs)
        if self.neighbor_list is not None:
            edges = self.neighbor_list.edges(inputs["pos"], inputs["cell"], inputs["pbc"], inputs["batch"])
            inputs["edge_index"], inputs["cell_shifts"] = edges
            if positions_only:
                _check_closest_pair(inputs, self.neighbor_list.last_squared_lengths)
        return inputs


def _check_closest_pair(inputs: dict[str, torch.Tensor], squared_lengths: torch.Tensor | None = None) -> None:
    """DataError naming the pair when two atoms are closer than the data's minimum distance (0.1 Å).

    ``squared_lengths [n_edges]`` (Å²): those of the edges when the neighbour list has them already.
    """
    if inputs["edge_index"].shape[1] == 0:
        return
    if squared_lengths is None:
        vectors = edge_vectors(inputs["pos"], inputs["cell"], inputs["edge_index"], inputs["cell_shifts"], inputs["batch"])
        squared_lengths = (vectors * vectors).sum(dim=1)
    k = int(torch.argmin(squared_lengths))
    closest = float(squared_lengths[k]) ** 0.5
    if closest < MIN_INTERATOMIC_DISTANCE:
        i, j = inputs["edge_index"][:, k].tolist()
        raise DataError(
            f"atoms {i} and {j} are {closest:.4f} Å apart (closer than {MIN_INTERATOMIC_DISTANCE} Å): "
            "the structure has collapsed (unstable dynamics: smaller time step, or a potential outside its training data)",
            path="the ASE Atoms given to MPNNCalculator",
        )
