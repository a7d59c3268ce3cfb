"""The base of the data modules: splits, batching, the per-process sampler and the training statistics.

:class:`SplitDataModule` holds what the file-based :class:`~mpnn_ip.data.AtomicDataModule` and the
on-disk :class:`~mpnn_ip.data.ondisk.OnDiskDataModule` share: the split rules
(:func:`~mpnn_ip.data.splits.split_indices`), the loaders with their epoch orders, atom-budget batches
and DDP shares (:mod:`mpnn_ip.data.sampler`), and the statistics of the training split (one
:class:`~mpnn_ip.data.statistics.StatisticsAccumulator` pass). A subclass says where frames come from:
:meth:`setup` fills ``train_dataset``, ``val_dataset`` and ``test_dataset``, and
:meth:`add_training_frames` feeds the training frames' summaries to the accumulator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Sampler

from mpnn_ip.data.atomic_graph import collate
from mpnn_ip.data.problems import Problem
from mpnn_ip.data.reading import read_isolated_atom_energies
from mpnn_ip.data.sampler import AtomBudgetBatchSampler, EpochOrder, ProcessShare
from mpnn_ip.data.splits import split_indices
from mpnn_ip.data.statistics import StatisticsAccumulator
from mpnn_ip.elements import atomic_numbers
from mpnn_ip.errors import ConfigError


class SplitDataModule(L.LightningDataModule):
    """Splits, loaders and statistics of a data module (see the module docstring).

    The arguments are shared by every data module, which passes them on as ``**split_options``; this is the
    reference of these keys in ``configs/data/*.yaml``. "The training file" is the training split's source:
    the training files of :class:`~mpnn_ip.data.AtomicDataModule`, the store's training part of
    :class:`~mpnn_ip.data.OnDiskDataModule`.

    Args:
        train_count: number of training frames kept from the training file after the
            validation/test frames are taken out; ``None`` = all remaining.
        val_fraction: share of the training file used for validation when ``val_path`` is None
            (rounded; at least one frame when > 0).
        val_count: number of validation frames split off; overrides ``val_fraction``.
        test_fraction, test_count: the same for the test split (used when ``test_path`` is None).
            ``test_fraction=None`` (default) means 0.1 when validation frames are split off the
            training file too, and 0 (no test split) when ``val_path`` is given: a separate
            validation file does not silently take frames out of training; ask for them with
            ``test_fraction`` or ``test_count``. Without a test split, the report after training
            uses the validation split. Example, AcAc protocol (450 train / 50 val from one
            500-frame file): ``train_count=450, val_count=50, test_count=0``.
        seed: seed of the random split (same seed, same split; independent of the global RNG).
        batch_size: frames per training batch.
        val_batch_size: frames per validation/test batch; ``None`` = ``batch_size``.
        max_atoms_per_batch: when given, batches are packed with consecutive frames up to this many
            atoms (training, validation and test) instead of ``batch_size`` frames: for data that
            mixes 5-atom molecules and 500-atom cells. A frame with more atoms is a batch of its own
            (with a warning). ``None`` = batches of ``batch_size`` frames.
        num_workers, pin_memory: passed to the ``DataLoader``s.
        isolated_atoms: file of isolated-atom frames or ``{symbol or Z: eV}``; when given these
            are the E0s of the statistics, else E0s are fitted by least squares.
        r_max: cutoff (Å) for the mean-neighbour-count statistic (use the model's).
        species: allowed elements (symbols or Z); every frame must only contain these, else
            ``DataError`` naming the element, file and frame; the statistics then cover all of
            them (E0 0.0 for one absent from training, unless isolated-atom energies give it).
            ``None`` = any, statistics over the species seen in training.
    """

    def __init__(
        self,
        train_count: int | None = None,
        val_fraction: float = 0.1,
        val_count: int | None = None,
        test_fraction: float | None = None,
        test_count: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        max_atoms_per_batch: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        isolated_atoms: str | Mapping | None = None,
        r_max: float = 5.0,
        species: Sequence[str | int] | None = None,
    ):
        super().__init__()
        self.train_count, self.val_fraction, self.val_count = train_count, val_fraction, val_count
        self.test_fraction, self.test_count, self.seed = test_fraction, test_count, seed
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        if max_atoms_per_batch is not None and int(max_atoms_per_batch) <= 0:
            raise ConfigError(
                f"data.max_atoms_per_batch={max_atoms_per_batch} must be a positive number of atoms (or null)"
            )
        self.max_atoms_per_batch = None if max_atoms_per_batch is None else int(max_atoms_per_batch)
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.isolated_atoms = isolated_atoms
        self.r_max = r_max
        self.species = None if species is None else atomic_numbers(species)
        #: Problems of the bad frames left out (:class:`~mpnn_ip.data.problems.Problem`).
        self.skipped_frames: list[Problem] = []
        self.train_dataset = self.val_dataset = self.test_dataset = None
        self._statistics = None

    def setup(self, stage: str | None = None) -> None:
        """Fill ``train_dataset``, ``val_dataset`` and ``test_dataset`` (once; later calls do nothing)."""
        raise NotImplementedError(f"{type(self).__name__} must implement setup")

    def add_training_frames(self, accumulator: StatisticsAccumulator) -> None:
        """Add the training split's frames (their summaries) to ``accumulator``."""
        raise NotImplementedError(f"{type(self).__name__} must implement add_training_frames")

    def split(self, num_frames: int, separate_val: bool, separate_test: bool, where: str) -> tuple[np.ndarray, ...]:
        """``(train, val, test)`` indices into ``num_frames`` training frames by this module's split options;
        ``separate_*``: that split comes from its own file or part (its indices are empty)."""
        return split_indices(
            num_frames,
            separate_val=separate_val,
            separate_test=separate_test,
            train_count=self.train_count,
            val_fraction=self.val_fraction,
            val_count=self.val_count,
            test_fraction=self.test_fraction,
            test_count=self.test_count,
            seed=self.seed,
            where=where,
        )

    def statistics(self) -> dict:
        """Statistics of the training split (as :func:`mpnn_ip.data.compute_statistics` gives them), computed once."""
        if self._statistics is None:
            self.setup()
            accumulator = StatisticsAccumulator(self.r_max)
            self.add_training_frames(accumulator)
            e0s = read_isolated_atom_energies(self.isolated_atoms) if self.isolated_atoms is not None else None
            self._statistics = accumulator.result(e0s, species=self.species)
        return self._statistics

    def add_replay(self, path: str, fraction: float, head: int | None = None) -> None:
        """Mix old frames into training (fine-tuning's ``finetune.replay_path``): only modules that read files do."""
        raise ConfigError(
            f"replaying old frames (finetune.replay_path) needs frames read from files (data=extxyz); {type(self).__name__} "
            "cannot mix them in: fine-tune with data=extxyz, or write the old and new frames into one store"
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_dataset, self.batch_size, EpochOrder(len(self.train_dataset), True, self.seed))

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        self.setup()
        return self._loader(self.val_dataset, self.val_batch_size, training=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_dataset, self.val_batch_size, training=False)

    def evaluation_dataloader(self, split: str) -> DataLoader:
        """All frames of ``split`` (``"val"`` or ``"test"``) in file order, in this process whatever the number of
        processes (reports and parity plots, written by one process)."""
        self.setup()
        return self._loader(getattr(self, f"{split}_dataset"), self.val_batch_size, training=False, whole=True)

    def _processes(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the Trainer this module is attached to; ``(1, 0)`` without one."""
        trainer = getattr(self, "trainer", None)
        return (1, 0) if trainer is None else (int(trainer.world_size), int(trainer.global_rank))

    def _loader(
        self, dataset, batch_size: int, order: Sampler | None = None, training: bool = True, whole: bool = False
    ) -> DataLoader:
        """This process's batches of ``dataset`` in ``order`` (default: file order); training shares are padded to
        equal lengths across processes (:mod:`mpnn_ip.data.sampler`), ``whole`` gives every frame to this process."""
        order = order if order is not None else EpochOrder(len(dataset), shuffle=False)
        replicas, rank = (1, 0) if whole else self._processes()
        options = dict(
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        if self.max_atoms_per_batch is None:
            return DataLoader(
                dataset, batch_size=batch_size, sampler=ProcessShare(order, replicas, rank, pad=training), **options
            )
        sizes = getattr(dataset, "num_atoms", None)  # datasets on disk give them without reading every frame
        sizes = [int(dataset[i].num_atoms) for i in range(len(dataset))] if sizes is None else [int(n) for n in sizes]
        batches = AtomBudgetBatchSampler(order, sizes, self.max_atoms_per_batch, replicas, rank, pad=training)
        return DataLoader(dataset, batch_sampler=batches, **options)
