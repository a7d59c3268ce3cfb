"""The data module of files (or the embedded synthetic set): read and check them, then split, batch and
count statistics as every data module does (:class:`~mpnn_ip.data.split_module.SplitDataModule`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping

import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from mpnn_ip.data.atomic_graph import AtomicGraph
from mpnn_ip.data.checks import DEFAULT_OUTLIER_SIGMA, dataset_problems
from mpnn_ip.data.dataset import AtomicDataset, FramesOfHead
from mpnn_ip.data.problems import Problem, errors_of, format_problems, problems_error
from mpnn_ip.data.reader_options import ReaderOptions
from mpnn_ip.data.reading import check_on_error, expand_paths, read_dataset
from mpnn_ip.data.split_module import SplitDataModule
from mpnn_ip.data.statistics import StatisticsAccumulator, frame_summaries
from mpnn_ip.data.synthetic import default_dataset_path
from mpnn_ip.errors import ConfigError


class AtomicDataModule(SplitDataModule):
    """Training, validation and test frames of an interatomic-potential fit.

    Args (all plain values; this signature is the reference of ``configs/data/*.yaml``):
        train_path: training file (any ASE format) or glob pattern (``ta/*.xyz``: the matching files'
            frames, in sorted file order); ``None`` = the embedded synthetic Cu-Au EMT
            dataset (:func:`mpnn_ip.data.default_dataset_path`).
        val_path: validation file or pattern; ``None`` = split validation frames off the training file.
        test_path: test file or pattern; ``None`` = split test frames off the training file.
        **split_options: the splits, batching and statistics settings of every data module (``train_count``,
            ``val_fraction``, ``val_count``, ``test_fraction``, ``test_count``, ``seed``, ``batch_size``,
            ``val_batch_size``, ``max_atoms_per_batch``, ``num_workers``, ``pin_memory``, ``isolated_atoms``,
            ``r_max``, ``species``): see :class:`~mpnn_ip.data.split_module.SplitDataModule`.
        energy_key, forces_key, stress_key, dipole_key, stress_unit, stress_sign, virial_key, index, format:
            reading options of :func:`mpnn_ip.data.read_dataset`, applied to every file; together they
            make :attr:`reader_options` (:class:`~mpnn_ip.data.reader_options.ReaderOptions`).
        charge_key, spin_key: keys of the model inputs in ``atoms.info``: the frame's total charge (e) and
            spin multiplicity (2S+1 >= 1); a frame without them is neutral (0) / a singlet (1).
        label_keys: ``{label: key}`` of labels added with :func:`mpnn_ip.outputs.register_label` (a
            standard label or input may be given here too, and then wins over its flat ``*_key`` argument).
            ``None`` = their default keys. From a command line: ``data.label_keys={quadrupole: REF_quadrupole}``.
        on_error: what to do with bad frames (NaN/inf, wrong shapes, atoms closer than 0.1 Å,
            zero-volume periodic cells, elements outside ``species`` ...), found in every frame of
            every file before anything is split: ``"raise"``: one ``DataError`` listing them all;
            ``"skip"``: drop them with a warning; they are in :attr:`skipped_frames` (and
            ``mpnn-train`` writes them to ``skipped_frames.csv``). A file that cannot be read at
            all is an error either way.
        outlier_sigma: frames whose energy per atom is more than this many standard deviations
            off a per-species least-squares fit are warned about (never dropped), as are
            duplicated frames; ``None`` = no outlier check.

    Validation/test frames split off the training file are drawn first from a seeded
    permutation, so they do not change when ``train_count`` changes. Training frames are shuffled
    every epoch by a permutation seeded with ``seed + epoch`` only (:mod:`mpnn_ip.data.sampler`).
    ``batch_size`` and ``max_atoms_per_batch`` hold per process: under DDP (attached to a Trainer
    with several processes) each process takes every ``world_size``-th frame (or packed batch) of
    the same epoch order, so one process with ``batch_size=B`` sees in each step exactly the frames
    that ``W`` processes with ``batch_size=B/W`` see together.

    Fine-tuning adds old frames to every training epoch with :meth:`add_replay` (``mpnn-train
    finetune.replay_path=...``); validation, test and the statistics stay on the new data.
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        energy_key: str | None = "energy",
        forces_key: str | None = "forces",
        stress_key: str | None = "stress",
        dipole_key: str | None = "dipole",
        charge_key: str | None = "charge",
        spin_key: str | None = "spin",
        stress_unit: str = "eV/A^3",
        stress_sign: int = 1,
        virial_key: str | None = None,
        index: str = ":",
        format: str | None = None,
        label_keys: Mapping[str, str | None] | None = None,
        on_error: str = "raise",
        outlier_sigma: float | None = DEFAULT_OUTLIER_SIGMA,
        **split_options,
    ):
        super().__init__(**split_options)
        self.train_path, self.val_path, self.test_path = train_path, val_path, test_path
        #: how every file is read
        self.reader_options = ReaderOptions.from_keywords(
            label_keys=label_keys,
            energy_key=energy_key,
            forces_key=forces_key,
            stress_key=stress_key,
            dipole_key=dipole_key,
            charge_key=charge_key,
            spin_key=spin_key,
            stress_unit=stress_unit,
            stress_sign=stress_sign,
            virial_key=virial_key,
            index=index,
            format=format,
        )
        check_on_error(on_error)
        self.on_error, self.outlier_sigma = on_error, outlier_sigma
        self._problems: list[Problem] = []
        #: old frames mixed into training by :meth:`add_replay`, and their share of each epoch
        self.replay_dataset: AtomicDataset | None = None
        self.replay_fraction = 0.0
        #: head index of the replayed frames (multi-head fine-tuning; the new frames get head 0), or None
        self.replay_head: int | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read and split the data (once; later calls do nothing)."""
        if self.train_dataset is not None:
            return
        self._problems = []
        train_file = str(self.train_path) if self.train_path is not None else str(default_dataset_path())
        frames = self._read(train_file)
        val_frames = self._read(str(self.val_path)) if self.val_path is not None else None
        test_frames = self._read(str(self.test_path)) if self.test_path is not None else None
        self._validate(frames + (val_frames or []) + (test_frames or []))
        train_indices, val_indices, test_indices = self.split(
            len(frames), val_frames is not None, test_frames is not None, train_file
        )
        train, val, test = ([frames[i] for i in indices] for indices in (train_indices, val_indices, test_indices))
        val = val_frames if val_frames is not None else val
        test = test_frames if test_frames is not None else test
        self.train_dataset, self.val_dataset, self.test_dataset = (
            AtomicDataset(train),
            AtomicDataset(val),
            AtomicDataset(test),
        )

    def add_training_frames(self, accumulator: StatisticsAccumulator) -> None:
        """The training frames' summaries into ``accumulator`` (:meth:`SplitDataModule.statistics`)."""
        accumulator.add(frame_summaries(self.train_dataset.graphs, [self.r_max]))

    def add_replay(self, path: str, fraction: float, head: int | None = None) -> None:
        """Mix frames of ``path`` (a file or glob of earlier training data, read and checked with this
        module's options and ``on_error``) into every training epoch, so that about ``fraction`` of the
        epoch's frames are old ones: all training frames plus a fresh draw of old ones each epoch
        (:class:`ReplaySampler`). Validation, test and the statistics keep using the new frames only.

        ``head``: multi-head fine-tuning: the old frames carry this head index and the new training frames
        head 0 (the new head; validation and test frames carry none, i.e. 0); None: no frame carries a head.
        """
        if not 0.0 < float(fraction) < 1.0:
            raise ConfigError(
                f"finetune.replay_fraction={fraction} must be in (0, 1) when finetune.replay_path is given: the share "
                "of each training epoch's frames taken from the old data (e.g. 0.2)"
            )
        self.setup()
        self._problems = []
        frames = self._read(str(path))
        self._validate(frames)
        self.replay_dataset, self.replay_fraction = AtomicDataset(frames), float(fraction)
        self.replay_head = None if head is None else int(head)

    def train_dataloader(self) -> DataLoader:
        if self.replay_dataset is None:
            return super().train_dataloader()
        sampler = ReplaySampler(len(self.train_dataset), len(self.replay_dataset), self.replay_fraction, self.seed)
        parts = [self.train_dataset, self.replay_dataset]
        if self.replay_head is not None:
            parts = [FramesOfHead(self.train_dataset, 0), FramesOfHead(self.replay_dataset, self.replay_head)]
        return self._loader(ConcatDataset(parts), self.batch_size, sampler)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation frames; with replayed frames of a head (multi-head fine-tuning) also those, second,
        evaluated with their head (``val_replay/*`` metrics: what the pretrained head still knows)."""
        loader = super().val_dataloader()
        if self.replay_head is None:
            return loader
        return [
            loader,
            self._loader(FramesOfHead(self.replay_dataset, self.replay_head), self.val_batch_size, training=False),
        ]

    def _read(self, path: str) -> list[AtomicGraph]:
        """Frames of ``path``, or of every file matching it when it is a glob pattern (sorted file order)."""
        return [graph for file in expand_paths(path) for graph in self._read_file(file)]

    def _read_file(self, path: str) -> list[AtomicGraph]:
        """Good frames of one file; the problems of the others are kept for :meth:`_validate`."""
        problems: list[Problem] = []
        graphs = read_dataset(path, self.reader_options, species=self.species, on_error="skip", problems=problems)
        if not graphs:
            raise problems_error(problems)
        self._problems.extend(problems)
        return graphs

    def _validate(self, graphs: list[AtomicGraph]) -> None:
        """Raise on (``on_error="raise"``) or record (``"skip"``) every bad frame read; warn about duplicates and outliers."""
        errors = errors_of(self._problems)
        if errors and self.on_error == "raise":
            raise problems_error(errors)
        if errors:
            self.skipped_frames = [*self.skipped_frames, *errors]
            warnings.warn(
                f"on_error=skip: left out {len(errors)} bad frame(s):\n{format_problems(errors)}", stacklevel=3
            )
        notes = dataset_problems(graphs, self.outlier_sigma)
        if notes:
            warnings.warn(
                f"{len(notes)} warning(s) about the data (frames kept):\n{format_problems(notes)}", stacklevel=3
            )


class ReplaySampler(Sampler[int]):
    """Indices of one training epoch over ``ConcatDataset([new, old])``: every new frame once, plus
    ``round(fraction / (1 - fraction) * num_new)`` old frames (at least one), shuffled together, so that
    ``fraction`` of the epoch's frames are old. The old frames are drawn anew each epoch without
    repetition (when there are fewer old frames than that, all of them and then a draw of the rest),
    so over a run the model sees much of the old data. A function of ``seed`` and the epoch only
    (:meth:`set_epoch`, called by Lightning every epoch, also after resuming), the same on every process.
    """

    def __init__(self, num_new: int, num_old: int, fraction: float, seed: int = 0):
        if num_new < 1 or num_old < 1:
            raise ConfigError(f"replay needs new and old frames, got {num_new} new and {num_old} old ones")
        self.num_new, self.num_old, self.seed = int(num_new), int(num_old), int(seed)
        self.num_old_per_epoch = max(1, int(round(float(fraction) / (1.0 - float(fraction)) * self.num_new)))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_new + self.num_old_per_epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        full, rest = divmod(self.num_old_per_epoch, self.num_old)
        old = [torch.randperm(self.num_old, generator=generator) for _ in range(full)]
        old.append(torch.randperm(self.num_old, generator=generator)[:rest])
        indices = torch.cat([torch.arange(self.num_new), self.num_new + torch.cat(old)])
        return iter(indices[torch.randperm(len(indices), generator=generator)].tolist())
