"""Second training stage (as MACE's ``--stage_two``): a higher energy weight and a new learning rate
for the last part of training, as a Lightning callback.

Configured as ``loss.stage_two: {start_fraction, energy_weight, lr}`` (``null`` = one stage); the
:class:`~mpnn_ip.train.PotentialModule` hands it to the trainer through ``configure_callbacks``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mpnn_ip.errors import ConfigError

log = logging.getLogger(__name__)


class StageTwo(L.Callback):
    """Raise the energy loss weight and set the learning rate once ``start_fraction`` of training is done.

    Args:
        start_fraction: in (0, 1): the switch comes at the first of epoch ``ceil(f * max_epochs)``,
            optimizer step ``ceil(f * max_steps)`` and ``f * max_time`` of training time, among the
            bounds the trainer has (at least one is needed: else a :class:`ConfigError`).
        energy_weight: the energy loss weight from then on (per atom, eV/atom; the other terms keep theirs).
        lr: the learning rate of every parameter group from then on.

    At the switch the plateau scheduler starts afresh (best value, patience and cooldown), since the
    monitored loss changes scale, and so does the choice of the best checkpoint (``best.ckpt`` is the
    best epoch of stage two; ``last.ckpt`` is kept). ``train/stage`` (1 or 2) is logged per epoch.
    The switch is stored in checkpoints: a resumed run continues in the stage it was in (the
    learning rate comes back with the optimizer's state).
    """

    def __init__(self, start_fraction: float = 0.8, energy_weight: float = 100.0, lr: float = 1e-3):
        super().__init__()
        if None in (start_fraction, energy_weight, lr):
            raise ConfigError("loss.stage_two needs start_fraction, energy_weight and lr (or loss.stage_two=null)")
        if not 0.0 < float(start_fraction) < 1.0:
            raise ConfigError(
                f"loss.stage_two.start_fraction must be between 0 and 1 (exclusive), got {start_fraction}"
            )
        if float(energy_weight) < 0 or float(lr) <= 0:
            raise ConfigError(f"loss.stage_two needs energy_weight >= 0 and lr > 0, got {energy_weight} and {lr}")
        self.start_fraction = float(start_fraction)
        self.energy_weight = float(energy_weight)
        self.lr = float(lr)
        #: (epoch, global step) of the switch, None before it
        self.switched_at: tuple[int, int] | None = None
        self._start_epoch: int | None = None
        self._start_step: int | None = None
        self._start_seconds: float | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        max_steps = trainer.max_steps if trainer.max_steps is not None and trainer.max_steps > 0 else None
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        duration = timer._duration if timer is not None else None
        if max_epochs is None and max_steps is None and duration is None:
            raise ConfigError(
                "loss.stage_two starts after a fraction of training, but training has no bound: set "
                "trainer.max_epochs, trainer.max_steps or trainer.max_time, or loss.stage_two=null"
            )
        self._start_epoch = math.ceil(self.start_fraction * max_epochs) if max_epochs is not None else None
        self._start_step = math.ceil(self.start_fraction * max_steps) if max_steps is not None else None
        self._start_seconds = self.start_fraction * duration if duration is not None else None
        self._timer = timer

    def _due(self, trainer) -> bool:
        if self._start_epoch is not None and trainer.current_epoch >= self._start_epoch:
            return True
        if self._start_step is not None and trainer.global_step >= self._start_step:
            return True
        return self._start_seconds is not None and self._timer.time_elapsed("train") >= self._start_seconds

    def on_train_start(self, trainer, pl_module) -> None:
        if self.switched_at is not None:  # resumed in stage two: the optimizer state already has the lr
            pl_module.loss_fn.set_weight("energy", self.energy_weight)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.switched_at is None and self._due(trainer):
            self.switch(trainer, pl_module)

    def switch(self, trainer, pl_module) -> None:
        """Enter stage two now: energy weight, learning rate, fresh plateau scheduler and best checkpoint."""
        self.switched_at = (int(trainer.current_epoch), int(trainer.global_step))
        pl_module.loss_fn.set_weight("energy", self.energy_weight)
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self.lr
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, ReduceLROnPlateau):
                config.scheduler._reset()
                config.scheduler._last_lr = [group["lr"] for group in config.scheduler.optimizer.param_groups]
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.monitor is not None:
                # the kept best files count as the worst possible: stage two's first epoch replaces them
                worst = callback.kth_value.new_tensor(float("inf") if callback.mode == "min" else -float("inf"))
                callback.best_k_models = {path: worst.clone() for path in callback.best_k_models}
                if callback.best_k_models:
                    callback.best_model_score = worst.clone()
                callback.kth_value = worst.clone()
        log.info(
            "stage two from epoch %d (step %d): energy weight %g, learning rate %g",
            *self.switched_at,
            self.energy_weight,
            self.lr,
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log("train/stage", 1.0 if self.switched_at is None else 2.0)

    def state_dict(self) -> dict[str, Any]:
        return {"switched_at": None if self.switched_at is None else list(self.switched_at)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        switched = state_dict.get("switched_at")
        self.switched_at = None if switched is None else (int(switched[0]), int(switched[1]))
