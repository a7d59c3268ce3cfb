"""Least-squares refit of a fixed per-species energy shift from the energy residuals of training frames.

MACE's shift is a fixed buffer (as in mace-torch's ``ScaleShiftBlock``). With a force-weighted loss the
network learns the forces long before it learns the constant part of the energy, so the energies kept a
constant offset after training (per-frame MAE ≈ RMSE). :class:`ShiftRefit` removes it: before each
validation (else at the end of each training epoch) the model evaluates the energies of up to
``max_frames`` training frames (energies only, no gradients: a fraction of a training epoch's cost), and the
minimum-norm least-squares solution δ of ``counts · δ = E_ref - E_pred`` (counts: atoms of each species in a
frame; one system per head; a pseudo-inverse, since frames of one composition determine only its sum) is
added to the shift. The residuals are those of the network as it is then, not the ones the training steps
saw during the epoch: the network's constant part drifts while it learns the forces, and an epoch-old
estimate left a bias of half an epoch's drift (docs/performance.md). Models whose shift the optimizer
trains (NequIP, SchNet, BPNN) are left alone.

Atoms without neighbours get no shift (the neighbour gate) but are counted: frames of lone atoms, which
the E0 describes, should not be in the training data (``mpnn-check-data`` names them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import lightning as L
import torch

log = logging.getLogger(__name__)


def refits_shift(model: torch.nn.Module) -> bool:
    """Whether ``model`` has an energy head whose shift is fixed (a buffer), which :class:`ShiftRefit` refits."""
    return hasattr(model, "add_to_shift") and not model.shift_is_trained


def species_counts(species: torch.Tensor, batch: torch.Tensor, num_frames: int, num_species: int) -> torch.Tensor:
    """``[B, S]`` float64: atoms of each species (indices ``species [N]``) in each frame (``batch [N]``)."""
    counts = torch.zeros(num_frames, num_species, dtype=torch.float64, device=species.device)
    return counts.index_put_((batch, species), torch.ones_like(species, dtype=torch.float64), accumulate=True)


class ShiftRefit(L.Callback):
    """Refits the fixed shift of ``model`` (see the module docstring).

    :meth:`observe` adds a batch's residuals, :meth:`refit` solves and updates the shift (collective under
    DDP: the sums of all processes are solved alike on each); the Lightning hooks run :meth:`refit_on_training_frames`.

    Args:
        model: a potential for which :func:`refits_shift` holds.
        max_frames: training frames (per process) evaluated for each refit.
    """

    def __init__(self, model: torch.nn.Module, max_frames: int = 1000):
        super().__init__()
        self.model, self.max_frames = model, int(max_frames)
        self._refitted_in_epoch = False
        self.num_heads, self.num_species = len(model.heads), len(model.species)
        self._reset()

    def _reset(self) -> None:
        shape = (self.num_heads, self.num_species)
        self.gram = torch.zeros(*shape, self.num_species, dtype=torch.float64)  # Σ c cᵀ per head
        self.moment = torch.zeros(shape, dtype=torch.float64)  # Σ c r per head
        self.frames = 0

    @torch.no_grad()
    def observe(self, pred: Mapping[str, torch.Tensor], batch) -> None:
        """Add the energy-labelled frames of a training ``batch`` with predictions ``pred["energy"] [B]`` (eV)."""
        labelled = batch.has_energy.reshape(-1)
        if "energy" not in pred or not bool(labelled.any()):
            return
        num_frames = int(batch.num_graphs)
        species = self.model.species_index(batch.atomic_numbers)
        counts = species_counts(species, batch.batch, num_frames, self.num_species)[labelled]
        residual = (batch.energy.reshape(-1).to(torch.float64) - pred["energy"].detach().to(torch.float64))[labelled]
        head = getattr(batch, "head", None)
        head = torch.zeros(num_frames, dtype=torch.long) if head is None else head.reshape(-1).long().cpu()
        head = head[labelled.cpu()]
        counts, residual = counts.cpu(), residual.cpu()
        self.gram.index_add_(0, head, counts.unsqueeze(2) * counts.unsqueeze(1))
        self.moment.index_add_(0, head, counts * residual.unsqueeze(1))
        self.frames += int(labelled.sum())

    @torch.no_grad()
    def refit(self, trainer: L.Trainer | None = None) -> torch.Tensor | None:
        """Solve and add δ ``[H, S]`` (eV) to the shift; returns δ, or None when no frame was observed."""
        gram, moment, frames = self.gram, self.moment, torch.tensor([float(self.frames)], dtype=torch.float64)
        if trainer is not None and trainer.world_size > 1:
            flat = torch.cat([gram.reshape(-1), moment.reshape(-1), frames]).to(trainer.strategy.root_device)
            flat = trainer.strategy.reduce(flat, reduce_op="sum").cpu()
            gram = flat[: gram.numel()].reshape(gram.shape)
            moment = flat[gram.numel() : gram.numel() + moment.numel()].reshape(moment.shape)
            frames = flat[-1:]
        self._reset()
        if float(frames) == 0:
            return None
        delta = (torch.linalg.pinv(gram, hermitian=True) @ moment.unsqueeze(-1)).squeeze(-1)  # [H, S]
        self.model.add_to_shift(delta if self.num_heads > 1 else delta[0])
        log.debug("energy shift refitted on %d frames: %s eV", int(frames), delta.tolist())
        return delta

    @torch.no_grad()
    def refit_on_training_frames(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor | None:
        """Evaluate up to ``max_frames`` frames of a fresh training loader with the model as it is now, then
        :meth:`refit`."""
        datamodule = getattr(trainer, "datamodule", None)
        loader = datamodule.train_dataloader() if datamodule is not None else trainer.train_dataloader
        self._reset()
        frames = 0
        for batch in loader if loader is not None else ():
            batch = batch.to(pl_module.device)
            self.observe(self.model(batch, compute_forces=False), batch)
            frames += int(batch.num_graphs)
            if frames >= self.max_frames:
                break
        self._refitted_in_epoch = True
        return self.refit(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._refitted_in_epoch = False

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.refit_on_training_frames(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._refitted_in_epoch:  # an epoch without validation
            self.refit_on_training_frames(trainer, pl_module)
