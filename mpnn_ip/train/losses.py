"""One loss module configured per term: ``{energy: {weight, fn}, forces: {...}, stress: {...}}``.

Each term compares one quantity of :mod:`mpnn_ip.outputs` with its labels: ``energy`` the energy
per atom (eV/atom), so that frames of different size count alike; ``forces`` every Cartesian
component (eV/Å); ``stress`` every tensor component (eV/Å³). All terms go through the same code:
rows of frames without the label (``has_energy``/``has_forces``/``has_stress`` False) are masked
out, every row is multiplied by its frame's ``weight``, and the sum is divided by the number of
labelled entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F

from mpnn_ip.outputs import OUTPUTS, QUANTITIES, Output, Quantity, labelled_outputs, per_row, quantity_rows

#: Loss term name (the config key) -> the quantity it compares, in the order they are reported.
LOSS_TERMS = {"energy": "energy_per_atom", "forces": "forces", "stress": "stress"}
LOSS_FUNCTIONS = ("mse", "mae", "huber")
_SETTINGS = ("weight", "fn", "delta")


def elementwise_loss(fn: str, pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Unreduced ``mse`` (squared error), ``mae`` (absolute error) or ``huber`` (with ``delta``)."""
    if fn == "mse":
        return (pred - target).square()
    if fn == "mae":
        return (pred - target).abs()
    if fn == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=delta)
    raise ValueError(f"unknown loss function {fn!r}; choose one of {LOSS_FUNCTIONS}")


def masked_mean(values: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(weight * values over masked rows) / (number of masked entries)``; 0 when nothing is masked in.

    ``values``: [R, ...]; ``weight``, ``mask``: [R].
    """
    per_row_values = values.reshape(values.shape[0], -1)
    selected = (weight * mask).to(per_row_values.dtype).unsqueeze(1) * per_row_values
    count = mask.sum() * per_row_values.shape[1]
    return selected.sum() / count.clamp(min=1)


@dataclass(frozen=True)
class LossTerm:
    """One term: ``weight * masked_mean(fn(predicted, reference))`` of ``quantity``; ``delta`` is huber's, in its unit."""

    name: str
    quantity: Quantity
    weight: float
    fn: str = "mse"
    delta: float = 1.0

    @classmethod
    def from_config(cls, name: str, spec: Mapping) -> LossTerm:
        if name not in LOSS_TERMS:
            raise ValueError(f"loss.{name} is not a loss term; the terms are {', '.join(LOSS_TERMS)}")
        unknown = set(spec) - set(_SETTINGS)
        if unknown:
            raise ValueError(f"loss.{name}: unknown setting(s) {sorted(unknown)}; allowed: {', '.join(_SETTINGS)}")
        fn = str(spec.get("fn", "mse"))
        if fn not in LOSS_FUNCTIONS:
            raise ValueError(f"loss.{name}.fn={fn!r} is not a loss function; choose one of {LOSS_FUNCTIONS}")
        quantity = QUANTITIES[LOSS_TERMS[name]]
        return cls(name, quantity, float(spec.get("weight", 1.0)), fn, float(spec.get("delta", 1.0)))


class WeightedPropertyLoss(torch.nn.Module):
    """Weighted sum of per-quantity losses.

    Keyword arguments, one per term (``None`` or weight 0 switches a term off):
        energy: ``{"weight": float, "fn": "mse"|"mae"|"huber", "delta": float}`` for the energy per
            atom (eV/atom). ``delta`` (huber only) is in the unit of the quantity.
        forces: same, for force components (eV/Å).
        stress: same, for stress components (eV/Å³).

    Any other name is a ``ValueError`` naming the known terms.

    ``forward(pred, batch)`` -> ``(total, terms)``: the scalar loss and ``{term: unweighted value}``.
    ``pred``: the model's output dict (``energy [B]``, ``forces [N,3]``, ``stress [B,3,3]``);
    ``batch``: a collated batch with labels, ``has_*`` masks, ``weight [B]``, ``batch``, ``ptr``.
    A term whose output is missing from ``pred`` is a ``ValueError`` when some frame of the batch
    carries its label, and is left out of ``terms`` (it would be 0) when none does.
    """

    def __init__(self, **terms: Mapping | None):
        super().__init__()
        configured = [LossTerm.from_config(name, spec) for name, spec in terms.items() if spec is not None]
        self.terms = {term.name: term for term in configured if term.weight > 0}
        if not self.terms:
            raise ValueError("the loss has no term with a positive weight; give e.g. loss.forces.weight=1")

    def uses(self, output: str) -> bool:
        """Whether the model output ``output`` (energy, forces, stress) enters the loss."""
        return any(term.quantity.output == output for term in self.terms.values())

    def forward(self, pred: Mapping[str, torch.Tensor], batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labelled = labelled_outputs(pred, batch)
        values = {}
        for name, term in self.terms.items():
            output = OUTPUTS[term.quantity.output]
            entry = labelled.get(output.name)
            if entry is None:
                _check_unlabelled(term, output, batch)
                continue
            predicted, reference, mask = quantity_rows(term.quantity, entry)
            errors = elementwise_loss(term.fn, predicted, reference, term.delta)
            values[name] = masked_mean(errors, per_row(output, batch, batch.weight), mask)
        # starts from 0 * energy so that a batch without any labelled term still backpropagates
        total = sum((self.terms[name].weight * value for name, value in values.items()), 0.0 * pred["energy"].sum())
        return total, values


def _check_unlabelled(term: LossTerm, output: Output, batch) -> None:
    """A term's output may be missing only from a batch where no frame carries its label."""
    labelled_frames = int(getattr(batch, output.mask).sum())
    if labelled_frames:
        raise ValueError(
            f"loss.{term.name} (weight {term.weight:g}) needs the model output {output.name!r}, but the model did not "
            f"return it for a batch in which {labelled_frames} frame(s) carry a {output.label} label; have the model "
            f"compute it (compute_forces=True, compute_stress=True) or set loss.{term.name}.weight=0"
        )
