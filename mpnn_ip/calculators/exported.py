"""ASE calculator around a model exported by ``mpnn-export`` (:mod:`mpnn_ip.export`): no model code needed.

Example::

    from mpnn_ip.calculators.exported import ExportedCalculator
    atoms.calc = ExportedCalculator("model.pt2")          # or MPNNCalculator.from_exported("model.pt2")
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

The calculator needs torch, ASE and numpy only: it imports none of the model classes and no
torch-cluster; the neighbour list is ASE's (:func:`ase.neighborlist.neighbor_list`, the same
``(i, j, shift)`` set that the models' own radius graph finds).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import neighbor_list

from mpnn_ip.calculators.results import check_keywords, check_stress_possible, energy_forces_stress
from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap
from mpnn_ip.errors import ConfigError, DataError

#: Inputs of an exported model, in order (shapes: N atoms, B frames, E edges).
EXPORTED_INPUTS = ("pos", "atomic_numbers", "cell", "pbc", "batch", "edge_index", "cell_shifts")
#: Outputs of an exported model, in order.
EXPORTED_OUTPUTS = ("energy", "node_energy", "forces", "stress")
#: Name of the metadata entry: an AOTInductor package's metadata key, an exported program's extra file.
METADATA_NAME = "mpnn_ip.json"


def structure_inputs(structures: Sequence, r_max: float, dtype: torch.dtype, device="cpu") -> dict[str, torch.Tensor]:
    """Exported-model inputs of ASE ``Atoms`` (one batch of frames, edges from ASE's neighbour list).

    Returns (N atoms, B frames, E edges): ``pos [N, 3]`` Å (``dtype``), ``atomic_numbers [N]``
    int64, ``cell [B, 3, 3]`` Å (rows are lattice vectors; zeros for a frame without periodic
    direction, as in :class:`mpnn_ip.data.AtomicGraph`), ``pbc [B, 3]`` bool, ``batch [N]`` int64,
    ``edge_index [2, E]`` int64 (row 0 centre i, row 1 neighbour j, global atom indices) and
    ``cell_shifts [E, 3]`` (``dtype``; ``r_ij = pos[j] - pos[i] + cell_shifts @ cell``), every
    pair closer than ``r_max`` in both directions.
    """
    pos, numbers, cells, pbcs, batch, edges, shifts = [], [], [], [], [], [], []
    offset = 0
    for frame, atoms in enumerate(structures):
        pbc = np.asarray(atoms.pbc, dtype=bool)
        cell = np.asarray(atoms.cell.array, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
        i, j, shift = neighbor_list("ijS", atoms, float(r_max))
        pos.append(np.asarray(atoms.positions, dtype=np.float64))
        numbers.append(np.asarray(atoms.numbers, dtype=np.int64))
        cells.append(cell)
        pbcs.append(pbc)
        batch.append(np.full(len(atoms), frame, dtype=np.int64))
        edges.append(np.stack([i, j]).astype(np.int64) + offset)
        shifts.append(np.asarray(shift, dtype=np.float64).reshape(-1, 3))
        offset += len(atoms)
    arrays = {
        "pos": (np.concatenate(pos), dtype),
        "atomic_numbers": (np.concatenate(numbers), torch.long),
        "cell": (np.stack(cells), dtype),
        "pbc": (np.stack(pbcs), torch.bool),
        "batch": (np.concatenate(batch), torch.long),
        "edge_index": (np.concatenate(edges, axis=1), torch.long),
        "cell_shifts": (np.concatenate(shifts), dtype),
    }
    return {key: torch.as_tensor(value).to(device=device, dtype=kind) for key, (value, kind) in arrays.items()}


class ExportedModel:
    """A ``.pt2`` written by :func:`mpnn_ip.export.export_model`, loaded without the model code.

    Call it with the tensors of :func:`structure_inputs` (in :data:`EXPORTED_INPUTS` order) to get
    ``(energy [B] eV, node_energy [N] eV, forces [N, 3] eV/Å, stress [B, 3, 3] eV/Å³)``
    (stress zero for frames without volume). ``metadata`` holds species, r_max, dtype, device,
    model name, versions, units and the parity measured at export time.

    Args:
        path: the ``.pt2`` file: an AOTInductor package (compiled) or a ``torch.export`` program.
        device: where to run an exported program (``None``: where it was exported); an
            AOTInductor package runs on the device it was compiled for.
    """

    def __init__(self, path: str | Path, device: str | torch.device | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such exported model (write one with mpnn-export)")
        keep_tensor_buffers_in_heap()  # see mpnn_ip.cpu_allocator
        if is_aoti_package(self.path):
            self.runner = torch._inductor.aoti_load_package(str(self.path))
            self.metadata = json.loads(self.runner.get_metadata()[METADATA_NAME])
        else:
            extra = {METADATA_NAME: ""}
            program = torch.export.load(str(self.path), extra_files=extra)
            if not extra[METADATA_NAME]:
                raise ConfigError(
                    f"{self.path} is a torch.export program but not one written by mpnn-export (no {METADATA_NAME})"
                )
            self.metadata = json.loads(extra[METADATA_NAME])
            module = program.module()
            if device is not None:
                module = module.to(torch.device(device))
            self.runner = module
        self.species = [int(z) for z in self.metadata["species"]]
        self.r_max = float(self.metadata["r_max"])
        self.dtype = getattr(torch, self.metadata["dtype"])
        self.device = torch.device(device if device is not None and not self.compiled else self.metadata["device"])

    @property
    def compiled(self) -> bool:
        return self.metadata.get("compiled") == "aoti"

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs`` as :func:`structure_inputs` returns them -> ``{energy, node_energy, forces, stress}``."""
        if inputs["edge_index"].shape[1] == 0:
            raise DataError(
                f"no two atoms are closer than r_max = {self.r_max} Å: the exported model {self.path} was exported "
                "for structures with at least one pair (use MPNNCalculator.from_checkpoint for isolated atoms)"
            )
        args = [inputs[key].to(self.device) for key in EXPORTED_INPUTS]
        with torch.no_grad():
            outputs = self.runner(*args)
        return dict(zip(EXPORTED_OUTPUTS, outputs))

    def inputs(self, structures: Sequence) -> dict[str, torch.Tensor]:
        """:func:`structure_inputs` at this model's r_max, dtype and device; unknown elements raise DataError."""
        unknown = sorted({int(z) for atoms in structures for z in atoms.numbers} - set(self.species))
        if unknown:
            from mpnn_ip.elements import symbols

            raise DataError(
                f"element(s) {symbols(unknown)} are not among the species of the exported model {self.path} "
                f"({symbols(self.species)})"
            )
        return structure_inputs(structures, self.r_max, self.dtype, self.device)


def is_aoti_package(path: str | Path) -> bool:
    """Whether ``path`` is an AOTInductor package (compiled code inside), not a plain exported program."""
    with zipfile.ZipFile(path) as archive:
        return any("/data/aotinductor/" in name for name in archive.namelist())


class ExportedCalculator(Calculator):
    """ASE calculator of an exported model: energy, free_energy (eV), energies (eV per atom),
    forces (eV/Å), stress (eV/Å³, Voigt, ASE sign; periodic cells of non-zero volume only, else
    ``PropertyNotImplementedError``), the same results as :class:`~mpnn_ip.MPNNCalculator` on the
    eager model (checked when the file was written).

    Args:
        path: the ``.pt2`` written by ``mpnn-export``.
        device: see :class:`ExportedModel`.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, path: str | Path, device: str | torch.device | None = None, **kwargs):
        check_keywords(type(self).__name__, kwargs, ("path", "device"))
        super().__init__(**kwargs)
        self.model = ExportedModel(path, device)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        """Run the exported model on ``atoms``; fills ``self.results`` (ASE units: eV, Å)."""
        properties = list(properties or ["energy"])
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        if want_stress:
            check_stress_possible(self.atoms)
        if not np.isfinite(self.atoms.positions).all():
            raise DataError("positions contain NaN or inf", path="the ASE Atoms given to ExportedCalculator")
        out = self.model(self.model.inputs([self.atoms]))
        self.results = energy_forces_stress(out, want_stress)
