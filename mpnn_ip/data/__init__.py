"""Data layer: files -> labelled :class:`AtomicGraph` frames, splits, statistics, Lightning DataModule.

Public names:
    AtomicGraph, collate, to_inputs          one structure as a graph without edges; batching
    read_dataset, read_isolated_atom_energies  any ASE-readable file -> graphs / E0 per species
    ReaderOptions                            label keys, stress unit and sign, virial key, index, format
    check_data, Problem                      every problem of every frame of files, and their statistics
    AtomicDataset, AtomicDataModule          torch Dataset and Lightning DataModule
    compute_statistics                       E0, force RMS, mean neighbour count of a training split
    default_dataset_path, make_dataset       the embedded synthetic Cu-Au EMT dataset
    DataError                                raised for bad input data (file, frame, problem)

``AtomicDataModule`` (which imports Lightning) is loaded on first use.
"""

from __future__ import annotations

from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs
from mpnn_ip.data.checks import check_data
from mpnn_ip.data.dataset import AtomicDataset
from mpnn_ip.data.problems import Problem
from mpnn_ip.data.reader_options import ReaderOptions
from mpnn_ip.data.reading import read_dataset, read_isolated_atom_energies
from mpnn_ip.data.statistics import compute_statistics
from mpnn_ip.data.synthetic import default_dataset_path, make_dataset
from mpnn_ip.errors import DataError


def __getattr__(name: str):
    if name == "AtomicDataModule":
        from mpnn_ip.data.datamodule import AtomicDataModule

        return AtomicDataModule
    raise AttributeError(f"module 'mpnn_ip.data' has no attribute {name!r}")


__all__ = [
    "AtomicDataModule",
    "AtomicDataset",
    "AtomicGraph",
    "DataError",
    "Problem",
    "ReaderOptions",
    "check_data",
    "collate",
    "compute_statistics",
    "default_dataset_path",
    "make_dataset",
    "read_dataset",
    "read_isolated_atom_energies",
    "to_inputs",
]
