"""Small training callbacks: linear learning-rate warm-up and per-epoch reseeding (exact resume)."""

from __future__ import annotations

import random
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import RandomSampler


class LinearWarmup(L.Callback):
    """Ramp every parameter group's learning rate linearly from ``lr / steps`` to ``lr`` over the
    first ``steps`` optimizer steps; afterwards the scheduler (e.g. ReduceLROnPlateau) is in charge.

    Args:
        steps: number of optimizer steps of the warm-up (0 = no warm-up).
    """

    def __init__(self, steps: int = 0):
        super().__init__()
        self.steps = int(steps)
        self.base_lrs: list[list[float]] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > self.steps or self.steps <= 0:
            return
        optimizers = trainer.optimizers
        if self.base_lrs is None:
            self.base_lrs = [[group["lr"] for group in opt.param_groups] for opt in optimizers]
        factor = min(1.0, (step + 1) / self.steps)
        for opt, lrs in zip(optimizers, self.base_lrs):
            for group, lr in zip(opt.param_groups, lrs):
                group["lr"] = lr * factor

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "base_lrs": self.base_lrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lrs = state_dict.get("base_lrs")


def _dataloaders(loaders) -> list:
    if isinstance(loaders, Mapping):
        return [dl for value in loaders.values() for dl in _dataloaders(value)]
    if isinstance(loaders, (list, tuple)):
        return [dl for value in loaders for dl in _dataloaders(value)]
    return [] if loaders is None else [loaders]


class ReseedEveryEpoch(L.Callback):
    """Make every training epoch's randomness a function of ``seed + epoch`` only.

    At the start of each epoch: python, numpy and torch are seeded with ``seed + epoch``, and the
    training loader's ``RandomSampler`` gets its own generator seeded the same way (its order
    then does not depend on when Lightning happens to create the loader's iterator). A run
    resumed from a checkpoint thus shuffles exactly as the uninterrupted run did. Also done at
    ``on_train_start``, because Lightning may skip the epoch-start hooks of the first epoch after
    resuming from a checkpoint written at the end of an epoch.

    Args:
        seed: base seed (the run's ``seed``).
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = int(seed)

    def _reseed(self, trainer) -> None:
        seed = (self.seed + trainer.current_epoch) % (2**32)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for loader in _dataloaders(trainer.train_dataloader):
            sampler = getattr(loader, "sampler", None)
            if isinstance(sampler, RandomSampler):
                sampler.generator = torch.Generator().manual_seed(seed)

    def on_train_start(self, trainer, pl_module) -> None:
        self._reseed(trainer)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reseed(trainer)
