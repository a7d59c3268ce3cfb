"""One loss module configured per term: ``{energy: {weight, fn}, forces: {...}, stress: {...}}``.

There is one term per label of :data:`mpnn_ip.outputs.FITTED_LABELS` (not the inputs charge and spin),
named after it, comparing the quantity its row declares (``LabelSpec.loss_quantity``): ``energy`` the
energy per atom (eV/atom), so that frames of different size count alike; ``forces`` every Cartesian
component (eV/Å); ``stress`` every tensor component (eV/Å³); ``dipole`` every Cartesian component (e·Å;
weight 0 unless configured, and only models with latent charges return it); a registered label its own.
All terms go through the same code: rows of frames without the label (``has_energy``/``has_forces``/
``has_stress`` False) are masked out, every row is multiplied by its frame's ``weight``, and the sum is
divided by the number of labelled entries.

Under DDP each process holds part of the global batch; dividing each part's sum by its own count
would weigh an entry of a process holding few atoms more than one of a process holding many. The
training step therefore divides by the global count instead (``count_normaliser``: the count summed
over processes, divided by their number, because DDP averages gradients), so that ``W`` processes
with ``B/W`` frames each take exactly the step of one process with ``B`` frames. :class:`EpochLoss`
does the same over a whole epoch for the logged ``{stage}/loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from mpnn_ip.errors import ConfigError
from mpnn_ip.outputs import (
    FITTED_LABELS,
    INPUTS,
    LABELS,
    OUTPUTS,
    QUANTITIES,
    Output,
    Quantity,
    labelled_outputs,
    per_row,
    quantity_rows,
)


class _LossTerms(Mapping):
    """Loss term name (the config key) -> the quantity it compares, in the order they are reported: one per
    label of :data:`mpnn_ip.outputs.FITTED_LABELS` (read when used, so a registered label has its term)."""

    def __getitem__(self, name: str) -> str:
        return FITTED_LABELS[name].loss_quantity

    def __iter__(self):
        return iter(FITTED_LABELS)

    def __len__(self) -> int:
        return len(FITTED_LABELS)


#: Loss term name -> the quantity it compares: ``{"energy": "energy_per_atom", "forces": "forces", "stress": "stress",
#: "dipole": "dipole"}`` and one per registered label.
LOSS_TERMS = _LossTerms()
LOSS_FUNCTIONS = ("mse", "mae", "huber")
_SETTINGS = ("weight", "fn", "delta")


def default_loss() -> dict[str, dict]:
    """``{term: {"weight", "fn"}}`` of every label, with the weight its row gives (energy 1, forces 10, stress 0,
    dipole 0)."""
    return {name: {"weight": spec.loss_weight, "fn": "mse"} for name, spec in FITTED_LABELS.items()}


def elementwise_loss(fn: str, pred: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Unreduced ``mse`` (squared error), ``mae`` (absolute error) or ``huber`` (with ``delta``)."""
    if fn == "mse":
        return (pred - target).square()
    if fn == "mae":
        return (pred - target).abs()
    if fn == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=delta)
    raise ValueError(f"unknown loss function {fn!r}; choose one of {LOSS_FUNCTIONS}")


def masked_sum(values: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum(weight * values over masked rows), number of masked entries)``.

    ``values``: [R, ...]; ``weight``, ``mask``: [R].
    """
    per_row_values = values.reshape(values.shape[0], -1)
    selected = (weight * mask).to(per_row_values.dtype).unsqueeze(1) * per_row_values
    return selected.sum(), (mask.sum() * per_row_values.shape[1]).to(per_row_values.dtype)


def masked_mean(values: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(weight * values over masked rows) / (number of masked entries)``; 0 when nothing is masked in.

    ``values``: [R, ...]; ``weight``, ``mask``: [R].
    """
    total, count = masked_sum(values, weight, mask)
    return total / count.clamp(min=1)


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
        if name in INPUTS:
            raise ValueError(
                f"loss.{name}: {name} is an input of the model ({INPUTS[name].unit}), not a label, so it has no "
                f"loss term; the terms are {', '.join(LOSS_TERMS)}"
            )
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
        dipole: same, for dipole components (e·Å) of frames without periodicity; the model must return
            ``dipole`` (latent charges: ``model.long_range=les``).
        <label>: same, for the loss quantity of a label added with :func:`mpnn_ip.outputs.register_label`.

    Any other name is a ``ValueError`` naming the known terms. The terms are those of :data:`LOSS_TERMS`
    when the loss is built (:attr:`term_names`).

    ``forward(pred, batch, count_normaliser=None)`` -> ``(total, terms)``: the scalar loss and
    ``{term: unweighted value}``; ``count_normaliser`` maps the counts of labelled entries ``[T]`` (one
    per term of :attr:`term_names`) to what the sums are divided by (DDP: the global count over
    the number of processes). :meth:`sums_and_counts` gives the sums and counts themselves.
    ``pred``: the model's output dict (``energy [B]``, ``forces [N,3]``, ``stress [B,3,3]``);
    ``batch``: a collated batch with labels, ``has_*`` masks, ``weight [B]``, ``batch``, ``ptr``.
    A term whose output is missing from ``pred`` is a ``ConfigError`` (saying what makes a model return it)
    when some frame of the batch carries its label, and is left out of ``terms`` (it would be 0) when none does.
    """

    def __init__(self, **terms: Mapping | None):
        super().__init__()
        #: every term the sums and counts have a slot for, in order (those of :data:`LOSS_TERMS` now)
        self.term_names = tuple(LOSS_TERMS)
        configured = [LossTerm.from_config(name, spec) for name, spec in terms.items() if spec is not None]
        self.terms = {term.name: term for term in configured if term.weight > 0}
        if not self.terms:
            raise ValueError("the loss has no term with a positive weight; give e.g. loss.forces.weight=1")

    def set_weight(self, name: str, weight: float) -> None:
        """Change the weight of term ``name`` (e.g. the energy weight of a second stage); 0 switches it off."""
        if name not in self.term_names:
            raise ValueError(f"{name} is not a loss term; the terms are {', '.join(self.term_names)}")
        term = self.terms.get(name) or LossTerm.from_config(name, {"weight": weight})
        terms = {**self.terms, name: replace(term, weight=float(weight))}
        self.terms = {key: value for key, value in terms.items() if value.weight > 0}

    def uses(self, output: str) -> bool:
        """Whether the model output ``output`` (energy, forces, stress) enters the loss."""
        return any(term.quantity.output == output for term in self.terms.values())

    def sums_and_counts(self, pred: Mapping[str, torch.Tensor], batch) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """``(sums [T], counts [T], present)``: per term of :attr:`term_names` (always all of them, in that order,
        so that the shapes stay when a weight changes; 0 for a term that is off) the weighted sum of its errors
        and the number of labelled entries, and the terms on whose output the model returned."""
        labelled = labelled_outputs(pred, batch)
        zero = 0.0 * pred["energy"].sum()  # a batch without any labelled term still backpropagates
        sums, counts, present = [], [], []
        for name in self.term_names:
            term = self.terms.get(name)
            output = None if term is None else OUTPUTS[term.quantity.output]
            entry = None if term is None else labelled.get(output.name)
            if entry is None:
                if term is not None:
                    _check_unlabelled(term, output, batch)
                sums.append(zero)
                counts.append(torch.zeros((), dtype=zero.dtype, device=zero.device))
                continue
            predicted, reference, mask = quantity_rows(term.quantity, entry)
            errors = elementwise_loss(term.fn, predicted, reference, term.delta)
            total, count = masked_sum(errors, per_row(output, batch, batch.weight), mask)
            sums.append(total.to(zero.dtype) + zero)
            counts.append(count.to(zero.dtype))
            present.append(name)
        return torch.stack(sums), torch.stack(counts), present

    def combine(
        self, sums: torch.Tensor, counts: torch.Tensor, present=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, terms)`` from per-term sums and counts ``[T]`` (:meth:`sums_and_counts`): each term
        ``sum / max(count, 1)``, the total their weighted sum; ``terms`` holds the terms that are on and
        named in ``present`` (default: all that are on)."""
        values = sums / counts.clamp(min=1)
        names = list(self.term_names)
        weights = [self.terms[name].weight if name in self.terms else 0.0 for name in names]
        total = (torch.tensor(weights, dtype=values.dtype, device=values.device) * values).sum()
        keep = [name for name in names if name in self.terms and (present is None or name in present)]
        return total, {name: values[names.index(name)] for name in keep}

    def forward(
        self,
        pred: Mapping[str, torch.Tensor],
        batch,
        count_normaliser: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sums, counts, present = self.sums_and_counts(pred, batch)
        if count_normaliser is not None:
            counts = count_normaliser(counts)
        return self.combine(sums, counts, present)


class EpochLoss(Metric):
    """The loss of a whole epoch (``{stage}/loss``, ``{stage}/loss_{term}``): per term the sum of errors over
    all its batches divided by all their labelled entries, summed over processes (torchmetrics reduces
    the states), so it depends neither on how frames were batched nor on how many processes shared them.

    ``update(sums, counts)`` with :meth:`WeightedPropertyLoss.sums_and_counts`; ``compute()`` ->
    ``(total, {term: value})`` for the terms that had labelled entries.
    """

    full_state_update = False

    def __init__(self, loss: WeightedPropertyLoss):
        super().__init__()
        self.loss = loss
        size = len(loss.term_names)
        self.add_state("sums", default=torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        self.sums += sums.detach().to(self.sums)
        self.counts += counts.detach().to(self.counts)

    def compute(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        present = [name for name, count in zip(self.loss.term_names, self.counts.tolist()) if count > 0]
        return self.loss.combine(self.sums, self.counts, present)


def _check_unlabelled(term: LossTerm, output: Output, batch) -> None:
    """A term's output may be missing only from a batch where no frame carries its label."""
    labelled_frames = int(getattr(batch, output.mask).sum())
    if labelled_frames:
        hint = LABELS[output.label].model_hint or (
            "compute_forces=True, compute_stress=True, or return it as an extra output"
        )
        raise ConfigError(
            f"loss.{term.name} (weight {term.weight:g}) needs the model output {output.name!r}, but the model did not "
            f"return it for a batch in which {labelled_frames} frame(s) carry a {output.label} label; use a model "
            f"that computes it ({hint}) or set loss.{term.name}.weight=0"
        )
