"""The evaluation path the engines share (ASE calculator, LAMMPS): model, Verlet list, compile decision.

:class:`StructureEvaluator` takes one structure at a time as plain arrays, keeps the radius graph
across calls with a Verlet skin, decides once whether to ``torch.compile`` and returns the model's
output dict (energy, forces, virial, per-atom energies and virials, uncertainties) as torch tensors.
:class:`~mpnn_ip.calculators.ase_calculator.MPNNCalculator` turns them into ASE results;
:mod:`mpnn_ip.lammps` hands them to a LAMMPS ``fix external``.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from mpnn_ip.calculators.dispersion import DispersionCorrection
from mpnn_ip.checkpoint import resolve_device, resolve_dtype
from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap
from mpnn_ip.data.atomic_graph import (
    MIN_INTERATOMIC_DISTANCE,
    AtomicGraph,
    check_info_keys,
    info_inputs,
    model_input_keys,
    to_inputs,
)
from mpnn_ip.errors import DataError
from mpnn_ip.graph import edge_vectors
from mpnn_ip.graph.verlet import VerletList
from mpnn_ip.models.committee import Committee
from mpnn_ip.models.compiled import CompileDecision, compile_potential, normalize_mode
from mpnn_ip.models.heads import select_head

logger = logging.getLogger(__name__)


class StructureEvaluator:
    """A potential (or a committee) evaluated on one structure per call, graph kept with a skin.

    Args:
        model: a potential, or a list of them (run as one :class:`~mpnn_ip.models.committee.Committee`);
            put in eval mode.
        device: move the model there (``"auto"``: CUDA when there is one); ``None`` = leave it where it is.
        dtype: ``"float32"``/``"float64"`` converts the model; ``None`` keeps its dtype.
        skin: Å, Verlet skin (:class:`~mpnn_ip.graph.verlet.VerletList`); ``0`` searches every call.
        compile: ``"auto"``, ``True`` or ``False`` (:func:`~mpnn_ip.models.compiled.compile_potential`),
            decided on the first structure; :attr:`compile_decision` holds the outcome.
        head: the head of a multi-head model, by name; ``None`` = its default head.
        dispersion: a dispersion correction added to the model's outputs (``"d3bj:<functional>"``,
            :class:`~mpnn_ip.calculators.dispersion.DispersionCorrection`), for a model trained without it;
            ``None`` = none.
        info_keys: ``{input: key}`` of the frame inputs in ``atoms.info`` not under their default key
            (default: ``charge``, the total charge in e, and ``spin``, the multiplicity 2S+1), e.g.
            ``{"charge": "total_charge"}``; a structure without one is neutral / a singlet.
        charge, spin: total charge (e) and multiplicity of the structures given as arrays (:meth:`set_arrays`,
            LAMMPS), which have no ``atoms.info``; ``None`` = neutral / singlet.
        source: what errors call the structures (e.g. ``"the ASE Atoms given to MPNNCalculator"``).
        name: what warnings and logs call the engine (e.g. ``"MPNNCalculator"``).
    """

    def __init__(
        self,
        model: torch.nn.Module | Sequence[torch.nn.Module],
        device: str | torch.device | None = None,
        dtype=None,
        skin: float = 0.0,
        compile: bool | str = "auto",
        head: str | None = None,
        dispersion: str | None = None,
        info_keys: dict[str, str] | None = None,
        charge: float | None = None,
        spin: float | None = None,
        source: str = "the structure",
        name: str = "StructureEvaluator",
    ):
        self.compile_mode = normalize_mode(compile)
        #: ``{input: key in atoms.info}`` (checked: an unknown input fails here, not at the first structure)
        self.info_keys = check_info_keys(info_keys)
        given = {"charge": charge, "spin": spin}
        #: ``atoms.info`` of the structures of :meth:`set_arrays`
        self.array_info = {self.info_keys.get(k, k): float(v) for k, v in given.items() if v not in (None, "")}
        #: the :class:`~mpnn_ip.models.compiled.CompileDecision` of the first call (None before it)
        self.compile_decision: CompileDecision | None = None
        self.source, self.name = source, name
        #: the dispersion correction added to every evaluation, or None
        self.dispersion = DispersionCorrection(dispersion, skin) if dispersion not in (None, "", "none") else None
        keep_tensor_buffers_in_heap()  # see mpnn_ip.cpu_allocator
        if isinstance(model, (list, tuple)):
            model = Committee([select_head(member, head) for member in model])
        else:
            model = select_head(model, head)
        target = resolve_dtype(dtype)
        if device is not None:
            model = model.to(resolve_device(device))
        if target is not None:
            model = model.to(target)
        self.model = model.eval()
        #: ``{name: (per, unit)}`` of the model's declared extra outputs (``per``: "frame" | "atom")
        self.extra_outputs = dict(getattr(model, "extra_outputs", {}))
        r_max = getattr(model, "r_max", None)  # a model without one builds its own graph
        if r_max is None and skin:
            raise ValueError(
                f"skin={skin} needs a model with an r_max attribute (the cutoff, Å); {type(model).__name__} has none"
            )
        self.neighbor_list = VerletList(float(r_max), float(skin)) if r_max is not None else None
        self._inputs: dict[str, torch.Tensor] | None = None  # inputs of the last structure
        self._moved = False  # positions changed by move() since the full checks of set_structure

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (inputs are moved there)."""
        first = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        return torch.device("cpu") if first is None else first.device

    @property
    def species(self) -> list[int]:
        """Atomic numbers the model knows."""
        return [int(z) for z in self.model.species]

    @property
    def can_move(self) -> bool:
        """Whether :meth:`move` may follow: a structure is set and a Verlet list re-checks distances."""
        return self._inputs is not None and self.neighbor_list is not None

    def set_structure(self, atoms) -> None:
        """A new structure (an ASE ``Atoms``): every check of :meth:`AtomicGraph.from_atoms`; its total charge
        and spin multiplicity from ``atoms.info`` (:func:`~mpnn_ip.data.atomic_graph.info_inputs`)."""
        graph = AtomicGraph.from_atoms(atoms, path=self.source, **self.frame_inputs(atoms))
        keys = model_input_keys()
        self._inputs = {k: v.to(self.device) for k, v in to_inputs(graph).items() if k in keys}
        self._moved = False

    def frame_inputs(self, atoms) -> dict:
        """``{input: value}`` of the frame inputs ``atoms.info`` holds (keys :attr:`info_keys` or the defaults)."""
        return info_inputs(atoms, self.info_keys)

    def set_arrays(self, positions: np.ndarray, atomic_numbers: np.ndarray, cell: np.ndarray, pbc) -> None:
        """A new structure from arrays (Å; ``cell`` rows are the lattice vectors); same checks as :meth:`set_structure`.
        No ``atoms.info``: the inputs are the evaluator's ``charge`` and ``spin``, else their defaults (neutral,
        singlet), masked."""
        from ase import Atoms

        atoms = Atoms(numbers=atomic_numbers, positions=positions, cell=cell, pbc=pbc, info=dict(self.array_info))
        self.set_structure(atoms)

    def move(self, positions: np.ndarray, cell: np.ndarray | None = None) -> None:
        """Same atoms, new positions ``[N, 3]`` (Å) and optionally a new cell ``[3, 3]``: checked for
        finiteness here, for collapsed pairs from the edges in :meth:`evaluate`."""
        if self._inputs is None:
            raise RuntimeError("StructureEvaluator.move before any structure was set")
        positions = np.asarray(positions, dtype=np.float64)
        if not np.isfinite(positions).all():
            raise DataError("positions contain NaN or inf", path=self.source)
        update = {"pos": torch.as_tensor(positions).to(self.device)}
        if cell is not None:
            cell = np.asarray(cell, dtype=np.float64)
            if not np.isfinite(cell).all():
                raise DataError("the cell contains NaN or inf", path=self.source)
            update["cell"] = torch.as_tensor(cell).reshape(1, 3, 3).to(self.device)
        self._inputs = dict(self._inputs, **update)
        self._moved = True

    def evaluate(self, stress: bool = False, atomic_virial: bool = False) -> dict[str, torch.Tensor]:
        """The model's outputs on the current structure (forces always; ``stress`` adds stress and
        virial, ``atomic_virial`` the per-atom virials; see :meth:`Potential.forward`).

        After :meth:`move`, two atoms closer than 0.1 Å are a ``DataError`` naming the pair (checked
        from the edges; :meth:`set_structure` checked it already).
        """
        if self._inputs is None:
            raise RuntimeError("StructureEvaluator.evaluate before any structure was set")
        inputs = dict(self._inputs)
        if self.neighbor_list is not None:
            inputs["edge_index"], inputs["cell_shifts"] = self.neighbor_list.edges(
                inputs["pos"], inputs["cell"], inputs["pbc"], inputs["batch"]
            )
            if self._moved:
                _check_closest_pair(inputs, self.neighbor_list.last_squared_lengths, self.source)
        if self.compile_decision is None:
            self.compile_decision = self._decide_compile(inputs, stress)
        with torch.enable_grad():
            extra = {"compute_atomic_virial": True} if atomic_virial else {}
            out = self.model(inputs, compute_forces=True, compute_stress=stress, **extra)
        return out if self.dispersion is None else self.dispersion.add_to(out, inputs, stress)

    def _decide_compile(self, inputs: dict[str, torch.Tensor], stress: bool) -> CompileDecision:
        """Compile the model if it pays on these inputs (:func:`~mpnn_ip.models.compiled.compile_potential`)."""
        with torch.enable_grad():  # a committee has no atomic_outputs: compile_potential leaves it eager
            decision = compile_potential(self.model, inputs, self.compile_mode, compute_stress=stress)
        if self.compile_mode == "true" and not decision.compiled:
            warnings.warn(f"{self.name}(compile=True): {decision}", RuntimeWarning, stacklevel=4)
        else:
            logger.info("%s: %s", self.name, decision)
        return decision


def _check_closest_pair(inputs: dict[str, torch.Tensor], squared_lengths: torch.Tensor | None, source: str) -> None:
    """DataError naming the pair when two atoms are closer than the data's minimum distance (0.1 Å).

    ``squared_lengths [n_edges]`` (Å²): those of the edges when the neighbour list has them already.
    """
    if inputs["edge_index"].shape[1] == 0:
        return
    if squared_lengths is None:
        vectors = edge_vectors(
            inputs["pos"], inputs["cell"], inputs["edge_index"], inputs["cell_shifts"], inputs["batch"]
        )
        squared_lengths = (vectors * vectors).sum(dim=1)
    k = int(torch.argmin(squared_lengths))
    closest = float(squared_lengths[k]) ** 0.5
    if closest < MIN_INTERATOMIC_DISTANCE:
        i, j = inputs["edge_index"][:, k].tolist()
        raise DataError(
            f"atoms {i} and {j} are {closest:.4f} Å apart (closer than {MIN_INTERATOMIC_DISTANCE} Å): "
            "the structure has collapsed (unstable dynamics: smaller time step, or a potential outside its training data)",
            path=source,
        )
