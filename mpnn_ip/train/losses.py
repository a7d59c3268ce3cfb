"""One loss module configured per output: ``{energy: {weight, fn}, forces: {...}, stress: {...}}``.

Energy enters per atom (eV/atom) so that frames of different size count alike; forces per
Cartesian component (eV/Å); stress per tensor component (eV/Å³). Frames without a label
(``has_energy``/``has_forces``/``has_stress`` False) are masked out, and every frame's term
is multiplied by its ``weight``.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

#: Outputs a loss term can be declared for, in the order they are reported.
OUTPUTS = ("energy", "forces", "stress")
LOSS_FUNCTIONS = ("mse", "mae", "huber")


def elementwise_loss(fn: str, pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Unreduced ``mse`` (squared error), ``mae`` (absolute error) or ``huber`` (with ``delta``)."""
    if fn == "mse":
        return (pred - target).square()
    if fn == "mae":
        return (pred - target).abs()
    if fn == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=delta)
    raise ValueError(f"unknown loss function {fn!r}; choose one of {LOSS_FUNCTIONS}")


def atoms_per_frame(batch) -> torch.Tensor:
    """[B] number of atoms of every frame of a torch-geometric batch."""
    return batch.ptr[1:] - batch.ptr[:-1]


def masked_mean(values: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(weight * values over masked rows) / (number of masked entries)``; 0 when nothing is masked in.

    ``values``: [R, ...]; ``weight``, ``mask``: [R].
    """
    per_row = values.reshape(values.shape[0], -1)
    selected = (weight * mask).to(per_row.dtype).unsqueeze(1) * per_row
    count = mask.sum() * per_row.shape[1]
    return selected.sum() / count.clamp(min=1)


class WeightedPropertyLoss(torch.nn.Module):
    """Weighted sum of per-output losses.

    Args:
        energy: ``{"weight": float, "fn": "mse"|"mae"|"huber", "delta": float}`` for the energy per
            atom (eV/atom); ``None`` or weight 0 switches the term off. ``delta`` (huber only) is
            in the unit of the output.
        forces: same, for force components (eV/Å).
        stress: same, for stress components (eV/Å³).

    ``forward(pred, batch)`` -> ``(total, terms)``: the scalar loss and ``{output: unweighted term}``.
    ``pred``: the model's output dict (``energy [B]``, ``forces [N,3]``, ``stress [B,3,3]``);
    ``batch``: a collated batch with labels, ``has_*`` masks, ``weight [B]``, ``batch``, ``ptr``.
    """

    def __init__(
        self,
        energy: Mapping | None = None,
        forces: Mapping | None = None,
        stress: Mapping | None = None,
    ):
        super().__init__()
        self.terms: dict[str, dict] = {}
        for name, spec in (("energy", energy), ("forces", forces), ("stress", stress)):
            if spec is None:
                continue
            unknown = set(spec) - {"weight", "fn", "delta"}
            if unknown:
                raise ValueError(f"loss.{name}: unknown setting(s) {sorted(unknown)}; allowed: weight, fn, delta")
            fn = str(spec.get("fn", "mse"))
            if fn not in LOSS_FUNCTIONS:
                raise ValueError(f"loss.{name}.fn={fn!r} is not a loss function; choose one of {LOSS_FUNCTIONS}")
            weight = float(spec.get("weight", 1.0))
            if weight > 0:
                self.terms[name] = {"weight": weight, "fn": fn, "delta": float(spec.get("delta", 1.0))}
        if not self.terms:
            raise ValueError("the loss has no term with a positive weight; give e.g. loss.forces.weight=1")

    def uses(self, output: str) -> bool:
        """Whether ``output`` (energy, forces, stress) enters the loss."""
        return output in self.terms

    def forward(self, pred: Mapping[str, torch.Tensor], batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        frame_weight = batch.weight
        terms = {}
        for name, spec in self.terms.items():
            if name == "energy":
                n_atoms = atoms_per_frame(batch).to(pred["energy"].dtype)
                values = elementwise_loss(
                    spec["fn"],
                    pred["energy"] / n_atoms,
                    batch.energy.to(pred["energy"].dtype) / n_atoms,
                    spec["delta"],
                )
                terms[name] = masked_mean(values, frame_weight, batch.has_energy)
            elif name == "forces":
                values = elementwise_loss(spec["fn"], pred["forces"], batch.forces.to(pred["forces"].dtype), spec["delta"])
                terms[name] = masked_mean(values, frame_weight[batch.batch], batch.has_forces[batch.batch])
            elif "stress" in pred:
                values = elementwise_loss(spec["fn"], pred["stress"], batch.stress.to(pred["stress"].dtype), spec["delta"])
                terms[name] = masked_mean(values, frame_weight, batch.has_stress)
        # starts from 0 * energy so that a batch without any labelled term still backpropagates
        total = sum((self.terms[name]["weight"] * value for name, value in terms.items()), 0.0 * pred["energy"].sum())
        return total, terms
