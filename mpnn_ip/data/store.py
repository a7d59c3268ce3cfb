"""An on-disk, sharded store of :class:`AtomicGraph` frames, read lazily (``mpnn-preprocess`` writes it).

Layout of a store folder::

    manifest.json              format version, reader settings, labels, inputs (size, mtime, sha256),
                               parts, shards, skipped frames, statistics of all training frames
    shard-00000.db             up to ``shard_size`` graphs: torch-geometric's ``SQLiteDatabase``, one row
                               per frame, one typed column per field (raw float64/int64/bool bytes):
                               the structure, then ``<label>`` and ``has_<label>`` of every label
                               (:func:`store_schema`), then the provenance strings
    shard-00000.summary.npz    one row per frame: atoms per species, energy, Σ forces², label flags,
                               neighbour pairs within each preprocessed r_max (the statistics' input)

The manifest's ``labels`` lists the rows of the label table a store holds, labels and inputs (stores
written before it existed hold energy, forces and stress); a row of the table now that the store lacks is
read as absent: a label masked, an input at its default (neutral, singlet) and masked. Such a store trains
as it is; ``mpnn-preprocess`` on the same files rebuilds it, to read the rows it lacks.

Frames are numbered globally in input order (files of a glob in sorted order, frames in file order,
bad frames left out); the parts ``train``, ``val``, ``test`` (one per input path given) are
contiguous ranges of that numbering. Shards bound what a writer holds and let loader workers read
different files; each process opens its own SQLite connections, on first use.
"""

from __future__ import annotations

import bisect
import json
import os
from pathlib import Path

import numpy as np
import torch

from mpnn_ip.data.atomic_graph import AtomicGraph
from mpnn_ip.data.problems import Problem
from mpnn_ip.errors import DataError
from mpnn_ip.outputs import FITTED_LABELS, LABELS

#: Bump when the layout, the schema or the summaries change: older stores are then rebuilt or refused.
FORMAT_VERSION = 1
FORMAT_NAME = "mpnn_ip graph store"
MANIFEST = "manifest.json"
#: SQLite page cache per open shard (KiB): a worker holds one connection per shard it has read from.
PAGE_CACHE_KIB = 256
TABLE = "graphs"
#: Columns of a shard before the labels: tensors (dtype, shape; -1 = number of atoms).
STRUCTURE_COLUMNS = {
    "pos": dict(dtype=torch.float64, size=(-1, 3)),
    "atomic_numbers": dict(dtype=torch.int64, size=(-1,)),
    "cell": dict(dtype=torch.float64, size=(1, 3, 3)),
    "pbc": dict(dtype=torch.bool, size=(1, 3)),
    "weight": dict(dtype=torch.float64, size=(1,)),
}
#: Columns of a shard after the labels: where each frame came from.
PROVENANCE_COLUMNS = {"config_type": str, "source_path": str, "source_frame": int}
#: The labels of stores whose manifest does not list them (written before it did).
LEGACY_LABELS = ("energy", "forces", "stress")


def store_schema(labels=None) -> dict:
    """Columns of a shard holding ``labels`` (names; ``None`` = every label of the table): the structure,
    ``<label>`` and ``has_<label>`` of each (:attr:`~mpnn_ip.labels.LabelSpec.columns`), the provenance."""
    names = list(LABELS) if labels is None else list(labels)
    unknown = [name for name in names if name not in LABELS]
    if unknown:
        raise DataError(
            f"the store holds label(s) {', '.join(unknown)} that are not registered (labels: {', '.join(LABELS)}); "
            "register them (mpnn_ip.outputs.register_label) before opening it"
        )
    label_columns = {column: kind for name in names for column, kind in LABELS[name].columns.items()}
    return {**STRUCTURE_COLUMNS, **label_columns, **PROVENANCE_COLUMNS}


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.db"


def summary_name(number: int) -> str:
    return f"shard-{number:05d}.summary.npz"


def graph_row(graph: AtomicGraph, schema: dict | None = None) -> dict:
    """The shard row of a graph (tensors in the dtype of ``schema``, contiguous); ``schema`` defaults to
    :func:`store_schema` of every label."""
    row = {}
    for key, kind in (schema or store_schema()).items():
        value = graph[key]
        if isinstance(kind, dict):
            row[key] = value.detach().to(kind["dtype"]).contiguous().cpu()
        elif kind is int:
            row[key] = int(value.reshape(-1)[0]) if isinstance(value, torch.Tensor) else int(value)
        else:
            row[key] = str(value)
    return row


def row_graph(row: dict) -> AtomicGraph:
    """The :class:`AtomicGraph` of a shard row (tensors copied: the database's buffers are read-only); a row
    of the table that the shard lacks is absent (masked; zeros, or an input's default)."""
    data = {key: value.clone() for key, value in row.items() if isinstance(value, torch.Tensor)}
    for name, spec in LABELS.items():
        if name not in data:
            data.update(spec.entries(None, data["pos"].shape[0]))
    graph = AtomicGraph(**data)
    graph.config_type = row["config_type"]
    graph.source_path = row["source_path"]
    graph.source_frame = torch.tensor([row["source_frame"]], dtype=torch.long)
    return graph


def read_manifest(folder) -> dict:
    """The manifest of the store in ``folder``; ``DataError`` when there is none or it is unreadable."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{Path(folder)} is not a graph store (no {MANIFEST}); write one with mpnn-preprocess ... out={folder}"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"the manifest of the store is unreadable ({exc}); re-run mpnn-preprocess to rebuild it", path=str(path)
        ) from None
    if manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{path} is not the manifest of an mpnn_ip graph store", path=str(path))
    return manifest


def version_problem(manifest: dict) -> str | None:
    """Why this mpnn_ip cannot read a store of ``manifest`` (another format version), or None."""
    version = manifest.get("format_version")
    if version == FORMAT_VERSION:
        return None
    return (
        f"it was written in store format version {version} (by mpnn_ip {manifest.get('mpnn_ip_version', '?')}); "
        f"this mpnn_ip reads version {FORMAT_VERSION}"
    )


class GraphStore:
    """Read-only access to a store folder: ``store[i]`` is the i-th graph, read from its shard on demand.

    Args:
        folder: the store folder (``out=`` of ``mpnn-preprocess``).

    Raises:
        DataError: no store there, or one of another format version (the message says to re-run
            ``mpnn-preprocess``), or a shard file missing.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        problem = version_problem(self.manifest)
        if problem is not None:
            raise DataError(
                f"cannot read the graph store {self.folder}: {problem}. Re-run mpnn-preprocess with out={self.folder} to rebuild it"
            )
        self.shards = self.manifest["shards"]
        #: the labels the store holds, and its shards' columns
        self.labels = list(self.manifest.get("labels", LEGACY_LABELS))
        self.schema = store_schema(self.labels)
        self._starts = [shard["start"] for shard in self.shards]
        for shard in self.shards:
            for name in (shard["file"], shard["summary"]):
                if not (self.folder / name).is_file():
                    raise DataError(
                        f"the graph store {self.folder} lacks {name}; re-run mpnn-preprocess with out={self.folder} to rebuild it"
                    )
        self._databases: dict[int, object] = {}
        self._inherited: list = []
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.manifest["num_frames"])

    def __getitem__(self, index: int) -> AtomicGraph:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} of a store of {len(self)} frames")
        number = bisect.bisect_right(self._starts, index) - 1
        return row_graph(self._database(number).get(index - self._starts[number]))

    def part(self, name: str) -> range | None:
        """Global indices of the ``train``/``val``/``test`` part, or None when the store has no such part."""
        span = self.manifest["parts"].get(name)
        return None if span is None else range(*span)

    @property
    def skipped_frames(self) -> list[Problem]:
        """The bad frames left out when the store was written (``on_error=skip``)."""
        return [Problem(**p) for p in self.manifest.get("skipped", [])]

    @property
    def species(self) -> list[int]:
        """Atomic numbers present in any frame of the store."""
        return list(self.manifest["species"])

    def changed_inputs(self) -> list[str]:
        """Input files whose size or modification time differ from when the store was written (a cheap check)."""
        changed = []
        for files in self.manifest["inputs"].values():
            for file in files:
                path = Path(file["path"])
                if path.is_file() and (path.stat().st_size, path.stat().st_mtime) != (file["size"], file["mtime"]):
                    changed.append(file["path"])
        return changed

    def summaries(self):
        """``(start, summary)`` per shard: the per-frame summary arrays (see :mod:`mpnn_ip.data.statistics`)."""
        for shard in self.shards:
            yield shard["start"], load_summary(self.folder / shard["summary"])

    def close(self) -> None:
        for database in self._databases.values():
            database.close()
        self._databases = {}

    def _database(self, number: int):
        from torch_geometric.data import SQLiteDatabase

        if os.getpid() != self._pid:  # a forked loader worker: the parent's connections are not ours to use or close
            self._inherited = list(self._databases.values())
            self._databases, self._pid = {}, os.getpid()
        if number not in self._databases:
            database = SQLiteDatabase(str(self.folder / self.shards[number]["file"]), TABLE, schema=self.schema)
            # SQLite keeps a 2 MiB page cache per connection, so memory would grow with the number of shards;
            # rows are read by primary key in random order, where the operating system's file cache serves as well
            database.cursor.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
            self._databases[number] = database
        return self._databases[number]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_databases": {}, "_inherited": []}


def save_summary(path: Path, summary: dict) -> None:
    arrays = {key: value for key, value in summary.items() if key != "num_edges"}
    arrays.update({f"num_edges_{r!r}": value for r, value in summary["num_edges"].items()})
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def load_summary(path: Path) -> dict:
    with np.load(path) as data:
        summary = {key: data[key] for key in data.files if not key.startswith("num_edges_")}
        summary["num_edges"] = {
            float(key[len("num_edges_") :]): data[key] for key in data.files if key.startswith("num_edges_")
        }
    return summary


def stack_summaries(rows: list[dict]) -> dict:
    """One summary of many frames' rows (:func:`~mpnn_ip.data.statistics.frame_summaries`)."""
    species = np.unique(np.concatenate([row["species"] for row in rows])) if rows else np.zeros(0, dtype=np.int64)
    counts = np.zeros((len(rows), len(species)), dtype=np.int64)
    for i, row in enumerate(rows):
        counts[i, np.searchsorted(species, row["species"])] = row["counts"][0]
    columns = ("energy", "force_sq_sum", *(spec.mask for spec in FITTED_LABELS.values()))
    stacked = {key: np.concatenate([row[key] for row in rows]) if rows else np.zeros(0) for key in columns}
    radii = rows[0]["num_edges"].keys() if rows else ()
    stacked["num_edges"] = {r: np.concatenate([row["num_edges"][r] for row in rows]) for r in radii}
    return {"species": species, "counts": counts, **stacked}
