"""E0 of a pretrained model re-fitted on new data (fine-tuning's ``finetune.refit_e0``).

:func:`refit_energy_references` sets the per-species reference energies (and the shifts) so that the
pretrained model's energies fit the new training frames by least squares, or to given isolated-atom
energies; :func:`finetuned_statistics` is what the fine-tuned model's checkpoints store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mpnn_ip.checkpoint import registry_name
from mpnn_ip.models import Potential, build_model
from mpnn_ip.nn import PerSpeciesScaleShift
from mpnn_ip.nn.heads import MultiHeadScaleShift

log = logging.getLogger(__name__)


@torch.no_grad()
def predicted_energies(model: Potential, graphs: Sequence, batch_size: int = 16, device: str = "cpu") -> np.ndarray:
    """[n_frames] energies (eV) the model predicts for ``graphs`` (no forces)."""
    from mpnn_ip.data.atomic_graph import collate

    was_training, original = model.training, next(model.parameters()).device
    model.eval().to(device)
    energies = []
    try:
        for start in range(0, len(graphs), batch_size):
            batch = collate(list(graphs[start : start + batch_size])).to(device)
            energies.append(model(batch, compute_forces=False)["energy"].double().cpu())
    finally:
        model.train(was_training).to(original)
    return torch.cat(energies).numpy()


def refit_energy_references(
    model: Potential,
    graphs: Sequence,
    isolated_atom_energies: Mapping[int, float] | None = None,
    device: str = "cpu",
) -> tuple[Potential, str]:
    """The model with E0 (and per-species energy shifts) re-fitted on the new training frames ``graphs``, and
    how they were found. Species absent from the new frames keep theirs; frames without energy are not used.

    Without ``isolated_atom_energies``: E0 += the least-squares fit, on the per-species atom counts, of the new
    energies minus the pretrained model's predictions, i.e. the per-species constant by which the new
    reference (another DFT code or functional) differs, the network's own part kept (a plain least-squares
    fit of the new energies would move energy between E0 and the network whenever the pretraining E0 came
    from isolated atoms).

    With ``isolated_atom_energies`` (``data.isolated_atoms``): E0 = those, so an isolated atom gets its new
    energy, and the same least-squares correction goes into the per-species shift of the model's
    :class:`~mpnn_ip.nn.PerSpeciesScaleShift` (the energy per atom of atoms with neighbours); a model
    without one gets it in E0 (with a warning).
    """
    old = model.head_e0s(0)
    if isolated_atom_energies is not None:
        model = with_e0s(
            model, {**old, **{int(z): float(e) for z, e in isolated_atom_energies.items() if int(z) in old}}
        )
    correction = residual_correction(model, graphs, device)
    if not correction:
        source = "isolated_atoms" if isolated_atom_energies is not None else "pretrained"
        return model, f"{source} (the new training frames have no energies)"
    e0s = model.head_e0s(0)
    if isolated_atom_energies is None:
        return with_e0s(
            model, {z: e0s[z] + correction.get(z, 0.0) for z in e0s}
        ), "least_squares_of_pretrained_residual"
    shifts = [
        m
        for m in model.modules()
        if isinstance(m, (PerSpeciesScaleShift, MultiHeadScaleShift)) and m.shift.shape[-1] == len(model.species)
    ]
    if len(shifts) != 1:
        log.warning(
            "%s has no single per-species energy shift; the least-squares correction of the new energies goes into E0 "
            "instead, so isolated atoms do not get exactly data.isolated_atoms",
            type(model).__name__,
        )
        return with_e0s(
            model, {z: e0s[z] + correction.get(z, 0.0) for z in e0s}
        ), "isolated_atoms + least_squares_of_pretrained_residual"
    with torch.no_grad():
        shift = shifts[0].shift if shifts[0].shift.dim() == 1 else shifts[0].shift[0]  # the default head's
        shift += torch.tensor([correction.get(z, 0.0) for z in model.species], dtype=shift.dtype, device=shift.device)
    return model, "isolated_atoms (shifts: least_squares_of_pretrained_residual)"


def residual_correction(model: Potential, graphs: Sequence, device: str = "cpu") -> dict[int, float]:
    """``{Z: eV}``: least squares of (reference - predicted energy) on the per-species atom counts, over the frames
    of ``graphs`` with an energy, for the species present in them (minimum norm when the compositions cannot
    tell species apart); empty when no frame has an energy."""
    labelled = [g for g in graphs if bool(g.has_energy.item())]
    if not labelled:
        return {}
    present = sorted({int(z) for g in labelled for z in g.atomic_numbers.tolist()})
    counts = np.array([[int((g.atomic_numbers == z).sum()) for z in present] for g in labelled], dtype=np.float64)
    reference = np.array([float(g.energy.item()) for g in labelled])
    residual = reference - predicted_energies(model, labelled, device=device)
    solution, *_ = np.linalg.lstsq(counts, residual, rcond=None)
    return {z: float(c) for z, c in zip(present, solution)}


def with_e0s(model: Potential, e0s: Mapping[int, float]) -> Potential:
    """A copy of ``model`` whose E0 (buffer and recorded constructor argument) are ``e0s``, same weights; of a
    model with several heads, only the default head's (the first) change."""
    given = dict(e0s)
    if model.num_heads > 1:
        rows = [given] + [model.head_e0s(h) for h in range(1, model.num_heads)]
        given = dict(zip(model.heads, rows))
    rebuilt = build_model(registry_name(model), **{**model.config, "e0s": given}).to(model.dtype)
    state = model.state_dict()
    state["e0"] = rebuilt.e0.detach().clone()
    rebuilt.load_state_dict(state, strict=True)
    return rebuilt


def finetuned_statistics(data_statistics: Mapping, model: Potential, e0s_source: str, path) -> dict[str, Any]:
    """The statistics a fine-tuning run stores: the new training split's, except those that are constructor
    arguments of the model (``species``, ``avg_num_neighbors``, ``r_max``: fixed when the pretrained network
    was built) which keep the model's values, and ``e0s``, the model's re-fitted (or kept) E0."""
    config = model.config
    statistics = dict(data_statistics)
    for name in statistics:
        if name in config and name != "e0s":
            statistics[name] = config[name]
    statistics["e0s"] = model.head_e0s(0)
    statistics["e0s_source"] = e0s_source
    statistics["finetuned_from"] = str(path)
    return statistics
