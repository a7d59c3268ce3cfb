"""The label table, one row per quantity that data files carry: labels (what models are fitted to) and
inputs (what models are given besides the structure, such as a frame's total charge).

A :class:`LabelSpec` holds every fact about one row that the rest of the code needs, so that a new
label (a quadrupole, a per-frame charge sum) or input is one row given to :func:`mpnn_ip.outputs.register_label`:

    reading      the reader option ``<name>_key`` and its default key; how a frame's value is found
                 (:attr:`LabelSpec.read`, default: :func:`lookup` of the key) and converted to the
                 stored layout (:attr:`LabelSpec.to_array`, default: a shape check)
    graph        the batch attribute ``<name>`` ([1, *shape] per frame, [n_atoms, *shape] per atom)
                 and its mask ``has_<name>`` ([1] bool per frame); frames without it are masked
    checks       finite values always; absolute values above :attr:`LabelSpec.max_magnitude` and values
                 below :attr:`LabelSpec.minimum` are errors
    store        the columns ``<name>`` and ``has_<name>`` of an on-disk store (:attr:`LabelSpec.columns`)
    loss         the loss term ``<name>`` and the quantity it compares (:attr:`LabelSpec.loss_quantity`)
    metrics      the compared quantities (:attr:`LabelSpec.quantities`): MAE/RMSE in training and evaluation
    calculator   the names of the ASE results it gives (:attr:`LabelSpec.ase_names`)

Labels (``kind="label"``) have all of these. Inputs (``kind="input"``) are read, checked, batched and
stored the same way, but a frame without one holds :attr:`LabelSpec.default` (its mask says it was
absent), and they are no model output, loss term, metric or ASE result: the model reads them from the
batch (``charge`` [B], ``has_charge`` [B]), and the ASE calculator from ``atoms.info``.

The standard rows (:data:`STANDARD_LABELS`):

    name    kind   unit   rows   shape   key     quantities (per atom?)               loss term compares
    energy  label  eV     frame  ()      energy  energy_per_atom (yes), energy (no)   energy_per_atom
    forces  label  eV/Å   atom   (3,)    forces  forces                               forces
    stress  label  eV/Å³  frame  (3, 3)  stress  stress                               stress
    dipole  label  e·Å    frame  (3,)    dipole  dipole                               dipole (weight 0)
    charge  input  e      frame  ()      charge  (default 0: neutral)
    spin    input  2S+1   frame  ()      spin    (default 1: singlet; >= 1)

Stress is the one label with a special reading, declared in its row (:func:`read_stress`): it is
converted from the file's unit and sign (``stress_unit``, ``stress_sign``), given as Voigt 6, 9
components or 3×3 (:func:`stress_to_3x3`), or computed from a virial (``virial_key``: ``-virial / volume``);
frames not periodic in x, y and z have it masked. The dipole is defined for frames without any periodic
direction only; periodic frames have it masked (silently: many codes print one for slabs too). The energy
per atom is declared as a per-atom quantity of the energy row.

Charge and spin are real numbers here (a fractional total charge of a fragment is stored as given);
MACE-OMOL's charge/spin embedding, like this package's, takes integers and says so when it gets another.

This module is a leaf (numpy, torch, warnings): the reader adds the file and frame to the
:class:`LabelValueError` a conversion raises.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

#: Absolute values above this are corrupt numbers (1e308 ...) or wrong units (eV, eV/Å, eV/Å³).
MAX_LABEL_MAGNITUDE = 1e12


class LabelValueError(ValueError):
    """A label value that cannot be stored (wrong shape, unusable cell, below the minimum); ``kind`` names the check.

    The reader turns it into a :class:`~mpnn_ip.data.problems.FrameError` naming the file and frame.
    """

    def __init__(self, message: str, kind: str = "shape"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class LabelSpec:
    """One row of the label table: a labelled quantity or an input (see the module docstring for where each
    fact is used).

    Args:
        name: batch attribute, model output, loss term and store column (``has_<name>`` is its mask); of an
            input, the batch attribute and store column only. The reader option that names its key in a
            file is ``<name>_key``.
        unit: unit of the stored values (``eV``, ``eV/Å``).
        rows: ``"frame"`` (one value per frame, stored [1, *shape]) or ``"atom"`` (stored [n_atoms, *shape]).
        shape: shape of one row's value: ``()`` a number, ``(3,)`` a vector, ``(3, 3)`` a tensor.
        key: default key in ``atoms.info`` / ``atoms.arrays`` / calculator results; ``None`` = ``name``.
        dtype: dtype of the stored tensor.
        quantities: ``((quantity name, per atom), ...)`` compared with predictions (MAE/RMSE as
            ``<quantity>_mae``); ``per atom`` divides prediction and reference by the frame's atom
            count (per-frame labels only). ``()`` = ``((name, False),)``.
        loss_quantity: the quantity that loss term ``name`` compares; ``None`` = the first of ``quantities``.
        loss_weight: its weight in the default loss (0 = off unless configured).
        read: ``(atoms, key, options, where, frame) -> value or None``: the frame's value in the unit
            of the label; ``options`` is the :class:`~mpnn_ip.data.reader_options.ReaderOptions`.
            ``None`` = :func:`lookup` of ``key``.
        to_array: ``(value, num_atoms) -> np.ndarray`` of the stored layout [1 or num_atoms, *shape];
            raises :class:`LabelValueError`. ``None`` = a check that the value has that shape.
        alternatives: other sources of this label, each a reader option ``<source>_key`` (stress: ``virial``):
            a file that has one of them does not lack the label.
        periodic_only: only frames periodic in x, y and z can carry it (a stress needs a volume).
        nonperiodic_only: only frames without any periodic direction can carry it (a dipole); the others
            have it masked.
        max_magnitude: absolute values above this (in ``unit``) are errors; ``None`` = no bound.
        minimum: values below this (in ``unit``) are errors (a spin multiplicity below 1); ``None`` = no bound.
        ase_names: names of the ASE calculator results it gives (``energy`` gives ``energy`` and ``free_energy``).
        kind: ``"label"`` (fitted: output, loss term, metrics, ASE result) or ``"input"`` (given to the
            model: read, checked, batched and stored only).
        default: the value a frame without it holds (an input's neutral value: charge 0, multiplicity 1);
            ``None`` = zeros. The mask ``has_<name>`` is False either way.
        warn_if_absent: warn when no frame of a file has it under its default key (it is then masked);
            False for labels few datasets carry (a dipole). Inputs never warn: their default holds.
        model_hint: what makes a model return this output, named when a loss term needs it and the model
            did not return it (dipole: ``model.long_range=les``); ``None`` = the generic advice.
    """

    name: str
    unit: str
    rows: Literal["frame", "atom"]
    shape: tuple[int, ...] = ()
    key: str | None = None
    dtype: torch.dtype = torch.float64
    quantities: tuple[tuple[str, bool], ...] = ()
    loss_quantity: str | None = None
    loss_weight: float = 0.0
    read: Callable[..., Any] | None = None
    to_array: Callable[[Any, int], np.ndarray] | None = None
    alternatives: tuple[str, ...] = ()
    periodic_only: bool = False
    nonperiodic_only: bool = False
    max_magnitude: float | None = MAX_LABEL_MAGNITUDE
    minimum: float | None = None
    ase_names: tuple[str, ...] = ()
    kind: Literal["label", "input"] = "label"
    default: float | None = None
    warn_if_absent: bool = True
    model_hint: str | None = None

    def __post_init__(self):
        if self.key is None:
            object.__setattr__(self, "key", self.name)
        if not self.quantities:
            object.__setattr__(self, "quantities", ((self.name, False),))
        if self.loss_quantity is None:
            object.__setattr__(self, "loss_quantity", self.quantities[0][0])
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    @property
    def fitted(self) -> bool:
        """Whether models are fitted to it (a label), rather than given it (an input)."""
        return self.kind == "label"

    @property
    def option(self) -> str:
        """The reader option naming this label's key in a file (``energy_key``)."""
        return f"{self.name}_key"

    @property
    def mask(self) -> str:
        """The batch attribute and store column that say which frames carry the label ([1] bool per frame)."""
        return f"has_{self.name}"

    def stored_shape(self, num_atoms: int) -> tuple[int, ...]:
        """Shape of the stored tensor of one frame: [1, *shape] per frame, [num_atoms, *shape] per atom."""
        return (1 if self.rows == "frame" else int(num_atoms), *self.shape)

    @property
    def columns(self) -> dict[str, dict]:
        """Store columns ``{name: {dtype, size}}`` of the value and its mask (``-1`` = number of atoms)."""
        return {
            self.name: dict(dtype=self.dtype, size=(1 if self.rows == "frame" else -1, *self.shape)),
            self.mask: dict(dtype=torch.bool, size=(1,)),
        }

    def value_of(self, atoms, key: str | None, options, where: str | None, frame: int | None):
        """The frame's value of this label (``None`` when absent, or when the frame is periodic and the label
        is :attr:`nonperiodic_only`), by :attr:`read`."""
        if self.nonperiodic_only and bool(atoms.pbc.any()):
            return None
        if self.read is None:
            return lookup(atoms, key)
        return self.read(atoms, key, options, where, frame)

    def array(self, value, num_atoms: int) -> np.ndarray:
        """``value`` in the stored layout [1 or num_atoms, *shape] (float64), by :attr:`to_array`."""
        if self.to_array is not None:
            array = np.asarray(self.to_array(value, num_atoms), dtype=np.float64)
            return array.reshape(self.stored_shape(num_atoms))
        return self._checked_shape(value, num_atoms)

    def entries(self, value, num_atoms: int) -> dict[str, torch.Tensor]:
        """``{name: tensor, has_name: [1] bool}`` of a frame: the value (:attr:`default`, or zeros, and False
        when ``value`` is None).

        Raises :class:`LabelValueError` (kind ``shape``, ``non_finite`` or ``invalid``).
        """
        if value is None:
            absent = torch.full(self.stored_shape(num_atoms), self.default or 0.0, dtype=self.dtype)
            return {self.name: absent, self.mask: torch.tensor([False])}
        array = self.array(value, num_atoms)
        if not np.all(np.isfinite(array)):
            raise LabelValueError(f"{self.name} contain NaN or inf", kind="non_finite")
        if self.minimum is not None and np.any(array < self.minimum):
            raise LabelValueError(
                f"{self.name} must be >= {self.minimum:g} ({self.unit}), got {float(array.min()):g}", kind="invalid"
            )
        return {self.name: torch.as_tensor(array).to(self.dtype), self.mask: torch.tensor([True])}

    def _checked_shape(self, value, num_atoms: int) -> np.ndarray:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise LabelValueError(f"{self.name} must be numbers, got {value!r}", kind="invalid") from None
        if self.rows == "atom":
            expected = (int(num_atoms), *self.shape)
            if array.shape != expected:
                raise LabelValueError(
                    f"{self.name} must have shape {expected} for {num_atoms} atoms, got {array.shape}"
                )
            return array
        if array.size != math.prod(self.shape):
            what = "one number" if self.shape == () else f"{math.prod(self.shape)} numbers (shape {self.shape})"
            raise LabelValueError(f"{self.name} must be {what} per frame, got shape {np.shape(value)}")
        return array.reshape(self.stored_shape(num_atoms))


def lookup(atoms, key: str | None):
    """Value of ``key`` in ``atoms.info``, ``atoms.arrays`` or the attached calculator's results; ``None`` if absent.

    ASE's extxyz reader moves ``energy``/``forces``/``stress`` to a calculator; custom keys stay in info/arrays.
    """
    if key is None:
        return None
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    return results.get(key)


def stress_to_3x3(stress) -> np.ndarray:
    """Voigt (xx, yy, zz, yz, xz, xy), 9 components or 3×3 -> the 3×3 array (symmetric as given).

    Raises :class:`LabelValueError` for any other shape.
    """
    value = np.asarray(stress, dtype=np.float64)
    if value.shape == (6,):
        xx, yy, zz, yz, xz, xy = value
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if value.shape in ((9,), (3, 3)):
        return value.reshape(3, 3)
    raise LabelValueError(f"stress must have 6 (Voigt) or 9 / 3x3 components, got shape {value.shape}")


def virial_stress(virial, volume: float) -> np.ndarray:
    """Virial (eV; Voigt 6, 9 or 3×3) -> stress [3, 3] eV/Å³, ASE sign: ``-virial / volume`` (``volume`` in Å³ > 0)."""
    if not np.isfinite(volume) or volume <= 1e-8:
        raise LabelValueError(
            f"a virial was given but the cell volume is {volume:g} Å³; a virial needs a 3D cell", kind="invalid"
        )
    return -stress_to_3x3(virial) / volume


def read_stress(atoms, key: str | None, options, where: str | None, frame: int | None):
    """The stress of a frame [3, 3] eV/Å³ (ASE sign), from its virial (``options.virial_key``) where it has one,
    else from its stress (``key``) scaled by ``options.stress_scale`` (unit and sign of the file); ``None``
    when it has neither, or when the frame is not periodic in x, y and z (masked, with a warning)."""
    virial = lookup(atoms, options.virial_key)
    stress = lookup(atoms, key)
    if virial is None and stress is None:
        return None
    if not atoms.pbc.all():
        warnings.warn(
            f"{where}, frame {frame}: stress/virial label on a frame that is not periodic in x, y and z "
            f"(pbc={atoms.pbc.tolist()}); it is masked",
            stacklevel=5,
        )
        return None
    if virial is not None:
        return virial_stress(virial, abs(float(np.linalg.det(atoms.cell.array))))
    return options.stress_scale * stress_to_3x3(stress)


#: The rows of every dataset: the labels in the order they are reported, then the inputs
#: (:func:`mpnn_ip.outputs.register_label` adds more).
STANDARD_LABELS = (
    LabelSpec(
        "energy",
        "eV",
        "frame",
        quantities=(("energy_per_atom", True), ("energy", False)),
        loss_weight=1.0,
        ase_names=("energy", "free_energy"),
    ),
    LabelSpec("forces", "eV/Å", "atom", (3,), loss_weight=10.0, ase_names=("forces",)),
    LabelSpec(
        "stress",
        "eV/Å³",
        "frame",
        (3, 3),
        read=read_stress,
        to_array=lambda value, num_atoms: stress_to_3x3(value),
        alternatives=("virial",),
        periodic_only=True,
        ase_names=("stress",),
    ),
    LabelSpec(
        "dipole",
        "e·Å",
        "frame",
        (3,),
        nonperiodic_only=True,
        warn_if_absent=False,
        ase_names=("dipole",),
        model_hint="a model with latent charges (model.long_range=les)",
    ),
    # the frame's total charge (e)
    LabelSpec("charge", "e", "frame", kind="input", default=0.0, max_magnitude=1e3),
    # the spin multiplicity 2S+1 (1 = singlet, 2 = doublet ...)
    LabelSpec("spin", "2S+1", "frame", kind="input", default=1.0, minimum=1.0, max_magnitude=1e3),
)
