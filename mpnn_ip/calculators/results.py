"""ASE results from a model's output dict, shared by :class:`MPNNCalculator` and :class:`ExportedCalculator`.

Which output gives which ASE result is a column of the output table (``Output.ase_names`` in
:mod:`mpnn_ip.outputs`: energy -> energy and free_energy, node_energy -> energies, forces, stress,
charges, dipole, and those of registered labels). A model that does not return an output gives no
result of it. Needs torch, numpy, ASE and the output table only (the exported calculator imports no
model code).
"""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import PropertyNotImplementedError
from ase.stress import full_3x3_to_voigt_6_stress

from mpnn_ip.errors import ConfigError
from mpnn_ip.outputs import OUTPUTS

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
    """The ASE results of the one frame in ``out``: ``energy``/``free_energy`` (eV), per-atom ``energies``
    (eV), ``forces`` (eV/Å), ``stress`` (eV/Å³, Voigt) only if ``want_stress``, and the results of any
    registered label the model returned (:func:`ase_value`)."""
    results = {}
    for output in OUTPUTS.values():
        if not output.ase_names or output.name not in out or (output.name == "stress" and not want_stress):
            continue
        value = ase_value(output, out[output.name])
        results.update(dict.fromkeys(output.ase_names, value))
    return results


def ase_result_names() -> list[str]:
    """The names of every ASE result an output of the table can give (``energy``, ``free_energy``, ``energies``,
    ``forces``, ``stress``, ``charges``, ``dipole``, and those of registered labels)."""
    return list(dict.fromkeys(name for output in OUTPUTS.values() for name in output.ase_names))


def ase_value(output, tensor: torch.Tensor):
    """ASE's layout of one frame's ``output``: a per-atom output as an array [N, *shape]; a per-frame one as a
    float (shape ``()``), a Voigt 6-vector (shape ``(3, 3)``, a stress) or an array of its shape."""
    if output.rows == "atom":
        return to_numpy(tensor)
    if output.shape == ():
        return float(tensor.detach().sum())
    value = to_numpy(tensor)[0]
    return full_3x3_to_voigt_6_stress(value) if output.shape == (3, 3) else value


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """float64 numpy copy on the host."""
    return tensor.detach().to("cpu", torch.float64).numpy()
