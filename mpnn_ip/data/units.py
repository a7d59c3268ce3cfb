"""Stress and virial conventions of data files -> ASE's stress (eV/Å³, positive = tensile).

Files in the wild give stress in eV/Å³, GPa, kbar (VASP) or bar (LAMMPS, FitSNAP), and some
use "positive = compressive" (pressure-like sign). Others store the virial (eV) instead. The stress
row of the label table (:mod:`mpnn_ip.labels`) reads a frame's stress with these conventions.
"""

from __future__ import annotations

import numpy as np
from ase import units

from mpnn_ip.data.problems import FrameError
from mpnn_ip.errors import ConfigError
from mpnn_ip.labels import LabelValueError, stress_to_3x3, virial_stress

#: Size of one unit of each accepted stress unit, in eV/Å³.
STRESS_UNITS_IN_EV_PER_A3 = {
    "ev/a^3": 1.0,
    "gpa": units.GPa,
    "kbar": 1e-1 * units.GPa,
    "bar": units.bar,
}


def _normalise_unit(unit: str) -> str:
    text = str(unit).strip().lower().replace(" ", "").replace("**", "^").replace("³", "^3")
    for angstrom in ("angstrom", "ang", "å"):
        text = text.replace(angstrom, "a")
    if text in ("ev/a3", "ev/a^3"):
        return "ev/a^3"
    return text


def stress_unit_factor(unit: str) -> float:
    """eV/Å³ per one ``unit`` (``eV/A^3`` also spelt ``eV/Å^3``, ``eV/Ang^3``; ``GPa``; ``kbar``; ``bar``)."""
    key = _normalise_unit(unit)
    if key not in STRESS_UNITS_IN_EV_PER_A3:
        raise ConfigError(
            f"unknown stress unit {unit!r}; use one of 'eV/A^3' (also 'eV/Å^3', 'eV/Ang^3'), 'GPa', 'kbar', 'bar'"
        )
    return STRESS_UNITS_IN_EV_PER_A3[key]


def check_stress_sign(stress_sign: int) -> int:
    """+1: the file uses ASE's sign (positive = tensile); -1: positive = compressive."""
    if stress_sign not in (1, -1):
        raise ConfigError(
            f"stress_sign must be 1 (positive = tensile, ASE) or -1 (positive = compressive), got {stress_sign!r}"
        )
    return int(stress_sign)


def stress_to_ase(stress, *, unit: str = "eV/A^3", sign: int = 1, path=None, frame=None) -> np.ndarray:
    """Stress as stored in a file (Voigt 6, 9 or 3×3; ``unit``; ``sign``) -> [3, 3] eV/Å³, ASE sign."""
    scale = check_stress_sign(sign) * stress_unit_factor(unit)
    try:
        return scale * stress_to_3x3(stress)
    except LabelValueError as exc:
        raise FrameError(str(exc), kind=exc.kind, path=path, frame=frame) from None


def virial_to_stress(virial, volume: float, *, path=None, frame=None) -> np.ndarray:
    """Virial (eV; Voigt 6, 9 or 3×3) -> stress [3, 3] eV/Å³, ASE sign: ``stress = -virial / volume``.

    ``volume``: cell volume in Å³; it must be positive (a virial needs a periodic cell).
    """
    try:
        return virial_stress(virial, volume)
    except LabelValueError as exc:
        raise FrameError(str(exc), kind=exc.kind, path=path, frame=frame) from None
