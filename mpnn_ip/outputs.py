"""Model outputs, their units, and how each compared quantity pairs a prediction with its label.

The one place for these facts; the loss (:mod:`mpnn_ip.train.losses`), the epoch metrics
(:mod:`mpnn_ip.train.metrics`), evaluation (:mod:`mpnn_ip.evaluation`), checkpoints and the ASE
calculator read them from here.

Outputs of a model (``Potential.forward`` returns a dict with these keys; any other key is an extra):

    energy        eV      [B]        total energy of each frame
    node_energy   eV      [N]        each atom's contribution to the energy
    forces        eV/Å    [N, 3]
    stress        eV/Å³   [B, 3, 3]  ASE sign (positive = tensile)
    virial        eV      [B, 3, 3]
    atomic_virial eV      [N, 3, 3]  per-atom share of the virial (``compute_atomic_virial=True``)

Quantities compared with reference labels (loss terms, MAE/RMSE):

    energy_per_atom   eV/atom   one value per frame
    energy            eV        one value per frame
    forces            eV/Å      one value per Cartesian component
    stress            eV/Å³     one value per tensor component (9 per frame)

Only frames that carry the label (``has_energy`` / ``has_forces`` / ``has_stress``) count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class Output:
    """An entry of a model's output dict.

    Args:
        name: key in the output dict.
        unit: unit of the values.
        rows: what the first axis counts: ``"frame"`` ([B, ...]) or ``"atom"`` ([N, ...]).
        label: batch attribute holding the reference (same layout), or ``None`` if datasets carry none.
        mask: batch attribute ``[B]`` bool saying which frames carry ``label``.
    """

    name: str
    unit: str
    rows: Literal["frame", "atom"]
    label: str | None = None
    mask: str | None = None


OUTPUTS = {
    output.name: output
    for output in (
        Output("energy", "eV", "frame", label="energy", mask="has_energy"),
        Output("node_energy", "eV", "atom"),
        Output("forces", "eV/Å", "atom", label="forces", mask="has_forces"),
        Output("stress", "eV/Å³", "frame", label="stress", mask="has_stress"),
        Output("virial", "eV", "frame"),
        Output("atomic_virial", "eV", "atom"),
    )
}

#: Keys every model may return; any other key of a model's output dict is an extra (e.g. an uncertainty).
STANDARD_OUTPUTS = tuple(OUTPUTS)

#: Outputs that datasets carry reference labels for: energy, forces, stress.
LABELLED_OUTPUTS = tuple(name for name, output in OUTPUTS.items() if output.label is not None)

#: Units recorded in checkpoint metadata. ASCII spelling; never change it, so that old checkpoints compare equal.
UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"}


@dataclass(frozen=True)
class Quantity:
    """A quantity compared with reference labels: a labelled output, optionally divided by the frame's atom count.

    Args:
        name: metric and report name (``forces`` gives ``forces_mae``, ``forces_rmse``).
        output: the labelled output it is taken from (a key of :data:`OUTPUTS`).
        per_atom: divide prediction and reference by the number of atoms of their frame.
    """

    name: str
    output: str
    per_atom: bool = False

    @property
    def unit(self) -> str:
        unit = OUTPUTS[self.output].unit
        return f"{unit}/atom" if self.per_atom else unit


#: Compared quantities, in the order they are reported.
QUANTITIES = {
    quantity.name: quantity
    for quantity in (
        Quantity("energy_per_atom", "energy", per_atom=True),
        Quantity("energy", "energy"),
        Quantity("forces", "forces"),
        Quantity("stress", "stress"),
    )
}

#: quantity -> unit, in the order they are reported.
QUANTITY_UNITS = {name: quantity.unit for name, quantity in QUANTITIES.items()}


def atoms_per_frame(batch) -> torch.Tensor:
    """[B] number of atoms of every frame of a torch-geometric batch."""
    return batch.ptr[1:] - batch.ptr[:-1]


def per_row(output: Output, batch, frame_values: torch.Tensor) -> torch.Tensor:
    """``frame_values`` [B, ...] repeated for every row of ``output``: [B, ...] or, for per-atom outputs, [N, ...]."""
    return frame_values[batch.batch] if output.rows == "atom" else frame_values


def labels(batch, output: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The reference of ``output`` in ``batch``: ``{"ref", "mask", "num_atoms"}``.

    ``ref`` has the layout of the output (cast to ``dtype`` if given), ``mask`` [rows] bool marks the
    rows whose frame carries the label, and ``num_atoms`` [B] (only for outputs that a per-atom
    quantity divides) counts the atoms of each frame.
    """
    spec = OUTPUTS[output]
    reference = getattr(batch, spec.label)
    entry = {
        "ref": reference if dtype is None else reference.to(dtype),
        "mask": per_row(spec, batch, getattr(batch, spec.mask)),
    }
    if any(quantity.per_atom and quantity.output == output for quantity in QUANTITIES.values()):
        entry["num_atoms"] = atoms_per_frame(batch)
    return entry


def labelled_outputs(
    pred: Mapping[str, torch.Tensor], batch, dtype: torch.dtype | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """``{output: {"pred", "ref", "mask"[, "num_atoms"]}}`` for every labelled output the model returned.

    ``pred`` is cast to ``dtype`` if given, and ``ref`` to the dtype of ``pred``; see :func:`labels`.
    Outputs missing from ``pred`` are missing from the result.
    """
    entries = {}
    for output in LABELLED_OUTPUTS:
        if output in pred:
            predicted = pred[output] if dtype is None else pred[output].to(dtype)
            entries[output] = {"pred": predicted, **labels(batch, output, predicted.dtype)}
    return entries


def quantity_rows(quantity: Quantity, entry: Mapping):
    """``(predicted, reference, mask)`` of ``quantity``, row by row, from an entry of :func:`labelled_outputs`.

    Works alike on torch tensors (batches) and numpy arrays (the results of :func:`mpnn_ip.evaluation.evaluate`).
    """
    predicted, reference = entry["pred"], entry["ref"]
    if quantity.per_atom:
        num_atoms = entry["num_atoms"].reshape((-1,) + (1,) * (predicted.ndim - 1))
        predicted, reference = predicted / num_atoms, reference / num_atoms
    return predicted, reference, entry["mask"]


def paired_values(labelled: Mapping[str, Mapping]) -> dict:
    """``{quantity: (predicted, reference)}`` flat arrays of the labelled entries only.

    ``labelled``: :func:`labelled_outputs` of a batch (torch) or evaluation results (numpy).
    A quantity whose output is missing, or has no labelled entry, is left out.
    """
    pairs = {}
    for name, quantity in QUANTITIES.items():
        entry = labelled.get(quantity.output)
        if entry is None or not bool(entry["mask"].any()):
            continue
        predicted, reference, mask = quantity_rows(quantity, entry)
        pairs[name] = (predicted[mask].reshape(-1), reference[mask].reshape(-1))
    return pairs
