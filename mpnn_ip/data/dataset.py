"""Torch ``Dataset``s over labelled :class:`AtomicGraph` frames: in memory, and the frames of one head."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from mpnn_ip.data.atomic_graph import AtomicGraph
from mpnn_ip.data.reading import read_dataset


class AtomicDataset(Dataset):
    """In-memory frames; ``dataset[i]`` is the i-th :class:`AtomicGraph`.

    Batch with :func:`mpnn_ip.data.collate` (``DataLoader(dataset, collate_fn=collate)``).
    """

    def __init__(self, graphs: Sequence[AtomicGraph]):
        self.graphs = list(graphs)

    @classmethod
    def from_file(cls, path, **read_options) -> AtomicDataset:
        """Read ``path`` with :func:`mpnn_ip.data.read_dataset` (``read_options`` are its keywords)."""
        return cls(read_dataset(path, **read_options))

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> AtomicGraph:
        return self.graphs[index]

    @property
    def species(self) -> list[int]:
        """Sorted atomic numbers present."""
        return sorted({int(z) for g in self.graphs for z in g.atomic_numbers.unique().tolist()})


class FramesOfHead(Dataset):
    """The frames of ``dataset``, each carrying ``head = [index]`` (long): the head of a multi-head model
    that evaluates them (:mod:`mpnn_ip.models.heads`). The frames themselves are not changed (shallow copies).

    Frames batched together must all carry a head or none, so every dataset of a mixed epoch is wrapped.
    """

    def __init__(self, dataset: Dataset, head: int):
        self.dataset, self.head = dataset, torch.tensor([int(head)])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> AtomicGraph:
        graph = copy.copy(self.dataset[index])
        graph.head = self.head
        return graph
