"""LightningModule that fits a :class:`~mpnn_ip.models.Potential` to energies, forces and stresses."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mpnn_ip.checkpoint import checkpoint_metadata, plain
from mpnn_ip.errors import ConfigError, DataError, TrainingDiverged
from mpnn_ip.models.compiled import CompileDecision, compile_potential, normalize_mode
from mpnn_ip.train.bad_steps import (
    MAX_FRAMES_NAMED,
    diverged_message,
    frame_names,
    name_frames,
    refuse_non_finite_weights,
)
from mpnn_ip.train.losses import EpochLoss, WeightedPropertyLoss, default_loss
from mpnn_ip.train.metrics import PropertyMetrics
from mpnn_ip.train.shift_refit import ShiftRefit, refits_shift
from mpnn_ip.train.stage_two import StageTwo

#: One term per label, weighted as its row of mpnn_ip.outputs.FITTED_LABELS says: energy 1, forces 10, stress 0,
#: dipole 0.
DEFAULT_LOSS = default_loss()
STAGES = ("train", "val", "test", "val_replay")

log = logging.getLogger(__name__)
# a skipped step returns None from training_step on purpose; Lightning's generic warning about it is noise
warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")
# epoch values come from torchmetrics states that are already reduced over processes
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


class PotentialModule(L.LightningModule):
    """Training of a potential; the model is the attribute ``model`` (checkpoint keys ``model.<name>``).

    Args:
        model: the built potential (its ``dtype`` is the training dtype).
        loss: per-output loss terms ``{energy|forces|stress: {weight, fn, delta}}``
            (see :class:`~mpnn_ip.train.losses.WeightedPropertyLoss`), and optionally
            ``stage_two: {start_fraction, energy_weight, lr}`` (``None`` = off): a second stage
            (:class:`~mpnn_ip.train.stage_two.StageTwo`, added to the trainer by ``configure_callbacks``).
        optimizer: ``partial`` of a ``torch.optim`` class, called with the model's parameters
            (from Hydra: ``_target_: torch.optim.Adam, _partial_: true, lr: ...``).
        scheduler: ``partial`` of a ``torch.optim.lr_scheduler`` class, called with the optimizer,
            or ``None``; stepped once per epoch (ReduceLROnPlateau watches ``scheduler_monitor``).
        scheduler_monitor: logged metric the plateau scheduler watches.
        statistics: training-split statistics (stored in the checkpoint metadata).
        max_bad_steps: stop after this many consecutive optimizer steps with a non-finite loss or
            gradient (0 = never stop; such steps are still skipped).
        compile: ``"auto"``, ``True`` or ``False`` (default): ``torch.compile`` of the model, decided
            on the first training batch by :func:`~mpnn_ip.models.compiled.compile_potential`
            (kept only if the training step, double backward included, equals eager and is faster;
            otherwise eager, with the reason printed; ``auto`` tries on CUDA only: on the CPU AOTAutograd
            refuses the double backward). The outcome is
            ``compile_decision``.
        refit_energy_shift: refit a fixed per-species energy shift (MACE's) by least squares of the energy
            residuals of the training frames before each validation (:class:`~mpnn_ip.train.shift_refit.ShiftRefit`);
            no effect on models that train their shift.

    Diverging training: a training step whose loss or any gradient is NaN/inf does not change the
    weights (no optimizer step, the optimizer's moments are untouched, EMA skips it); a WARNING
    names the frames of the batch (``file:frame``). A good step resets the count; after
    ``max_bad_steps`` bad steps in a row :class:`~mpnn_ip.errors.TrainingDiverged` stops the run,
    naming the frames and the last good checkpoint (none is written on the way out, and a
    checkpoint with non-finite weights is never written). ``train/skipped_steps`` is logged per epoch.

    A model ``fitted_in_closed_form`` (fitted by its ``prepare``, e.g. GAP) goes through the same
    flow without gradient steps: no optimizer, one epoch whose training steps do nothing, then
    validation and the checkpoint callbacks as for every model.

    Logged per epoch: ``{stage}/loss``, ``{stage}/loss_{output}`` and ``{stage}/{quantity}_{mae|rmse}``
    for quantities ``energy_per_atom`` (eV/atom), ``energy`` (eV), ``forces`` (eV/Å), ``stress``
    (eV/Å³), stages ``train``, ``val``, ``test``, and ``val_replay`` when the datamodule gives a second
    validation loader (the replayed frames of multi-head fine-tuning, evaluated with their own head); per
    step ``train/loss_step``. Forces need gradients
    in validation and test, so the Trainer must run with ``inference_mode=False``.

    Data-parallel (DDP): each training step divides the error sums of every process by the labelled
    entries of the whole global batch (one all-reduce), so ``W`` processes sharing a batch take exactly
    the optimizer step of one process holding all of it, whatever the atom counts of their frames. The
    epoch values (loss: :class:`~mpnn_ip.train.losses.EpochLoss`; MAE/RMSE) are sums over all frames of
    all processes, identical on every process. The processes must hold the same statistics (they read
    the same files); at the start of fit they are compared with rank 0's (``DataError`` if not).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: Mapping[str, Mapping] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_monitor: str = "val/loss",
        statistics: Mapping | None = None,
        max_bad_steps: int = 5,
        compile: bool | str = False,
        refit_energy_shift: bool = True,
    ):
        super().__init__()
        self.compile_mode = normalize_mode(compile)
        #: the :class:`~mpnn_ip.models.compiled.CompileDecision` taken at the first training step
        self.compile_decision: CompileDecision | None = None
        if int(max_bad_steps) < 0:
            raise ValueError(f"max_bad_steps must be >= 0 (0 = never stop), got {max_bad_steps}")
        self.model = model
        terms = {k: dict(v) for k, v in (loss or DEFAULT_LOSS).items() if v is not None}
        stage_two = terms.pop("stage_two", None)
        unknown = sorted(set(stage_two or ()) - {"start_fraction", "energy_weight", "lr"})
        if unknown:
            raise ConfigError(
                f"loss.stage_two: unknown setting(s) {unknown}; allowed: start_fraction, energy_weight, lr"
            )
        self.stage_two = StageTwo(**stage_two) if stage_two is not None else None
        self.loss_fn = WeightedPropertyLoss(**terms)
        #: the least-squares refit of a fixed energy shift, or None
        self.shift_refit = ShiftRefit(model) if refit_energy_shift and refits_shift(model) else None
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.statistics = dict(statistics or {})
        self.metrics = torch.nn.ModuleDict({f"{stage}_metrics": PropertyMetrics() for stage in STAGES})
        self.epoch_losses = torch.nn.ModuleDict({f"{stage}_loss": EpochLoss(self.loss_fn) for stage in STAGES})
        self.max_bad_steps = int(max_bad_steps)
        #: consecutive skipped optimizer steps, and (step, epoch, reason, frames) of each
        self.bad_steps = 0
        self._bad_history: list[tuple[int, int, str, list[str]]] = []
        #: whether the latest optimizer step was skipped (read by the EMA callback)
        self.last_step_skipped = False
        self._skipped_in_epoch = 0
        self._validated_replay = False  # whether this validation epoch saw the replayed frames' loader
        self._reset_pending()

    def _reset_pending(self) -> None:
        """What the training steps since the last optimizer step saw: their frames and any non-finite loss."""
        self._pending_sources: list[tuple[int, Any, Any, int]] = []
        self._pending_nonfinite_loss: str | None = None

    def forward(self, batch, compute_forces: bool = True, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        return self.model(batch, compute_forces=compute_forces, compute_stress=compute_stress)

    def _needs_stress(self, batch, stage: str) -> bool:
        """Stress costs a strain derivative: only when some frame has it and the loss (train) or metrics (val/test) use it."""
        if not bool(batch.has_stress.any()):
            return False
        return self.loss_fn.uses("stress") or stage != "train"

    def _step(self, batch, stage: str) -> torch.Tensor | None:
        compute_forces = bool(batch.has_forces.any()) or self.loss_fn.uses("forces")
        pred = self(batch, compute_forces=compute_forces, compute_stress=self._needs_stress(batch, stage))
        sums, counts, present = self.loss_fn.sums_and_counts(pred, batch)
        if stage == "train":
            global_sums, global_counts = self._summed_over_processes(sums.detach(), counts)
            # DDP averages the gradients of the processes: dividing by global count / processes makes that
            # average the gradient of the global batch's loss
            processes = 1 if self._trainer is None else self.trainer.world_size
            total, terms = self.loss_fn.combine(sums, global_counts / processes, present)
        else:
            total, terms = self.loss_fn.combine(sums, counts, present)
        if stage == "train" and not bool(torch.isfinite(total.detach())):
            bad = [name for name, value in terms.items() if not bool(torch.isfinite(value.detach()))]
            self._pending_nonfinite_loss = (
                f"non-finite loss ({float(total.detach())}{' in ' + ', '.join(bad) if bad else ''})"
            )
            return None  # neither logged nor in the epoch metrics
        self.metrics[f"{stage}_metrics"].update(pred, batch)
        self.epoch_losses[f"{stage}_loss"].update(sums, counts)
        if stage == "train":
            step_loss, _ = self.loss_fn.combine(global_sums, global_counts)  # the global batch's loss, on every process
            self.log(
                "train/loss_step",
                step_loss,
                on_step=True,
                on_epoch=False,
                batch_size=int(batch.num_graphs),
                prog_bar=True,
            )
        return total

    def _summed_over_processes(self, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sums, counts)`` summed over the DDP processes (one all-reduce); unchanged in one process."""
        if self._trainer is None or self.trainer.world_size == 1:
            return sums, counts
        both = self.trainer.strategy.reduce(torch.cat([sums, counts]).clone(), reduce_op="sum")
        return both[: len(sums)], both[len(sums) :]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if self.model.fitted_in_closed_form:
            return None
        if self.compile_decision is None:
            self._decide_compile(batch)
        source = (
            batch_idx,
            getattr(batch, "source_path", None),
            getattr(batch, "source_frame", None),
            int(batch.num_graphs),
        )
        self._pending_sources.append(source)
        loss = self._step(batch, "train")
        if loss is None and self.trainer.world_size > 1:
            # every process must take part in the gradient all-reduce: zero gradients here, and the step
            # is skipped on all processes in on_before_optimizer_step
            loss = sum(0.0 * p.sum() for p in self.model.parameters() if p.requires_grad)
        return loss  # None: Lightning skips backward; the optimizer sees no gradient (skipped below)

    def _decide_compile(self, batch) -> None:
        """Compile the model if its training step pays on this batch (see ``compile`` above); say the outcome."""
        self.compile_decision = compile_potential(
            self.model, batch, self.compile_mode, training=True, compute_stress=self._needs_stress(batch, "train")
        )
        if self.compile_mode != "false" and (self._trainer is None or self.trainer.is_global_zero):
            print(self.compile_decision, flush=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Skip the step (no gradient reaches the optimizer) when a loss or gradient since the last step was
        non-finite; count consecutive skipped steps and stop the run after ``max_bad_steps`` of them."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        reason = self._pending_nonfinite_loss
        # with a loss scaler (precision=16-mixed) inf gradients are its overflow signal: it skips those steps itself
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        if reason is None and grads and not scaled:
            finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
            if not bool(finite):
                reason = "non-finite gradient"
        bad = reason is not None
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
            if bad and reason is None:
                reason = "non-finite loss or gradient in another process"
        sources, self._pending_sources = self._pending_sources, []
        self._pending_nonfinite_loss = None
        if not bad:
            self.last_step_skipped = not grads
            if grads:
                self.bad_steps, self._bad_history = 0, []
            return
        optimizer.zero_grad(set_to_none=True)  # the optimizer skips parameters without a gradient
        self.last_step_skipped = True
        self._record_bad_step(reason, sources)

    def _record_bad_step(self, reason: str, sources: list) -> None:
        frames = [
            frame
            for batch_idx, paths, indices, count in sources
            for frame in frame_names(batch_idx, paths, indices, count)
        ]
        step, epoch = int(self.trainer.global_step), int(self.trainer.current_epoch)
        self.bad_steps += 1
        self._skipped_in_epoch += 1
        self._bad_history = [*self._bad_history, (step, epoch, reason, frames)][
            -(self.max_bad_steps or MAX_FRAMES_NAMED) :
        ]
        limit = f" (the run stops at {self.max_bad_steps})" if self.max_bad_steps else ""
        log.warning(
            "%s at step %d (epoch %d): skipped the optimizer step; frames %s; %d consecutive bad step(s)%s",
            reason,
            step,
            epoch,
            name_frames(frames),
            self.bad_steps,
            limit,
        )
        if self.max_bad_steps and self.bad_steps >= self.max_bad_steps:
            raise TrainingDiverged(self._diverged_message())

    def _checkpoint_paths(self) -> list[str]:
        """Checkpoints written so far that still exist: ``last`` ones first, then ``best`` ones."""
        callbacks = getattr(self._trainer, "checkpoint_callbacks", None) or []
        candidates = [getattr(c, "last_model_path", "") for c in callbacks] + [
            getattr(c, "best_model_path", "") for c in callbacks
        ]
        return list(dict.fromkeys(path for path in candidates if path and Path(path).is_file()))

    def _diverged_message(self) -> str:
        return diverged_message(self._bad_history, self.bad_steps, self.max_bad_steps, self._checkpoint_paths())

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            reference = self.trainer.strategy.broadcast(plain(self.statistics), src=0)
            if reference != plain(self.statistics):
                raise DataError(
                    f"process {self.trainer.global_rank} computed other training statistics than process 0 "
                    f"({plain(self.statistics)} vs {reference}): the processes did not read the same training data. "
                    "Give every node the same files (a shared file system, or copies of identical content)."
                )

    def on_train_start(self) -> None:
        self._reset_pending()
        self._resume_plateau_scheduler()

    def on_train_epoch_start(self) -> None:
        self._skipped_in_epoch = 0

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        with torch.enable_grad():
            self._step(batch, "val" if dataloader_idx == 0 else "val_replay")
        self._validated_replay = self._validated_replay or dataloader_idx > 0

    def test_step(self, batch, batch_idx: int) -> None:
        with torch.enable_grad():
            self._step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> None:
        # compute() reduces over processes (a collective): called on every process, logged when labelled
        total, terms = self.epoch_losses[f"{stage}_loss"].compute()
        self.epoch_losses[f"{stage}_loss"].reset()
        if terms:
            self.log(f"{stage}/loss", total, prog_bar=True)
            for name, value in terms.items():
                self.log(f"{stage}/loss_{name}", value)
        values = self.metrics[f"{stage}_metrics"].compute()
        for name, value in values.items():
            # torchmetrics already reduced these over processes: identical on every rank
            self.log(f"{stage}/{name}", value, prog_bar=name == "forces_rmse" and stage == "val")
        self.metrics[f"{stage}_metrics"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")
        if self.model.fitted_in_closed_form:
            self.trainer.should_stop = True
        else:
            self.log("train/skipped_steps", float(self._skipped_in_epoch))

    def on_validation_epoch_start(self) -> None:
        self._validated_replay = False

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        if self._validated_replay:
            self._log_epoch_metrics("val_replay")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_callbacks(self) -> list:
        return [callback for callback in (self.stage_two, self.shift_refit) if callback is not None]

    def configure_optimizers(self):
        if self.model.fitted_in_closed_form:
            return None
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "monitor": self.scheduler_monitor,
                "interval": "epoch",
                "frequency": 1,
            },
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        refuse_non_finite_weights(checkpoint, self.model, self._checkpoint_paths() if self._trainer is not None else [])
        checkpoint["mpnn_ip"] = checkpoint_metadata(self.model, self.statistics)
        # no hyper_parameters are saved (they would hold objects), so the file stays weights_only-loadable
        checkpoint.pop("hyper_parameters", None)
        # Lightning writes end-of-epoch checkpoints before the epoch's plateau-scheduler step and does
        # not redo that step on resume; keep the metric it needs (see on_train_start)
        monitored = self.trainer.callback_metrics.get(self.scheduler_monitor) if self._trainer is not None else None
        checkpoint["mpnn_ip_resume"] = {"plateau_metric": None if monitored is None else float(monitored)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_plateau_metric = checkpoint.get("mpnn_ip_resume", {}).get("plateau_metric")

    def _resume_plateau_scheduler(self) -> None:
        """On resume, give ReduceLROnPlateau the step of the epoch the checkpoint was written in."""
        metric, self._pending_plateau_metric = getattr(self, "_pending_plateau_metric", None), None
        if metric is None:
            return
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, ReduceLROnPlateau) and scheduler.last_epoch < self.trainer.current_epoch:
                scheduler.step(metric)
