"""Lightning DataModule over a graph store (``mpnn-preprocess``): splits as in memory, graphs read lazily."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from mpnn_ip.data.atomic_graph import AtomicGraph
from mpnn_ip.data.split_module import SplitDataModule
from mpnn_ip.data.statistics import StatisticsAccumulator, edge_counts
from mpnn_ip.data.store import GraphStore
from mpnn_ip.elements import symbols
from mpnn_ip.errors import DataError

#: Training frames given to ``model.prepare`` (BPNN's standardisation, GAP's fit) at most.
DEFAULT_PREPARE_MAX_FRAMES = 10_000


class LazyGraphs(Sequence):
    """Graphs of a store at ``indices``, read when indexed or iterated (``len`` costs nothing)."""

    def __init__(self, store: GraphStore, indices):
        self.store, self.indices = store, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item):
        if isinstance(item, slice):
            return [self.store[i] for i in self.indices[item]]
        return self.store[self.indices[item]]


class StoreDataset(Dataset):
    """The frames of a store at ``indices`` (a split); ``dataset[i]`` reads the i-th from disk.

    ``graphs``: the frames as a :class:`LazyGraphs`; at most ``prepare_max_frames`` of them (a
    seeded sample, in split order) when the split is larger, since ``mpnn-train`` hands them to
    ``model.prepare`` as a list.
    """

    def __init__(self, store: GraphStore, indices, prepare_max_frames: int | None = None, seed: int = 0):
        self.store, self.indices = store, np.asarray(indices, dtype=np.int64)
        self.prepare_max_frames, self.seed = prepare_max_frames, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> AtomicGraph:
        return self.store[self.indices[index]]

    @property
    def num_atoms(self) -> np.ndarray:
        """Atoms per frame ([len(self)] int), from the store's summaries (no graph is read)."""
        per_frame = np.concatenate([summary["counts"].sum(axis=1) for _, summary in self.store.summaries()])
        return per_frame[self.indices]

    @property
    def graphs(self) -> LazyGraphs:
        limit = self.prepare_max_frames
        if limit is None or len(self.indices) <= limit:
            return LazyGraphs(self.store, self.indices)
        chosen = np.sort(np.random.default_rng(self.seed).choice(len(self.indices), size=int(limit), replace=False))
        warnings.warn(
            f"model.prepare sees {limit} of the {len(self.indices)} training frames of the store (data.prepare_max_frames)",
            stacklevel=2,
        )
        return LazyGraphs(self.store, self.indices[chosen])


class OnDiskDataModule(SplitDataModule):
    """Training, validation and test frames read lazily from a graph store (``mpnn-preprocess ... out=STORE``).

    Args (the reference of ``configs/data/ondisk.yaml``):
        store: the store folder written by ``mpnn-preprocess``. A store of another format version
            is refused (re-run ``mpnn-preprocess``).
        **split_options: splits, batching and statistics (``train_count`` ... ``species``), as for every data
            module (:class:`~mpnn_ip.data.split_module.SplitDataModule`), over the store's training frames (a
            ``val``/``test`` part written from ``val_path``/``test_path`` plays that file's role): same options and
            seed, same frames in each split as reading the files in memory. Any number of workers: each opens
            its own connections to the shards. A cutoff ``r_max`` the store has no counts for is counted from
            the training graphs (slow; a warning says so; ``mpnn-preprocess ... r_max=X`` adds it to the store);
            a store holding an element outside ``species`` is an error.
        prepare_max_frames: at most this many training frames (a seeded sample) go to
            ``model.prepare``; ``None`` = all (then held in memory at once).

    The files were read, checked and stripped of bad frames by ``mpnn-preprocess`` (its reader
    settings and ``on_error``); :attr:`skipped_frames` lists those left out. Statistics are those of
    ``compute_statistics`` on the training split, computed from the store's per-frame summaries
    (:mod:`mpnn_ip.data.statistics`) without reading graphs.
    """

    def __init__(
        self,
        store: str,
        prepare_max_frames: int | None = DEFAULT_PREPARE_MAX_FRAMES,
        **split_options,
    ):
        super().__init__(**split_options)
        self.store_path = str(store)
        self.prepare_max_frames = prepare_max_frames
        self.store: GraphStore | None = None

    def setup(self, stage: str | None = None) -> None:
        """Open the store and split it (once; later calls do nothing)."""
        if self.train_dataset is not None:
            return
        store = GraphStore(self.store_path)
        self._check_species(store)
        changed = store.changed_inputs()
        if changed:
            warnings.warn(
                f"{', '.join(changed)} changed after the store {self.store_path} was written; training uses the store "
                "as it is. Re-run mpnn-preprocess (same options) to bring it up to date",
                stacklevel=2,
            )
        train_part, val_part, test_part = store.part("train"), store.part("val"), store.part("test")
        train, val, test = self.split(
            len(train_part), val_part is not None, test_part is not None, f"the store {self.store_path}"
        )
        val = np.asarray(val_part) if val_part is not None else train_part.start + val
        test = np.asarray(test_part) if test_part is not None else train_part.start + test
        self.store, self.skipped_frames = store, store.skipped_frames
        self.train_dataset = StoreDataset(store, train_part.start + train, self.prepare_max_frames, self.seed)
        self.val_dataset, self.test_dataset = StoreDataset(store, val), StoreDataset(store, test)

    def add_training_frames(self, accumulator: StatisticsAccumulator) -> None:
        """The training split's rows of the store's per-frame summaries into ``accumulator`` (no graph is read,
        unless the store has no neighbour counts for ``r_max``: then they are counted on the training graphs)."""
        chosen = np.zeros(len(self.store), dtype=bool)
        chosen[self.train_dataset.indices] = True
        if self.r_max not in self.store.manifest["r_max"]:
            warnings.warn(
                f"the store {self.store_path} has no neighbour counts for r_max={self.r_max:g} Å (it has "
                f"{self.store.manifest['r_max']}); counting them on the training graphs now. Add them once with "
                f"mpnn-preprocess (same options) r_max=[{self.r_max:g}]",
                stacklevel=3,
            )
        for start, summary in self.store.summaries():
            rows = chosen[start : start + len(summary["energy"])]
            if self.r_max not in summary["num_edges"]:
                counts = np.zeros(len(rows), dtype=np.int64)
                counts[rows] = edge_counts([self.store[start + i] for i in np.flatnonzero(rows)], self.r_max)
                summary["num_edges"][self.r_max] = counts
            accumulator.add(summary, rows)

    def _check_species(self, store: GraphStore) -> None:
        if self.species is None:
            return
        extra = sorted(set(store.species) - set(self.species))
        if extra:
            raise DataError(
                f"the store {self.store_path} holds element(s) {', '.join(symbols(extra))} outside species "
                f"[{', '.join(symbols(self.species))}]. List them in species, or re-run mpnn-preprocess with "
                "data.species=[...] data.on_error=skip to leave those frames out"
            )
