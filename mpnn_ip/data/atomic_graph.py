"""One labelled structure as a torch-geometric graph without edges, and batching of many.

Edges depend on a model's cutoff, so frames carry none: the radius graph is built on the
device, batched, inside the model (see :mod:`mpnn_ip.graph`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from mpnn_ip.data.problems import FrameError
from mpnn_ip.errors import ConfigError, DataError
from mpnn_ip.labels import LabelValueError
from mpnn_ip.outputs import INPUTS, LABELS

#: Closest allowed distance between two atoms (Å); anything closer is a broken structure.
MIN_INTERATOMIC_DISTANCE = 0.1

#: Keys of a batch that describe the structure.
STRUCTURE_KEYS = ("pos", "atomic_numbers", "cell", "pbc", "batch", "ptr")


def model_input_keys() -> tuple[str, ...]:
    """Keys of a batch that the models read: the structure, then every input of the table and its mask
    (``charge``, ``has_charge``, ``spin``, ``has_spin``: [B] each); labels and their masks travel beside them."""
    return (*STRUCTURE_KEYS, *(key for spec in INPUTS.values() for key in (spec.name, spec.mask)))


#: :func:`model_input_keys` of the standard table.
MODEL_INPUT_KEYS = model_input_keys()


class AtomicGraph(Data):
    """A structure and its optional labels (torch-geometric ``Data``, no edges).

    Fields (``N`` atoms):
        pos: [N, 3] float64, Å.
        atomic_numbers: [N] long.
        cell: [1, 3, 3] float64, Å; rows are lattice vectors (ASE); zeros when no direction is periodic.
        pbc: [1, 3] bool.
        one field per row of :data:`mpnn_ip.outputs.LABELS` ([1, *shape] per frame, [N, *shape] per atom;
            0 where a label is missing, an input's default where it is) and its mask ``has_<name>``
            ([1] bool); the standard ones:
            energy: [1] float64, eV. forces: [N, 3] float64, eV/Å.
            stress: [1, 3, 3] float64, eV/Å³, ASE sign (positive = tensile).
            dipole: [1, 3] float64, e·Å (frames without periodicity only).
            charge: [1] float64, e, the total charge (default 0). spin: [1] float64, multiplicity 2S+1 (default 1).
        weight: [1] float64, per-frame loss weight.
        head: [1] long, optional: the head of a multi-head model that evaluates the frame (absent = 0,
            the default head; set by :class:`~mpnn_ip.data.dataset.FramesOfHead`).
    """

    @classmethod
    def from_atoms(
        cls,
        atoms,
        *,
        weight: float = 1.0,
        path: str | None = None,
        frame: int | None = None,
        **labels,
    ) -> AtomicGraph:
        """Build a graph from an ASE ``Atoms``; labels and inputs are optional keywords, one per row of the table
        (``energy=`` eV, ``forces=`` [N, 3] eV/Å, ``stress=`` eV/Å³ with ASE's sign as Voigt 6, 9 or 3×3,
        ``dipole=`` e·Å, ``charge=`` e, ``spin=`` 2S+1, ``<name>=`` of a registered row), each checked (layout,
        NaN/inf, bounds); a label not given is masked, an input not given holds its default (masked too).
        Nothing is taken from ``atoms.info`` here: :func:`info_inputs` gives the inputs found there.

        ``path``/``frame`` only make error messages name where the data came from.

        Raises:
            TypeError: a keyword that is no label.
            DataError: a bad structure or label (the message names ``path`` and ``frame``).
        """
        unknown = sorted(set(labels) - set(LABELS))
        if unknown:
            raise TypeError(
                f"AtomicGraph.from_atoms: unknown label(s) {', '.join(unknown)}; labels: {', '.join(LABELS)}"
            )
        n = len(atoms)
        if n == 0:
            raise FrameError("the structure has no atoms", kind="no_atoms", path=path, frame=frame)
        pos = np.asarray(atoms.get_positions(), dtype=np.float64)
        numbers = np.asarray(atoms.get_atomic_numbers(), dtype=np.int64)
        pbc = np.asarray(atoms.get_pbc(), dtype=bool).reshape(3)
        cell = np.asarray(atoms.get_cell().array, dtype=np.float64).reshape(3, 3)
        _check_finite(pos, "positions", path, frame)
        _check_finite(cell, "cell", path, frame)
        if np.any(numbers <= 0) or np.any(numbers > 118):
            raise FrameError(
                f"atomic numbers must be in 1..118, got {sorted(set(numbers.tolist()))}",
                kind="invalid_element",
                path=path,
                frame=frame,
            )
        _check_cell(cell, pbc, path, frame)
        if not pbc.any():
            cell = np.zeros((3, 3))
        _check_min_distance(atoms, path, frame)

        data = dict(
            pos=torch.as_tensor(pos),
            atomic_numbers=torch.as_tensor(numbers),
            cell=torch.as_tensor(cell).unsqueeze(0),
            pbc=torch.as_tensor(pbc).unsqueeze(0),
            weight=torch.tensor([float(weight)], dtype=torch.float64),
        )
        for spec in LABELS.values():
            try:
                data.update(spec.entries(labels.get(spec.name), n))
            except LabelValueError as exc:
                raise FrameError(str(exc), kind=exc.kind, path=path, frame=frame) from None
        return cls(**data)

    @property
    def num_atoms(self) -> int:
        return int(self.pos.shape[0])


def info_inputs(atoms, keys: Mapping[str, str] | None = None) -> dict:
    """The inputs of the table (total charge, spin multiplicity) that ``atoms.info`` holds, ``{name: value}``
    for :meth:`AtomicGraph.from_atoms`; an input absent from ``atoms.info`` is left out (its default holds).

    ``keys``: ``{input: key in atoms.info}`` for those not under their default key (``{"charge": "total_charge"}``).

    Raises:
        ConfigError: a name in ``keys`` that is no input (the message lists them).
    """
    keys = check_info_keys(keys)
    found = {name: atoms.info.get(keys.get(name, spec.key)) for name, spec in INPUTS.items()}
    return {name: value for name, value in found.items() if value is not None}


def check_info_keys(keys: Mapping[str, str] | None) -> dict[str, str]:
    """``keys`` as a dict, after checking that each names an input of the table (else a ``ConfigError``)."""
    keys = dict(keys or {})
    unknown = sorted(set(keys) - set(INPUTS))
    if unknown:
        raise ConfigError(f"info_keys: {', '.join(unknown)} are no inputs; the inputs are {', '.join(INPUTS)}")
    return keys


def collate(graphs: Sequence[AtomicGraph]) -> Batch:
    """Batch graphs (torch-geometric ``Batch``: adds ``batch`` [N] and ``ptr`` [B+1])."""
    if len(graphs) == 0:
        raise DataError("cannot batch an empty list of structures")
    return Batch.from_data_list(list(graphs))


def to_inputs(data: Data | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain dict of tensors from a batch, a single graph or a dict (the model's input form).

    Adds ``batch`` (zeros) and ``ptr`` for a single unbatched graph; keeps labels and any
    precomputed ``edge_index``/``cell_shifts``.
    """
    if isinstance(data, Mapping):
        out = dict(data)
    else:
        out = {k: v for k, v in data.to_dict().items() if isinstance(v, torch.Tensor)}
    n = out["pos"].shape[0]
    if "batch" not in out or out["batch"] is None:
        out["batch"] = torch.zeros(n, dtype=torch.long, device=out["pos"].device)
    if "ptr" not in out or out["ptr"] is None:
        out["ptr"] = torch.tensor([0, n], dtype=torch.long, device=out["pos"].device)
    if out["cell"].dim() == 2:
        out["cell"] = out["cell"].unsqueeze(0)
    if out["pbc"].dim() == 1:
        out["pbc"] = out["pbc"].unsqueeze(0)
    return out


def _check_finite(array: np.ndarray, what: str, path, frame) -> None:
    if not np.all(np.isfinite(array)):
        raise FrameError(f"{what} contain NaN or inf", kind="non_finite", path=path, frame=frame)


def _check_cell(cell: np.ndarray, pbc: np.ndarray, path, frame) -> None:
    """Every periodic direction needs a non-zero lattice vector, and the periodic ones must be independent."""
    lengths = np.linalg.norm(cell, axis=1)
    for axis in np.flatnonzero(pbc):
        if lengths[axis] < 1e-8:
            raise FrameError(
                f"direction {'xyz'[axis]} is periodic but its lattice vector is zero",
                kind="cell",
                path=path,
                frame=frame,
            )
    periodic = cell[pbc]
    if len(periodic) and np.linalg.matrix_rank(periodic, tol=1e-8 * max(lengths.max(), 1.0)) < len(periodic):
        raise FrameError(
            "the cell is singular: its periodic lattice vectors are linearly dependent",
            kind="cell",
            path=path,
            frame=frame,
        )
    if pbc.all() and abs(np.linalg.det(cell)) < 1e-8:
        raise FrameError(
            "the cell is singular (zero volume) but all directions are periodic", kind="cell", path=path, frame=frame
        )


def _check_min_distance(atoms, path, frame) -> None:
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    if len(atoms) < 2 and not atoms.pbc.any():
        return
    # ASE bins space into boxes of the cutoff's size: a 0.1 Å cutoff over a molecule's 50 Å
    # vacuum box means ~1e6 bins and seconds per frame. Search 1 Å instead, and let ASE use the
    # atoms' extent (not the irrelevant cell vector) along non-periodic directions.
    pbc = np.asarray(atoms.get_pbc(), dtype=bool)
    cell = np.where(pbc[:, None], atoms.get_cell().array, 0.0)
    probe = Atoms(numbers=atoms.get_atomic_numbers(), positions=atoms.get_positions(), cell=cell, pbc=pbc)
    i, j, d = neighbor_list("ijd", probe, max(1.0, MIN_INTERATOMIC_DISTANCE), self_interaction=False)
    close = d < MIN_INTERATOMIC_DISTANCE
    i, j, d = i[close], j[close], d[close]
    if len(d):
        k = int(np.argmin(d))
        raise FrameError(
            f"atoms {int(i[k])} and {int(j[k])} are {d[k]:.4f} Å apart (closer than "
            f"{MIN_INTERATOMIC_DISTANCE} Å): overlapping atoms or a wrong unit/cell",
            kind="close_atoms",
            path=path,
            frame=frame,
        )
