"""MAE and RMSE of every predicted quantity, masked to the frames that carry the label (torchmetrics).

Quantities and units:
    energy_per_atom   eV/atom   (frames with ``has_energy``)
    energy            eV        per frame
    forces            eV/Å      per Cartesian component (atoms of frames with ``has_forces``)
    stress            eV/Å³     per tensor component (frames with ``has_stress``)

Logged names are ``{stage}/{quantity}_{mae|rmse}``, e.g. ``val/forces_rmse``.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from mpnn_ip.train.losses import atoms_per_frame

#: quantity -> unit, in the order they are reported.
QUANTITIES = {"energy_per_atom": "eV/atom", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³"}


def paired_values(pred: Mapping[str, torch.Tensor], batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{quantity: (predicted, reference)}`` as flat tensors of the labelled entries only."""
    pairs = {}
    if "energy" in pred and bool(batch.has_energy.any()):
        mask = batch.has_energy
        energy = pred["energy"].detach()
        reference = batch.energy.to(energy.dtype)
        n_atoms = atoms_per_frame(batch).to(energy.dtype)
        pairs["energy"] = (energy[mask], reference[mask])
        pairs["energy_per_atom"] = ((energy / n_atoms)[mask], (reference / n_atoms)[mask])
    if "forces" in pred and bool(batch.has_forces.any()):
        mask = batch.has_forces[batch.batch]
        forces = pred["forces"].detach()
        pairs["forces"] = (forces[mask].reshape(-1), batch.forces.to(forces.dtype)[mask].reshape(-1))
    if "stress" in pred and bool(batch.has_stress.any()):
        mask = batch.has_stress
        stress = pred["stress"].detach()
        pairs["stress"] = (stress[mask].reshape(-1), batch.stress.to(stress.dtype)[mask].reshape(-1))
    return pairs


class PropertyMetrics(torch.nn.Module):
    """Running MAE and RMSE of energy per atom, energy, force and stress components over an epoch.

    ``update(pred, batch)`` accumulates; ``compute()`` returns ``{"forces_rmse": tensor, ...}`` for
    the quantities that had at least one labelled entry since the last ``reset()``.
    Sums are kept in float64 whatever the model's dtype.
    """

    def __init__(self):
        super().__init__()
        self.mae = torch.nn.ModuleDict({q: MeanAbsoluteError() for q in QUANTITIES})
        self.rmse = torch.nn.ModuleDict({q: MeanSquaredError(squared=False) for q in QUANTITIES})
        for metric in [*self.mae.values(), *self.rmse.values()]:
            metric.set_dtype(torch.float64)

    def update(self, pred: Mapping[str, torch.Tensor], batch) -> None:
        for quantity, (predicted, reference) in paired_values(pred, batch).items():
            if predicted.numel() == 0:
                continue
            self.mae[quantity].update(predicted.double(), reference.double())
            self.rmse[quantity].update(predicted.double(), reference.double())

    def compute(self) -> dict[str, torch.Tensor]:
        out = {}
        for quantity in QUANTITIES:
            if int(self.mae[quantity].total) == 0:
                continue
            out[f"{quantity}_mae"] = self.mae[quantity].compute()
            out[f"{quantity}_rmse"] = self.rmse[quantity].compute()
        return out

    def reset(self) -> None:
        for metric in [*self.mae.values(), *self.rmse.values()]:
            metric.reset()
