"""ASE calculator around a trained :class:`mpnn_ip.models.Potential`.

Example::

    from mpnn_ip import MPNNCalculator
    atoms.calc = MPNNCalculator.from_checkpoint("outputs/run/checkpoints/last.ckpt", device="cuda")
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mpnn_ip.checkpoint import load_model, resolve_dtype
from mpnn_ip.data.atomic_graph import AtomicGraph, to_inputs


class MPNNCalculator(Calculator):
    """ASE calculator: energy, free_energy (eV), energies (eV per atom), forces (eV/Å), stress.

    ``stress`` (eV/Å³, Voigt ``xx, yy, zz, yz, xz, xy``, ASE sign: positive = tensile) is computed
    only when asked for, and only for structures with a periodic direction and a cell of non-zero
    volume; for a molecule it raises ASE's ``PropertyNotImplementedError`` (like ASE's own EMT).
    The extra outputs the model declares (``Potential.extra_outputs``, e.g. ``energy_uncertainty``
    of a Gaussian-process model) are implemented properties too, under their own names: per-frame
    ones as floats, per-atom ones as arrays.

    Args:
        model: the potential (e.g. from :func:`mpnn_ip.load_model`); put in eval mode.
        device: move the model there (``"cpu"``, ``"cuda"``); ``None`` = leave it where it is.
        dtype: ``"float32"`` or ``"float64"`` converts the model; ``None`` keeps its dtype.

    Elements the model was not trained on raise :class:`mpnn_ip.errors.DataError`.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None, dtype=None, **kwargs):
        super().__init__(**kwargs)
        self.extra_outputs = dict(getattr(model, "extra_outputs", {}))
        self.implemented_properties = [*type(self).implemented_properties, *self.extra_outputs]
        target = resolve_dtype(dtype)
        if device is not None:
            model = model.to(torch.device(device))
        if target is not None:
            model = model.to(target)
        self.model = model.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", dtype=None, **kwargs) -> "MPNNCalculator":
        """Calculator for the model of checkpoint ``path`` (see :func:`mpnn_ip.load_model`)."""
        return cls(load_model(path, device=device, dtype=dtype), **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (inputs are moved there)."""
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            return tensor.device
        return torch.device("cpu")

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:
        """Run the model on ``atoms``; fills ``self.results`` (ASE units: eV, Å)."""
        properties = list(properties or ["energy"])
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        if want_stress and not _has_volume(self.atoms):
            raise PropertyNotImplementedError(
                "stress needs a periodic structure with a cell of non-zero volume; this one has "
                f"pbc={self.atoms.pbc.tolist()} and cell rank {self.atoms.cell.rank}"
            )
        graph = AtomicGraph.from_atoms(self.atoms)
        inputs = {k: v.to(self.device) for k, v in to_inputs(graph).items()}
        with torch.enable_grad():
            out = self.model(inputs, compute_forces=True, compute_stress=want_stress)

        energy = float(out["energy"].detach().sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": _numpy(out["node_energy"]),
            "forces": _numpy(out["forces"]),
        }
        if want_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(_numpy(out["stress"])[0])
        for key, (per, _) in self.extra_outputs.items():
            self.results[key] = float(out[key].detach().sum()) if per == "frame" else _numpy(out[key])


def _has_volume(atoms) -> bool:
    return bool(np.any(atoms.pbc)) and atoms.cell.rank == 3


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float64).numpy()
