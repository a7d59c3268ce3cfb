"""LightningModule that fits a :class:`~mpnn_ip.models.Potential` to energies, forces and stresses."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import lightning as L
import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau

from mpnn_ip.checkpoint import checkpoint_metadata
from mpnn_ip.train.losses import WeightedPropertyLoss
from mpnn_ip.train.metrics import PropertyMetrics

DEFAULT_LOSS = {
    "energy": {"weight": 1.0, "fn": "mse"},
    "forces": {"weight": 10.0, "fn": "mse"},
    "stress": {"weight": 0.0, "fn": "mse"},
}
STAGES = ("train", "val", "test")


class PotentialModule(L.LightningModule):
    """Training of a potential; the model is the attribute ``model`` (checkpoint keys ``model.<name>``).

    Args:
        model: the built potential (its ``dtype`` is the training dtype).
        loss: per-output loss terms ``{energy|forces|stress: {weight, fn, delta}}``
            (see :class:`~mpnn_ip.train.losses.WeightedPropertyLoss`).
        optimizer: ``partial`` of a ``torch.optim`` class, called with the model's parameters
            (from Hydra: ``_target_: torch.optim.Adam, _partial_: true, lr: ...``).
        scheduler: ``partial`` of a ``torch.optim.lr_scheduler`` class, called with the optimizer,
            or ``None``; stepped once per epoch (ReduceLROnPlateau watches ``scheduler_monitor``).
        scheduler_monitor: logged metric the plateau scheduler watches.
        statistics: training-split statistics (stored in the checkpoint metadata).

    A model ``fitted_in_closed_form`` (fitted by its ``prepare``, e.g. GAP) goes through the same
    flow without gradient steps: no optimizer, one epoch whose training steps do nothing, then
    validation and the checkpoint callbacks as for every model.

    Logged per epoch: ``{stage}/loss``, ``{stage}/loss_{output}`` and ``{stage}/{quantity}_{mae|rmse}``
    for quantities ``energy_per_atom`` (eV/atom), ``energy`` (eV), ``forces`` (eV/Å), ``stress``
    (eV/Å³), stages ``train``, ``val``, ``test``. Forces need gradients in validation and test,
    so the Trainer must run with ``inference_mode=False``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: Mapping[str, Mapping] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_monitor: str = "val/loss",
        statistics: Mapping | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss_fn = WeightedPropertyLoss(**{k: dict(v) for k, v in (loss or DEFAULT_LOSS).items() if v is not None})
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.statistics = dict(statistics or {})
        self.metrics = torch.nn.ModuleDict({f"{stage}_metrics": PropertyMetrics() for stage in STAGES})

    def forward(self, batch, compute_forces: bool = True, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        return self.model(batch, compute_forces=compute_forces, compute_stress=compute_stress)

    def _needs_stress(self, batch, stage: str) -> bool:
        """Stress costs a strain derivative: only when some frame has it and the loss (train) or metrics (val/test) use it."""
        if not bool(batch.has_stress.any()):
            return False
        return self.loss_fn.uses("stress") or stage != "train"

    def _step(self, batch, stage: str) -> torch.Tensor:
        compute_forces = bool(batch.has_forces.any()) or self.loss_fn.uses("forces")
        pred = self(batch, compute_forces=compute_forces, compute_stress=self._needs_stress(batch, stage))
        total, terms = self.loss_fn(pred, batch)
        self.metrics[f"{stage}_metrics"].update(pred, batch)
        batch_size = int(batch.num_graphs)
        on_step = stage == "train"
        self.log(f"{stage}/loss", total.detach(), on_step=on_step, on_epoch=True, batch_size=batch_size, prog_bar=True)
        for name, value in terms.items():
            self.log(f"{stage}/loss_{name}", value.detach(), on_step=False, on_epoch=True, batch_size=batch_size)
        return total

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if self.model.fitted_in_closed_form:
            return None
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        with torch.enable_grad():
            self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        with torch.enable_grad():
            self._step(batch, "test")

    def _log_epoch_metrics(self, stage: str) -> None:
        values = self.metrics[f"{stage}_metrics"].compute()
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "forces_rmse" and stage == "val")
        self.metrics[f"{stage}_metrics"].reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")
        if self.model.fitted_in_closed_form:
            self.trainer.should_stop = True

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_optimizers(self):
        if self.model.fitted_in_closed_form:
            return None
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.scheduler_monitor, "interval": "epoch", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mpnn_ip"] = checkpoint_metadata(self.model, self.statistics)
        # no hyper_parameters are saved (they would hold objects), so the file stays weights_only-loadable
        checkpoint.pop("hyper_parameters", None)
        # Lightning writes end-of-epoch checkpoints before the epoch's plateau-scheduler step and does
        # not redo that step on resume; keep the metric it needs (see on_train_start)
        monitored = self.trainer.callback_metrics.get(self.scheduler_monitor) if self._trainer is not None else None
        checkpoint["mpnn_ip_resume"] = {"plateau_metric": None if monitored is None else float(monitored)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_plateau_metric = checkpoint.get("mpnn_ip_resume", {}).get("plateau_metric")

    def on_train_start(self) -> None:
        """On resume, give ReduceLROnPlateau the step of the epoch the checkpoint was written in."""
        metric, self._pending_plateau_metric = getattr(self, "_pending_plateau_metric", None), None
        if metric is None:
            return
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, ReduceLROnPlateau) and scheduler.last_epoch < self.trainer.current_epoch:
                scheduler.step(metric)
