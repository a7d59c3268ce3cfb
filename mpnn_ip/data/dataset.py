"""A torch ``Dataset`` over labelled :class:`AtomicGraph` frames held in memory."""

from __future__ import annotations

from typing import Sequence

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
    def from_file(cls, path, **read_options) -> "AtomicDataset":
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
