"""Exponential moving average (EMA) of the model weights, as a Lightning callback.

After every optimizer step ``ema <- decay * ema + (1 - decay) * weights`` (with NequIP/TF's
warm-up ``decay_t = min(decay, (1 + t) / (10 + t))`` when ``use_num_updates``). The EMA weights are
what validation and test see, what checkpoints store in ``state_dict`` (the weights inference
uses) and what the model holds after ``fit``; the raw weights drive the optimizer. The callback's
own state (EMA weights, raw weights, number of updates) goes into ``ckpt["callbacks"]`` so a
resumed run continues exactly. A step the module skipped (``pl_module.last_step_skipped``: a
non-finite loss or gradient) is not averaged in and does not count as an update.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn


class ExponentialMovingAverage(L.Callback):
    """EMA of ``pl_module.model``'s floating-point parameters.

    Args:
        decay: EMA decay per optimizer step (0.99 averages over ~100 steps; 0 disables averaging:
            the EMA equals the current weights).
        use_num_updates: ramp the decay up as ``min(decay, (1 + t) / (10 + t))`` over the first
            steps ``t``, so early EMA weights are not dominated by the random initialisation.
    """

    def __init__(self, decay: float = 0.99, use_num_updates: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.use_num_updates = bool(use_num_updates)
        self.num_updates = 0
        self.ema: dict[str, torch.Tensor] | None = None
        self._raw_backup: dict[str, torch.Tensor] | None = None
        self._pending_raw: dict[str, torch.Tensor] | None = None
        self._last_step = -1

    @staticmethod
    def _parameters(pl_module) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in pl_module.model.named_parameters() if p.dtype.is_floating_point}

    def _copy_into_model(self, pl_module, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self._parameters(pl_module).items():
                p.copy_(weights[name])

    def _current_raw(self, pl_module) -> dict[str, torch.Tensor]:
        if self._raw_backup is not None:
            return self._raw_backup
        return {name: p.detach().clone() for name, p in self._parameters(pl_module).items()}

    def on_fit_start(self, trainer, pl_module) -> None:
        if self._pending_raw is not None:
            # resumed: the module was loaded with the EMA weights of state_dict; training continues from the raw ones
            self._copy_into_model(pl_module, self._pending_raw)
            self._pending_raw = None
        params = self._parameters(pl_module)
        if self.ema is None:
            self.ema = {name: p.detach().clone() for name, p in params.items()}
        else:
            self.ema = {name: self.ema[name].to(device=p.device, dtype=p.dtype) for name, p in params.items()}
        self._last_step = trainer.global_step

    def current_decay(self) -> float:
        if self.use_num_updates:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:  # gradient accumulation: no optimizer step yet
            return
        self._last_step = trainer.global_step
        if getattr(pl_module, "last_step_skipped", False):  # a non-finite loss/gradient: the weights did not move
            return
        self.num_updates += 1
        weight = 1.0 - self.current_decay()
        with torch.no_grad():
            for name, p in self._parameters(pl_module).items():
                self.ema[name].lerp_(p.detach(), weight)

    def _swap_in_ema(self, trainer, pl_module) -> None:
        if trainer.state.fn != TrainerFn.FITTING or self.ema is None or self._raw_backup is not None:
            return
        self._raw_backup = self._current_raw(pl_module)
        self._copy_into_model(pl_module, self.ema)

    def _restore_raw(self, pl_module) -> None:
        if self._raw_backup is not None:
            self._copy_into_model(pl_module, self._raw_backup)
            self._raw_backup = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._swap_in_ema(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._restore_raw(pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        """The trained model is the EMA model (for test, export and anything after ``fit``)."""
        self._restore_raw(pl_module)
        if self.ema is not None:
            self._copy_into_model(pl_module, self.ema)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """``checkpoint["state_dict"]`` holds the EMA weights (what inference loads)."""
        if self.ema is None:
            return
        for name, value in self.ema.items():
            checkpoint["state_dict"][f"model.{name}"] = value.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "use_num_updates": self.use_num_updates,
            "num_updates": self.num_updates,
            "ema": None if self.ema is None else {k: v.detach().clone() for k, v in self.ema.items()},
            "raw": self._raw_snapshot,
        }

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._pl_module = pl_module

    @property
    def _raw_snapshot(self) -> dict[str, torch.Tensor] | None:
        module = getattr(self, "_pl_module", None)
        return None if module is None else self._current_raw(module)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict["num_updates"])
        self.ema = state_dict["ema"]
        self._pending_raw = state_dict.get("raw")
