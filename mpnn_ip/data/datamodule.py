"""Lightning DataModule: read files (or the embedded synthetic set), split, batch, statistics."""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from mpnn_ip.data.atomic_graph import AtomicGraph, collate
from mpnn_ip.data.checks import DEFAULT_OUTLIER_SIGMA, dataset_problems
from mpnn_ip.data.dataset import AtomicDataset
from mpnn_ip.data.problems import Problem, errors_of, format_problems, problems_error
from mpnn_ip.data.reading import check_on_error, expand_paths, read_dataset, read_isolated_atom_energies
from mpnn_ip.data.statistics import compute_statistics
from mpnn_ip.data.synthetic import default_dataset_path
from mpnn_ip.elements import atomic_numbers
from mpnn_ip.errors import ConfigError

#: Share of the training file split off for testing when neither a test file nor a test size is given
#: and validation frames are split off the training file as well.
DEFAULT_TEST_FRACTION = 0.1


class AtomicDataModule(L.LightningDataModule):
    """Training, validation and test frames of an interatomic-potential fit.

    Args (all plain values; this signature is the reference of ``configs/data/*.yaml``):
        train_path: training file (any ASE format) or glob pattern (``ta/*.xyz``: the matching files'
            frames, in sorted file order); ``None`` = the embedded synthetic Cu-Au EMT
            dataset (:func:`mpnn_ip.data.default_dataset_path`).
        val_path: validation file or pattern; ``None`` = split validation frames off the training file.
        test_path: test file or pattern; ``None`` = split test frames off the training file.
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
        num_workers, pin_memory: passed to the ``DataLoader``s.
        energy_key, forces_key, stress_key, stress_unit, stress_sign, virial_key, index, format:
            reading options of :func:`mpnn_ip.data.read_dataset`, applied to every file.
        isolated_atoms: file of isolated-atom frames or ``{symbol or Z: eV}``; when given these
            are the E0s of the statistics, else E0s are fitted by least squares.
        r_max: cutoff (Å) for the mean-neighbour-count statistic (use the model's).
        species: allowed elements (symbols or Z); every frame must only contain these, else
            ``DataError`` naming the element, file and frame; the statistics then cover all of
            them (E0 0.0 for one absent from training, unless isolated-atom energies give it).
            ``None`` = any, statistics over the species seen in training.
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
    permutation, so they do not change when ``train_count`` changes. Training batches are
    shuffled with the global torch RNG (seeded by ``lightning.seed_everything``).
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        train_count: int | None = None,
        val_fraction: float = 0.1,
        val_count: int | None = None,
        test_fraction: float | None = None,
        test_count: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        energy_key: str | None = "energy",
        forces_key: str | None = "forces",
        stress_key: str | None = "stress",
        stress_unit: str = "eV/A^3",
        stress_sign: int = 1,
        virial_key: str | None = None,
        index: str = ":",
        format: str | None = None,
        isolated_atoms: str | Mapping | None = None,
        r_max: float = 5.0,
        species: Sequence[str | int] | None = None,
        on_error: str = "raise",
        outlier_sigma: float | None = DEFAULT_OUTLIER_SIGMA,
    ):
        super().__init__()
        self.train_path, self.val_path, self.test_path = train_path, val_path, test_path
        self.train_count, self.val_fraction, self.val_count = train_count, val_fraction, val_count
        self.test_fraction, self.test_count, self.seed = test_fraction, test_count, seed
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.read_options = dict(
            energy_key=energy_key, forces_key=forces_key, stress_key=stress_key, stress_unit=stress_unit,
            stress_sign=stress_sign, virial_key=virial_key, index=index, format=format,
        )
        self.isolated_atoms = isolated_atoms
        self.r_max = r_max
        self.species = None if species is None else atomic_numbers(species)
        check_on_error(on_error)
        self.on_error, self.outlier_sigma = on_error, outlier_sigma
        #: Problems of the bad frames left out with ``on_error="skip"`` (:class:`~mpnn_ip.data.problems.Problem`).
        self.skipped_frames: list[Problem] = []
        self._problems: list[Problem] = []
        self.train_dataset = self.val_dataset = self.test_dataset = None
        self._statistics = None

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
        n_val = 0 if self.val_path is not None else _split_size(len(frames), self.val_fraction, self.val_count, "val")
        n_test = 0 if self.test_path is not None else _split_size(len(frames), self._test_fraction(), self.test_count, "test")
        n_rest = len(frames) - n_val - n_test
        n_train = n_rest if self.train_count is None else int(self.train_count)
        if n_train < 1 or n_train > n_rest:
            raise ConfigError(
                f"{train_file} has {len(frames)} frames: cannot take {n_train} training frames after "
                f"{n_val} validation and {n_test} test frames (adjust train_count / val_* / test_*)"
            )
        order = np.random.default_rng(self.seed).permutation(len(frames))
        val = [frames[i] for i in order[:n_val]]
        test = [frames[i] for i in order[n_val : n_val + n_test]]
        train = [frames[i] for i in order[n_val + n_test : n_val + n_test + n_train]]
        val = val_frames if val_frames is not None else val
        test = test_frames if test_frames is not None else test
        self.train_dataset, self.val_dataset, self.test_dataset = AtomicDataset(train), AtomicDataset(val), AtomicDataset(test)

    def _test_fraction(self) -> float:
        """``test_fraction``, or its default: 0.1 when validation is split off the training file too, else 0."""
        if self.test_fraction is not None:
            return float(self.test_fraction)
        return DEFAULT_TEST_FRACTION if self.val_path is None else 0.0

    def statistics(self) -> dict:
        """Statistics of the training split (:func:`mpnn_ip.data.compute_statistics`), computed once."""
        if self._statistics is None:
            self.setup()
            e0s = read_isolated_atom_energies(self.isolated_atoms) if self.isolated_atoms is not None else None
            self._statistics = compute_statistics(self.train_dataset.graphs, self.r_max, e0s, species=self.species)
        return self._statistics

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_dataset, self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_dataset, self.val_batch_size, shuffle=False)

    def _loader(self, dataset: AtomicDataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
        )

    def _read(self, path: str) -> list[AtomicGraph]:
        """Frames of ``path``, or of every file matching it when it is a glob pattern (sorted file order)."""
        return [graph for file in expand_paths(path) for graph in self._read_file(file)]

    def _read_file(self, path: str) -> list[AtomicGraph]:
        """Good frames of one file; the problems of the others are kept for :meth:`_validate`."""
        problems: list[Problem] = []
        graphs = read_dataset(path, **self.read_options, species=self.species, on_error="skip", problems=problems)
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
            self.skipped_frames = errors
            warnings.warn(f"on_error=skip: left out {len(errors)} bad frame(s):\n{format_problems(errors)}", stacklevel=3)
        notes = dataset_problems(graphs, self.outlier_sigma)
        if notes:
            warnings.warn(f"{len(notes)} warning(s) about the data (frames kept):\n{format_problems(notes)}", stacklevel=3)


def _split_size(total: int, fraction: float, count: int | None, name: str) -> int:
    if count is not None:
        if count < 0 or count >= total:
            raise ConfigError(f"{name}_count={count} must be in 0..{total - 1} for a file of {total} frames")
        return int(count)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"{name}_fraction={fraction} must be in [0, 1)")
    size = int(round(fraction * total))
    return max(size, 1) if fraction > 0 and total > 2 else size
