"""MAE and RMSE of every compared quantity, masked to the frames that carry the label (torchmetrics).

The quantities, their units and how each is paired with its label are those of
:mod:`mpnn_ip.outputs` (``energy_per_atom`` eV/atom, ``energy`` eV, ``forces`` eV/Å per
component, ``stress`` eV/Å³ per component, and those of registered labels), the same as
:func:`mpnn_ip.evaluation.evaluate` uses; a metric module has the quantities of the table when it is built.

Logged names are ``{stage}/{quantity}_{mae|rmse}``, e.g. ``val/forces_rmse``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from mpnn_ip.outputs import QUANTITIES, labelled_outputs, paired_values


class PropertyMetrics(torch.nn.Module):
    """Running MAE and RMSE of every compared quantity (energy per atom, energy, force and stress components ...)
    over an epoch.

    ``update(pred, batch)`` accumulates; ``compute()`` returns ``{"forces_rmse": tensor, ...}`` for
    the quantities that had at least one labelled entry since the last ``reset()``.
    Predictions and references are compared in float64 whatever the model's dtype.
    """

    def __init__(self):
        super().__init__()
        self.mae = torch.nn.ModuleDict({q: MeanAbsoluteError() for q in QUANTITIES})
        self.rmse = torch.nn.ModuleDict({q: MeanSquaredError(squared=False) for q in QUANTITIES})
        for metric in [*self.mae.values(), *self.rmse.values()]:
            metric.set_dtype(torch.float64)

    def update(self, pred: Mapping[str, torch.Tensor], batch) -> None:
        labelled = labelled_outputs(pred, batch, dtype=torch.float64)
        for quantity, (predicted, reference) in paired_values(labelled).items():
            self.mae[quantity].update(predicted.detach(), reference)
            self.rmse[quantity].update(predicted.detach(), reference)

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
