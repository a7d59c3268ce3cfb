"""ASE results from a model's output dict, shared by :class:`MPNNCalculator` and :class:`ExportedCalculator`.

Needs torch, numpy and ASE only (the exported calculator imports no model code).
"""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import full_3x3_to_voigt_6_stress

from mpnn_ip.errors import ConfigError

#: the keywords of ASE's ``Calculator.__init__``; ASE stores any other keyword as a parameter, silently
ASE_CALCULATOR_KEYWORDS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")


def check_keywords(calculator: str, given: dict, own: tuple[str, ...]) -> None:
    """``ConfigError`` naming the known keywords when ``given`` has one that neither the calculator
    (``own``) nor ASE's base class takes (a misspelt ``skn=1.0`` would otherwise be kept and ignored)."""
    unknown = sorted(set(given) - set(ASE_CALCULATOR_KEYWORDS))
    if unknown:
        known = ", ".join([*own, *ASE_CALCULATOR_KEYWORDS])
        raise ConfigError(f"{calculator}: unknown keyword(s) {', '.join(unknown)}; the keywords are {known}")


def check_stress_possible(atoms) -> None:
    """Raise ASE's ``PropertyNotImplementedError`` unless ``atoms`` is periodic with a 3D cell."""
    if not (bool(np.any(atoms.pbc)) and atoms.cell.rank == 3):
        raise PropertyNotImplementedError(
            "stress needs a periodic structure with a cell of non-zero volume; this one has "
            f"pbc={atoms.pbc.tolist()} and cell rank {atoms.cell.rank}"
        )


def energy_forces_stress(out: dict, want_stress: bool) -> dict:
    """``energy``/``free_energy`` (eV), per-atom ``energies`` (eV), ``forces`` (eV/Å) and, if asked,
    ``stress`` (eV/Å³, Voigt) of the one frame in ``out``."""
    energy = float(out["energy"].detach().sum())
    results = {
        "energy": energy,
        "free_energy": energy,
        "energies": to_numpy(out["node_energy"]),
        "forces": to_numpy(out["forces"]),
    }
    if want_stress:
        results["stress"] = full_3x3_to_voigt_6_stress(to_numpy(out["stress"])[0])
    return results


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """float64 numpy copy on the host."""
    return tensor.detach().to("cpu", torch.float64).numpy()
