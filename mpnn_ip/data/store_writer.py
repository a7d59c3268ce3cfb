"""Write a graph store (:mod:`mpnn_ip.data.store`) from data files, frame by frame.

Each file is streamed with ``ase.io.iread`` and every frame goes through the checks of
:func:`~mpnn_ip.data.read_dataset` (same reader settings, same errors, same ``on_error``); at
most ``CHUNK`` graphs are held before they are written. A file ASE cannot stream (e.g. extxyz
headers with blanks around ``=``, a frame that does not parse under ``on_error=skip``) is read
whole by :func:`~mpnn_ip.data.reading.read_frames` from the frame where streaming stopped.

Frames lacking a label that other frames of their file have are kept with the label masked, as in
memory, but not listed (``mpnn-check-data`` lists them). Re-running on unchanged inputs (the same
files, by path and sha256, the same reader settings, the same format version) reuses the store; otherwise it is rebuilt and the message says what changed. A store is
built in a temporary folder next to ``out`` and moved in place when complete, so an interrupted
run leaves the previous store as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import ase.io
import numpy as np

from mpnn_ip.data import reading
from mpnn_ip.data.problems import Problem, errors_of, problems_error
from mpnn_ip.data.reader_options import ReaderOptions
from mpnn_ip.data.reading import check_on_error, expand_paths
from mpnn_ip.data.statistics import StatisticsAccumulator, edge_counts, frame_summaries
from mpnn_ip.data.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LEGACY_LABELS,
    MANIFEST,
    TABLE,
    GraphStore,
    graph_row,
    load_summary,
    read_manifest,
    save_summary,
    shard_name,
    stack_summaries,
    store_schema,
    summary_name,
    version_problem,
)
from mpnn_ip.elements import atomic_numbers
from mpnn_ip.errors import ConfigError, DataError
from mpnn_ip.outputs import LABELS

#: Graphs held in memory before they are written to the current shard.
CHUNK = 256
DEFAULT_SHARD_SIZE = 10_000
PARTS = ("train", "val", "test")


def write_store(
    out,
    train_path,
    val_path=None,
    test_path=None,
    *,
    read_options: ReaderOptions | dict | None = None,
    species: Sequence | None = None,
    on_error: str = "raise",
    r_max: Sequence[float] = (5.0,),
    shard_size: int = DEFAULT_SHARD_SIZE,
    rebuild: bool = False,
) -> tuple[dict, str]:
    """Write (or reuse) the store of ``train_path`` (and ``val_path``/``test_path``) in the folder ``out``.

    Args:
        out: the store folder; it must be empty, absent, or hold a store.
        train_path, val_path, test_path: files or glob patterns, as ``data.*_path`` of training.
        read_options: how files are read: a :class:`~mpnn_ip.data.reader_options.ReaderOptions`, or its flat
            keywords (``{"energy_key": ...}``); ``None`` = the defaults. Recorded in the manifest as flat keywords;
            a store holds every row of the label table, labels and inputs (the manifest's ``labels``).
        species, on_error: as :class:`~mpnn_ip.data.AtomicDataModule`'s.
        r_max: cutoffs (Å) whose neighbour counts are stored (the statistics' mean neighbour count).
            Counts for a cutoff an existing store lacks are added without rebuilding it.
        shard_size: frames per shard file.
        rebuild: write a new store even when the existing one is up to date.

    Returns ``(manifest, what_happened)``: ``"reused ..."``, ``"written"`` or ``"rebuilt: <why>"``.
    """
    check_on_error(on_error)
    if int(shard_size) < 1:
        raise ConfigError(f"shard_size={shard_size} must be a positive number of frames")
    out = Path(out)
    inputs = {
        part: expand_paths(path) for part, path in zip(PARTS, (train_path, val_path, test_path)) if path is not None
    }
    options = ReaderOptions.coerce(read_options)
    settings = {
        **options.as_settings(),
        "species": None if species is None else atomic_numbers(species),
        "on_error": on_error,
    }
    fingerprints = {part: [_fingerprint(path) for path in paths] for part, paths in inputs.items()}
    reason = _rebuild_reason(out, settings, fingerprints) if not rebuild else "rebuild=true"
    if reason is None:
        added = add_neighbour_counts(out, r_max)
        return read_manifest(out), "reused (same input files and reader settings)" + (
            f"; added neighbour counts for r_max={added}" if added else ""
        )
    building = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        manifest = _write(building, inputs, options, settings, fingerprints, [float(r) for r in r_max], shard_size)
        _replace(out, building)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return manifest, "written" if reason == "new" else f"rebuilt: {reason}"


def stream_graphs(path: str, *, read_options: ReaderOptions, allowed, on_error: str, problems: list) -> Iterator:
    """The good frames of one file as :class:`AtomicGraph`, one at a time; bad ones go to ``problems`` (or raise)."""
    index, format = read_options.index, read_options.format
    where = str(path) if index in (":", slice(None)) else f"{path} (index={index!r})"
    kinds: dict = {}  # one frame per kind of labels present: what the missing-key checks need
    found: list[Problem] = []
    frames, frame = ase.io.iread(str(path), index=index, format=format), 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception:  # noqa: BLE001 - ASE raises many types; read_frames reports them with file and frame
            remaining = reading.read_frames(
                path, index=index, format=format, unreadable=found if on_error == "skip" else None
            )[frame:]
            if not remaining:
                break
            frames, atoms = iter(remaining[1:]), remaining[0]
        if atoms is not None:  # None: a frame read_frames could not parse, already in ``found``
            kinds.setdefault(_label_kind(atoms), atoms)
            try:
                yield reading.frame_graph(atoms, read_options, allowed, where, frame)
            except DataError as exc:
                found.append(Problem.from_error(exc, where, frame))
        frame += 1
    if frame == 0:
        raise DataError(f"no frames read (index={index!r})", path=str(path))
    reading.labels_found(list(kinds.values()), read_options, path)
    errors = errors_of(found)
    if errors and on_error == "raise":
        raise problems_error(errors)
    if len(errors) == frame:
        raise problems_error(errors)
    problems.extend(errors)


def add_neighbour_counts(folder, r_max: Sequence[float]) -> list[float]:
    """Add the neighbour counts for cutoffs the store lacks (read from its own graphs); returns those added."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    missing = [float(r) for r in r_max if float(r) not in manifest["r_max"]]
    if not missing:
        return []
    store = GraphStore(folder)
    for shard in manifest["shards"]:
        summary = load_summary(folder / shard["summary"])
        for r in missing:
            summary["num_edges"][r] = _counts(store, range(shard["start"], shard["start"] + shard["count"]), r)
        save_summary(folder / shard["summary"], summary)
    store.close()
    manifest["r_max"] = sorted(manifest["r_max"] + missing)
    _write_manifest(folder, manifest)
    return missing


def _counts(store: GraphStore, indices, r_max: float) -> np.ndarray:
    return edge_counts([store[i] for i in indices], r_max)


def _write(
    folder: Path,
    inputs: dict,
    read_options: ReaderOptions,
    settings: dict,
    fingerprints: dict,
    radii: list[float],
    shard_size: int,
) -> dict:
    from torch_geometric.data import SQLiteDatabase

    started = time.perf_counter()
    allowed, on_error = settings["species"], settings["on_error"]
    labels, schema = list(LABELS), store_schema()
    statistics = StatisticsAccumulator(radii[0])
    shards, parts, skipped, species = [], {}, [], set()
    rows, summaries, database, total = [], [], None, 0

    def flush(final: bool = False):
        nonlocal rows, summaries, database
        if rows:
            start = shards[-1]["count"]
            database.multi_insert(range(start, start + len(rows)), rows)
            shards[-1]["count"] += len(rows)
            rows = []
        if database is not None and (final or shards[-1]["count"] >= shard_size):
            database.close()
            save_summary(folder / shards[-1]["summary"], stack_summaries(summaries))
            database, summaries = None, []

    for part, paths in inputs.items():
        first = total
        for number, path in enumerate(paths):
            problems: list[Problem] = []
            written = 0
            for graph in stream_graphs(
                path, read_options=read_options, allowed=allowed, on_error=on_error, problems=problems
            ):
                if database is None:
                    shards.append(
                        {
                            "file": shard_name(len(shards)),
                            "summary": summary_name(len(shards)),
                            "start": total,
                            "count": 0,
                        }
                    )
                    database = SQLiteDatabase(str(folder / shards[-1]["file"]), TABLE, schema=schema)
                summary = frame_summaries([graph], radii)
                summaries.append(summary)
                species.update(summary["species"].tolist())
                if part == "train":
                    statistics.add(summary)
                rows.append(graph_row(graph, schema))
                total, written = total + 1, written + 1
                if len(rows) >= CHUNK or shards[-1]["count"] + len(rows) >= shard_size:
                    flush()
            fingerprints[part][number].update(frames_written=written, frames_skipped=len(problems))
            skipped.extend(p.as_dict() for p in problems)
        parts[part] = [first, total]
    flush(final=True)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "mpnn_ip_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reader_settings": settings,
        "labels": labels,
        "inputs": fingerprints,
        "parts": parts,
        "num_frames": total,
        "species": sorted(int(z) for z in species),
        "shards": shards,
        "r_max": radii,
        "skipped": skipped,
        "statistics_of_all_training_frames": statistics.result(),
        "write_time_s": round(time.perf_counter() - started, 3),
    }
    _write_manifest(folder, manifest)
    return manifest


def _rebuild_reason(out: Path, settings: dict, fingerprints: dict) -> str | None:
    """None when the store in ``out`` was written from the same inputs and settings, else why it is (re)built."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    if not (out / MANIFEST).is_file():
        raise DataError(f"{out} exists and is not a graph store (no {MANIFEST}); give an empty or new folder as out=")
    try:
        manifest = read_manifest(out)
    except DataError as exc:
        return str(exc)
    problem = version_problem(manifest)
    if problem is not None:
        return problem
    held = manifest.get("labels", LEGACY_LABELS)
    lacking = [name for name in LABELS if name not in held]
    if lacking:
        return f"the store has no columns for {', '.join(lacking)} (written before they were rows of the label table)"
    old = manifest["reader_settings"]
    changed = [
        f"{key} {old.get(key)!r} -> {settings.get(key)!r}"
        for key in {**old, **settings}
        if old.get(key) != settings.get(key)
    ]
    if changed:
        return "reader settings changed: " + ", ".join(changed)
    for part in sorted(set(fingerprints) | set(manifest["inputs"])):
        before = {(f["path"], f["sha256"]) for f in manifest["inputs"].get(part, [])}
        now = {(f["path"], f["sha256"]) for f in fingerprints.get(part, [])}
        if before != now:
            names = sorted({path for path, _ in before ^ now})
            return f"{part} input changed: {', '.join(names)} (new, removed or different content)"
    return None


def _fingerprint(path: str) -> dict:
    """Path, size, mtime and sha256 (streamed) of an input file; a missing, empty or non-regular file is a DataError."""
    file = Path(path)
    if not file.exists():
        raise DataError("file not found", path=str(path))
    if not file.is_file():
        raise DataError("is not a regular file", path=str(path))
    stat = file.stat()
    if stat.st_size == 0:
        raise DataError("file is empty", path=str(path))
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest.hexdigest()}


def _label_kind(atoms) -> tuple:
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    return frozenset(atoms.info), frozenset(atoms.arrays), frozenset(results), tuple(bool(p) for p in atoms.pbc)


def _replace(out: Path, built: Path) -> None:
    """Move the complete store ``built`` to ``out``, then delete the old one (never a half-written ``out``)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    built.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _write_manifest(folder: Path, manifest: dict) -> None:
    temporary = folder / f"{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    temporary.replace(folder / MANIFEST)


def _version() -> str:
    import mpnn_ip

    return mpnn_ip.__version__
