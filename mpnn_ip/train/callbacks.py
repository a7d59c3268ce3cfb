"""Small training callbacks: linear learning-rate warm-up, per-epoch reseeding (exact resume) and a
resident-memory monitor (RSS per epoch, for spotting leaks in long runs)."""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Mapping
from typing import Any

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

    At the start of each epoch: python, numpy and torch are seeded with ``seed + epoch`` (dropout,
    data augmentation), and a training loader with a ``RandomSampler`` (a loader built outside
    :class:`~mpnn_ip.data.AtomicDataModule`, whose own epoch order already depends only on
    ``seed + epoch``, see :mod:`mpnn_ip.data.sampler`) gets a generator seeded the same way. A run
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


def resident_memory_mb() -> tuple[float, float]:
    """``(rss, peak)`` of this process in MB (2**20 bytes): the resident set size now and its high-water mark.

    One read of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) on Linux; elsewhere ``psutil`` for the
    current RSS (NaN without it) and ``getrusage`` for the peak.
    """
    with contextlib.suppress(OSError), open("/proc/self/status", "rb") as fh:  # no /proc (not Linux): getrusage below
        fields = {}
        for line in fh:
            if line.startswith((b"VmRSS:", b"VmHWM:")):
                key, value = line.split(b":", 1)
                fields[key] = float(value.split()[0]) / 1024.0  # kB
        if b"VmRSS" in fields and b"VmHWM" in fields:
            return fields[b"VmRSS"], fields[b"VmHWM"]
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    peak_mb = peak / 2**20 if sys.platform == "darwin" else peak / 1024.0
    try:
        import psutil

        rss_mb = psutil.Process(os.getpid()).memory_info().rss / 2**20
    except Exception:  # noqa: BLE001 - psutil absent or unsupported: report the peak only
        rss_mb = float("nan")
    return rss_mb, peak_mb


class ResidentMemoryMonitor(L.Callback):
    """Log the process's memory at the end of every training epoch (after that epoch's validation).

    Logged (to every logger, e.g. ``metrics.csv`` and W&B, one value per epoch):

    - ``memory/rss_mb``: resident set size now (MB);
    - ``memory/peak_rss_mb``: its high-water mark since the process started (MB);
    - on CUDA also ``memory/gpu_allocated_mb`` and ``memory/gpu_peak_allocated_mb`` (PyTorch's allocator).

    Flat ``memory/rss_mb`` over a long run means no leak; ``scripts/benchmark_memory.py`` checks it.
    Costs one read of ``/proc/self/status`` per epoch. Data-loader worker processes are not included.

    Args:
        gpu: also log the CUDA allocator's numbers when the module is on a CUDA device.
    """

    def __init__(self, gpu: bool = True):
        super().__init__()
        self.gpu = bool(gpu)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        rss_mb, peak_mb = resident_memory_mb()
        values = {"memory/rss_mb": rss_mb, "memory/peak_rss_mb": peak_mb}
        device = pl_module.device
        if self.gpu and device.type == "cuda" and torch.cuda.is_available():
            values["memory/gpu_allocated_mb"] = torch.cuda.memory_allocated(device) / 2**20
            values["memory/gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        for name, value in values.items():
            pl_module.log(name, float(value), on_step=False, on_epoch=True, logger=True, prog_bar=False)
