"""Model outputs, their units, the labelled quantities, and how each compared quantity pairs a prediction with its label.

The one place for these facts; the reader, graphs and the on-disk store (:mod:`mpnn_ip.data`), the loss
(:mod:`mpnn_ip.train.losses`), the epoch metrics (:mod:`mpnn_ip.train.metrics`), evaluation
(:mod:`mpnn_ip.evaluation`), checkpoints and the ASE calculator read them from here.

Outputs of a model (``Potential.forward`` returns a dict with these keys; any other key is an extra):

    energy        eV      [B]        total energy of each frame
    node_energy   eV      [N]        each atom's contribution to the energy
    forces        eV/Å    [N, 3]
    stress        eV/Å³   [B, 3, 3]  ASE sign (positive = tensile)
    virial        eV      [B, 3, 3]
    atomic_virial eV      [N, 3, 3]  per-atom share of the virial (``compute_atomic_virial=True``)
    charges       e       [N]        latent charge of each atom (long-range models only)
    dipole        e·Å     [B, 3]     ``sum_i q_i r_i`` (long-range models; defined for non-periodic frames)

A model returns the outputs it computes; one without latent charges has no ``charges`` and ``dipole``.

The label table (:data:`LABELS`, rows of :class:`~mpnn_ip.labels.LabelSpec`) holds labels and inputs:
every row is read, checked, batched and stored. The labels (:data:`FITTED_LABELS`: energy, forces,
stress, dipole, plus any label given to :func:`register_label`) are outputs of the same name, with the
reference in the batch attribute of that name and the mask ``has_<name>``. The inputs (:data:`INPUTS`:
the frame's total ``charge`` and spin multiplicity ``spin``) are given to the model in the batch
(``charge`` [B], ``has_charge`` [B]) and are no output, loss term or metric.

Quantities compared with reference labels (loss terms, MAE/RMSE):

    energy_per_atom   eV/atom   one value per frame
    energy            eV        one value per frame
    forces            eV/Å      one value per Cartesian component
    stress            eV/Å³     one value per tensor component (9 per frame)
    dipole            e·Å       one value per Cartesian component

Only frames that carry the label (``has_energy`` / ``has_forces`` / ``has_stress`` / ``has_dipole``) count.

:data:`LABELS`, :data:`FITTED_LABELS`, :data:`INPUTS`, :data:`OUTPUTS`, :data:`QUANTITIES`,
:data:`QUANTITY_UNITS` and :data:`LABELLED_OUTPUTS` are live: :func:`register_label` and
:func:`unregister_label` change them in place, so a label or input is added in one call (see
``docs/data.md``, "Labels and how to add one").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from mpnn_ip.errors import ConfigError
from mpnn_ip.labels import STANDARD_LABELS, LabelSpec


@dataclass(frozen=True)
class Output:
    """An entry of a model's output dict.

    Args:
        name: key in the output dict.
        unit: unit of the values.
        rows: what the first axis counts: ``"frame"`` ([B, ...]) or ``"atom"`` ([N, ...]).
        label: batch attribute holding the reference (same layout), or ``None`` if datasets carry none.
        mask: batch attribute ``[B]`` bool saying which frames carry ``label``.
        shape: shape of one row's value (``()``, ``(3,)``, ``(3, 3)``).
        ase_names: names of the ASE calculator results taken from it.
    """

    name: str
    unit: str
    rows: Literal["frame", "atom"]
    label: str | None = None
    mask: str | None = None
    shape: tuple[int, ...] = ()
    ase_names: tuple[str, ...] = ()

    @classmethod
    def of_label(cls, spec: LabelSpec) -> Output:
        """The output of a labelled quantity: same name, unit, rows and shape; its label and mask."""
        return cls(spec.name, spec.unit, spec.rows, spec.name, spec.mask, spec.shape, spec.ase_names)


#: Outputs no dataset carries labels of.
_UNLABELLED = {
    output.name: output
    for output in (
        Output("node_energy", "eV", "atom", ase_names=("energies",)),
        Output("virial", "eV", "frame", shape=(3, 3)),
        Output("atomic_virial", "eV", "atom", shape=(3, 3)),
        Output("charges", "e", "atom", ase_names=("charges",)),
    )
}

#: Keys every model may return (those it computes); any other key of a model's output dict is an extra
#: (e.g. an uncertainty). Labelled outputs (``dipole``, registered labels) are standard too (:data:`OUTPUTS`).
STANDARD_OUTPUTS = ("energy", "node_energy", "forces", "stress", "virial", "atomic_virial", "charges")

#: Units recorded in checkpoint metadata. ASCII spelling; never change it, so that old checkpoints compare equal.
UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"}

#: Names that a label may not take: the fields of a graph besides its labels.
RESERVED_NAMES = frozenset(
    {"pos", "atomic_numbers", "cell", "pbc", "batch", "ptr", "weight", "head", "config_type", "source_path"}
    | {"source_frame", "edge_index", "cell_shifts", "num_atoms", "label_keys", "virial"}
)


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


#: name -> :class:`~mpnn_ip.labels.LabelSpec` of every row, labels and inputs, in the order they are read,
#: stored and reported.
LABELS: dict[str, LabelSpec] = {}
#: The labels among :data:`LABELS` (``LabelSpec.fitted``): outputs, loss terms and metrics.
FITTED_LABELS: dict[str, LabelSpec] = {}
#: The inputs among :data:`LABELS` (charge, spin): given to the model in the batch, not fitted.
INPUTS: dict[str, LabelSpec] = {}
#: output name -> :class:`Output`: the standard outputs, then the labels.
OUTPUTS: dict[str, Output] = {}
#: Compared quantities, in the order they are reported.
QUANTITIES: dict[str, Quantity] = {}
#: quantity -> unit, in the order they are reported.
QUANTITY_UNITS: dict[str, str] = {}
#: Outputs that datasets carry reference labels for (a live view of :data:`FITTED_LABELS`): energy, forces, stress, ...
LABELLED_OUTPUTS = FITTED_LABELS.keys()


def register_label(spec: LabelSpec) -> None:
    """Add a row to the table: from then on it is read (``<name>_key``), checked, batched with its mask and
    stored; a label (``kind="label"``) is also available as loss term ``<name>`` and reported as
    ``<quantity>_mae``/``_rmse``, an input (``kind="input"``) is given to the model in the batch.

    For a label, the model must return an output ``<name>`` of the label's layout ([B, *shape] or [N, *shape]), e.g.
    as a declared extra output (``Potential.extra_outputs``). Register before data modules, losses and
    metrics are built (they take the table as it is then).

    Raises:
        ConfigError: a name that is taken (an output, a label, a graph field) or not an identifier, a
            quantity name that is taken, a ``loss_quantity`` that is not one of its quantities, or an
            input with a loss weight.
    """
    _check_new_label(spec)
    LABELS[spec.name] = spec
    _refresh()


def unregister_label(name: str) -> None:
    """Remove a label added by :func:`register_label` (the standard ones stay)."""
    if name in {spec.name for spec in STANDARD_LABELS}:
        raise ConfigError(f"{name} is a standard label and cannot be unregistered")
    if name not in LABELS:
        raise ConfigError(f"no label {name!r} is registered; the labels are {', '.join(LABELS)}")
    del LABELS[name]
    _refresh()


def _check_new_label(spec: LabelSpec) -> None:
    taken = set(STANDARD_OUTPUTS) | set(LABELS) | set(RESERVED_NAMES) | {q for q in QUANTITIES}
    if not spec.name.isidentifier() or spec.name in taken or spec.name.startswith("has_"):
        raise ConfigError(
            f"cannot register label {spec.name!r}: its name must be an identifier not starting with has_ "
            f"and not one of {', '.join(sorted(taken))}"
        )
    if spec.rows not in ("frame", "atom"):
        raise ConfigError(f"label {spec.name}: rows must be 'frame' or 'atom', got {spec.rows!r}")
    if spec.kind not in ("label", "input"):
        raise ConfigError(f"label {spec.name}: kind must be 'label' or 'input', got {spec.kind!r}")
    if not spec.fitted and spec.loss_weight:
        raise ConfigError(f"input {spec.name}: an input is not fitted, so it takes no loss_weight")
    names = [name for name, _ in spec.quantities]
    clash = sorted((set(names) - {spec.name}) & taken) + sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigError(f"label {spec.name}: quantity name(s) {', '.join(clash)} are taken")
    if spec.loss_quantity not in names:
        raise ConfigError(f"label {spec.name}: loss_quantity {spec.loss_quantity!r} is not one of {names}")
    if spec.rows == "atom" and any(per_atom for _, per_atom in spec.quantities):
        raise ConfigError(f"label {spec.name}: only per-frame labels have per-atom quantities")


def _refresh() -> None:
    """Rebuild the live tables from :data:`LABELS` (in place: modules that imported them see the change)."""
    for view, fitted in ((FITTED_LABELS, True), (INPUTS, False)):
        view.clear()
        view.update({name: spec for name, spec in LABELS.items() if spec.fitted == fitted})
    outputs = {name: _UNLABELLED.get(name) or Output.of_label(LABELS[name]) for name in STANDARD_OUTPUTS}
    outputs.update({name: Output.of_label(spec) for name, spec in FITTED_LABELS.items() if name not in outputs})
    OUTPUTS.clear()
    OUTPUTS.update(outputs)
    quantities = [
        Quantity(quantity, spec.name, per_atom)
        for spec in FITTED_LABELS.values()
        for quantity, per_atom in spec.quantities
    ]
    QUANTITIES.clear()
    QUANTITIES.update({quantity.name: quantity for quantity in quantities})
    QUANTITY_UNITS.clear()
    QUANTITY_UNITS.update({name: quantity.unit for name, quantity in QUANTITIES.items()})


LABELS.update({spec.name: spec for spec in STANDARD_LABELS})
_refresh()


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
