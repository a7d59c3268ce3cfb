"""Which frames each process sees in each epoch: seeded epoch orders, shares of them across DDP
processes, and batches packed up to a number of atoms.

Every order here is a function of ``seed``, the epoch and the frame sizes only (never of the global
RNG), and the same on every process: each process computes the whole epoch's order and keeps its
share. The training order is torch's ``DistributedSampler`` shuffle (``randperm`` seeded with
``seed + epoch``) also with one process, so a 1-process batch of ``B`` frames is exactly the union
of the ``B / W`` frames that each of ``W`` processes gets in the same step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def shuffled_frames(num_frames: int, seed: int, epoch: int) -> list[int]:
    """The epoch's permutation of ``range(num_frames)`` (that of ``DistributedSampler(shuffle=True, seed=seed)``)."""
    generator = torch.Generator().manual_seed(int(seed) + int(epoch))
    return torch.randperm(int(num_frames), generator=generator).tolist()


class EpochOrder(Sampler[int]):
    """All frames in the epoch's order: a permutation seeded by ``seed + epoch`` (``shuffle``) or file order.

    ``set_epoch`` picks the epoch (Lightning calls it every epoch, also after resuming).
    """

    def __init__(self, num_frames: int, shuffle: bool = True, seed: int = 0):
        self.num_frames, self.shuffle, self.seed, self.epoch = int(num_frames), bool(shuffle), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_frames))
        return iter(shuffled_frames(self.num_frames, self.seed, self.epoch))

    def __len__(self) -> int:
        return self.num_frames


def _set_epoch(order: Sampler, epoch: int) -> None:
    set_epoch = getattr(order, "set_epoch", None)
    if callable(set_epoch):
        set_epoch(epoch)


def _share(items: list, num_replicas: int, rank: int, pad: bool) -> list:
    """Every ``num_replicas``-th item from ``rank``; with ``pad`` the list is first extended by repeating
    its first items to a multiple of ``num_replicas`` (every process then gets as many)."""
    if pad and items:
        total = math.ceil(len(items) / num_replicas) * num_replicas
        items = (items * math.ceil(total / len(items)))[:total]
    return items[rank::num_replicas]


class ProcessShare(Sampler[int]):
    """This process's share of an epoch order (``order``: an :class:`EpochOrder` or any sampler with
    ``set_epoch``): frames ``rank, rank + num_replicas, ...`` of it. With ``pad`` (training) a few frames
    are repeated when the order's length is not a multiple of ``num_replicas``, so that every process
    takes the same number of steps, exactly as ``DistributedSampler``; without it (validation, test) every
    frame is seen once over all processes. With one process this is ``order`` itself.

    Args:
        order: the epoch's frames, the same on every process.
        num_replicas, rank: number of processes and this one's global rank.
        pad: repeat frames to equal shares (training) or not (evaluation).
    """

    def __init__(self, order: Sampler[int], num_replicas: int = 1, rank: int = 0, pad: bool = True):
        self.order, self.num_replicas, self.rank, self.pad = order, int(num_replicas), int(rank), bool(pad)

    def set_epoch(self, epoch: int) -> None:
        _set_epoch(self.order, epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(_share(list(self.order), self.num_replicas, self.rank, self.pad))

    def __len__(self) -> int:
        total = len(self.order)
        return math.ceil(total / self.num_replicas) if self.pad else len(range(self.rank, total, self.num_replicas))


def pack_by_atoms(order: Sequence[int], num_atoms: Sequence[int], max_atoms: int) -> list[list[int]]:
    """Consecutive frames of ``order`` grouped into batches of at most ``max_atoms`` atoms in total; a
    frame larger than ``max_atoms`` is a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    atoms = 0
    for index in order:
        size = int(num_atoms[index])
        if current and atoms + size > max_atoms:
            batches.append(current)
            current, atoms = [], 0
        current.append(int(index))
        atoms += size
    if current:
        batches.append(current)
    return batches


class AtomBudgetBatchSampler(Sampler[list[int]]):
    """Batches packed up to ``max_atoms`` atoms (``data.max_atoms_per_batch``) instead of a fixed number
    of frames, for data that mixes small molecules and large cells.

    Every process packs the same epoch order (``order``) into batches, consecutive frames until the next
    would exceed the budget, and takes every ``num_replicas``-th batch from its ``rank``. With ``pad``
    (training) the list of batches is first extended by repeating its first batches to a multiple of
    ``num_replicas``, so that every process takes the same number of optimizer steps (none waits for a
    gradient all-reduce that never comes); validation and test batches are never repeated. The budget
    holds per process, like ``batch_size``.

    Args:
        order: the epoch's frames (:class:`EpochOrder`, or the fine-tuning replay order); Lightning
            calls ``set_epoch`` on it as ``batch_sampler.sampler``.
        num_atoms: atoms of every frame of the dataset, ``[num_frames]``.
        max_atoms: atom budget of one batch (> 0).
        num_replicas, rank: number of processes and this one's global rank.
        pad: repeat batches to equal shares (training) or not (evaluation).
    """

    def __init__(
        self,
        order: Sampler[int],
        num_atoms: Sequence[int],
        max_atoms: int,
        num_replicas: int = 1,
        rank: int = 0,
        pad: bool = True,
    ):
        if int(max_atoms) <= 0:
            raise ValueError(f"data.max_atoms_per_batch must be a positive number of atoms, got {max_atoms}")
        self.sampler = order
        self.num_atoms = [int(n) for n in num_atoms]
        self.max_atoms, self.num_replicas, self.rank, self.pad = int(max_atoms), int(num_replicas), int(rank), bool(pad)
        too_large = [n for n in self.num_atoms if n > self.max_atoms]
        if too_large:
            warnings.warn(
                f"data.max_atoms_per_batch={self.max_atoms}: {len(too_large)} frame(s) have more atoms (largest "
                f"{max(too_large)}); each of them is a batch of its own. Raise the budget if such a batch fits in "
                "memory anyway, or expect those steps to need more.",
                stacklevel=2,
            )

    def set_epoch(self, epoch: int) -> None:
        _set_epoch(self.sampler, epoch)

    def _batches(self) -> list[list[int]]:
        return _share(
            pack_by_atoms(list(self.sampler), self.num_atoms, self.max_atoms), self.num_replicas, self.rank, self.pad
        )

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
