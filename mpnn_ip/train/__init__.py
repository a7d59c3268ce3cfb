"""Training: LightningModule, per-output losses, masked metrics, EMA and other callbacks, checkpoint metadata.

Public names:
    PotentialModule              LightningModule around a ``Potential`` (attribute ``model``)
    WeightedPropertyLoss         ``{energy|forces|stress: {weight, fn}}`` loss
    PropertyMetrics              MAE/RMSE of energy (per atom, per frame), forces, stress
    ExponentialMovingAverage     EMA of the weights (validation, checkpoints, export)
    LinearWarmup, ReseedEveryEpoch   learning-rate warm-up; per-epoch seeding for exact resume

Setting up a run: :mod:`mpnn_ip.train.builders` (objects from the config), :mod:`mpnn_ip.train.model_source`
(a new model, a continued checkpoint or a fine-tuned one: :mod:`mpnn_ip.train.finetune`), :mod:`mpnn_ip.train.resume`
(``resume=<run dir>``). The checkpoint format (metadata, reading, ``load_model``) is :mod:`mpnn_ip.checkpoint`.
"""

from __future__ import annotations

from mpnn_ip.train.callbacks import LinearWarmup, ReseedEveryEpoch
from mpnn_ip.train.ema import ExponentialMovingAverage
from mpnn_ip.train.lightning_module import PotentialModule
from mpnn_ip.train.losses import WeightedPropertyLoss
from mpnn_ip.train.metrics import PropertyMetrics

__all__ = [
    "ExponentialMovingAverage",
    "LinearWarmup",
    "PotentialModule",
    "PropertyMetrics",
    "ReseedEveryEpoch",
    "WeightedPropertyLoss",
]
