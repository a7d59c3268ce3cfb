"""Checks of a whole dataset, beyond one frame: duplicates, energy outliers, and its statistics.

Per-frame checks (labels, NaN/inf, shapes, close atoms, cells, species) live in the reader
(:func:`mpnn_ip.data.read_dataset`); :func:`check_data` runs them on every frame of every file
without stopping, adds the dataset-level warnings and describes the data
(``mpnn-check-data`` prints its result).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from mpnn_ip.data.atomic_graph import AtomicGraph
from mpnn_ip.data.problems import Problem
from mpnn_ip.data.reader_options import ReaderOptions
from mpnn_ip.data.reading import expand_paths, read_dataset
from mpnn_ip.data.statistics import neighbour_counts
from mpnn_ip.elements import symbols
from mpnn_ip.errors import DataError
from mpnn_ip.outputs import FITTED_LABELS, INPUTS

#: Default outlier threshold: standard deviations of the per-atom energy residual. 8 is quiet on the
#: reference sets (ab initio MD, the synthetic set) and flags only the most extreme of Ta's volume
#: scans; energies in a wrong unit or of another reference are off by hundreds.
DEFAULT_OUTLIER_SIGMA = 8.0
#: Positions and cells are compared after rounding to this many decimals (Å) to find duplicates.
DUPLICATE_DECIMALS = 6
#: Floor of the residual spread (eV/atom), so that a fit that is exact for all other frames
#: (few frames, one composition) does not turn round-off into outliers.
MIN_RESIDUAL_SCALE = 1e-3


def check_data(
    paths: Sequence[str],
    *,
    r_max: float = 5.0,
    species=None,
    outlier_sigma: float | None = DEFAULT_OUTLIER_SIGMA,
    options: ReaderOptions | None = None,
    **reader_keywords,
) -> dict:
    """Every problem of every frame of ``paths`` (files or glob patterns), and the statistics of the good frames.

    ``options`` (or, when None, ``reader_keywords``: ``energy_key=`` ...) say how files are read, as for
    :func:`mpnn_ip.data.read_dataset`. A file that cannot be read at
    all is one problem with ``frame`` None. Returns ``{"files": [str], "problems": [Problem],
    "statistics": dict}`` (see :func:`dataset_statistics`; statistics cover the frames without errors).
    """
    options = ReaderOptions.from_keywords(**reader_keywords) if options is None else options
    files, problems, graphs = [], [], []
    for pattern in paths:
        try:
            matched = expand_paths(pattern)
        except DataError as exc:
            problems.append(Problem.from_error(exc, str(pattern)))
            continue
        for path in matched:
            files.append(path)
            try:
                graphs.extend(read_dataset(path, options, species=species, on_error="skip", problems=problems))
            except DataError as exc:
                problems.append(Problem(path, exc.frame, "unreadable", exc.problem))
    problems.extend(dataset_problems(graphs, outlier_sigma))
    return {"files": files, "problems": problems, "statistics": dataset_statistics(graphs, r_max)}


def dataset_problems(
    graphs: Sequence[AtomicGraph], outlier_sigma: float | None = DEFAULT_OUTLIER_SIGMA
) -> list[Problem]:
    """Warnings about ``graphs`` as a whole: duplicated frames and energy-per-atom outliers."""
    problems = find_duplicates(graphs)
    if outlier_sigma is not None and outlier_sigma > 0:
        problems += find_energy_outliers(graphs, outlier_sigma)
    return problems


def find_duplicates(graphs: Sequence[AtomicGraph], decimals: int = DUPLICATE_DECIMALS) -> list[Problem]:
    """A warning for each frame with the same species, positions, cell and pbc as an earlier one (hashes, O(n))."""
    first_seen: dict[bytes, AtomicGraph] = {}
    problems = []
    for graph in graphs:
        key = _structure_hash(graph, decimals)
        original = first_seen.setdefault(key, graph)
        if original is not graph:
            problems.append(
                Problem(
                    *_where(graph),
                    "duplicate",
                    f"same species, positions and cell as file {_where(original)[0]}, frame {_where(original)[1]} "
                    "(it counts twice in the loss; across splits it leaks test data into training)",
                    "warning",
                )
            )
    return problems


def find_energy_outliers(graphs: Sequence[AtomicGraph], sigma: float = DEFAULT_OUTLIER_SIGMA) -> list[Problem]:
    """A warning for each frame whose energy per atom is more than ``sigma`` standard deviations off a per-species fit.

    Fit: least squares of total energies (eV) on per-species atom counts over the frames with an
    energy. Each frame's residual per atom is compared with the mean and standard deviation of
    the residuals of all other frames (leave one out: a wild frame does not hide by inflating the
    spread, even in a small set; at least 1 meV/atom). Needs more frames than species + 1.
    """
    labelled = [g for g in graphs if bool(g.has_energy)]
    species = sorted({int(z) for g in labelled for z in g.atomic_numbers.unique().tolist()})
    n = len(labelled)
    if n < len(species) + 2:
        return []
    counts = np.array([[int((g.atomic_numbers == z).sum()) for z in species] for g in labelled], dtype=np.float64)
    energies = np.array([float(g.energy.item()) for g in labelled])
    e0s, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    residual = (energies - counts @ e0s) / counts.sum(axis=1)
    others_mean = (residual.sum() - residual) / (n - 1)
    others_var = ((residual**2).sum() - residual**2) / (n - 1) - others_mean**2
    scale = np.sqrt(np.maximum(others_var, MIN_RESIDUAL_SCALE**2))
    deviation = (residual - others_mean) / scale
    return [
        Problem(
            *_where(graph),
            "energy_outlier",
            f"energy per atom is {residual[k] - others_mean[k]:+.4g} eV/atom off a per-species fit: {abs(deviation[k]):.1f} "
            f"standard deviations of the other frames ({scale[k]:.3g} eV/atom; threshold {sigma:g}): "
            "check its units, label key or convergence",
            "warning",
        )
        for k, graph in enumerate(labelled)
        if abs(deviation[k]) > sigma
    ]


def dataset_statistics(graphs: Sequence[AtomicGraph], r_max: float) -> dict:
    """What the data holds: frame and atom counts, elements, label coverage, force RMS (eV/Å), neighbours within ``r_max`` (Å).

    Returns a dict of plain values: ``frames``, ``atoms`` {total, min, max per frame}, ``elements``
    {symbol: {atoms, frames}}, ``labels`` {label: frames with it, for every label of the table}, ``inputs``
    {input: frames with it (the others hold its default), for every input of the table}, ``force_rms``
    (None without forces), ``neighbours`` {r_max, mean, min, max per atom} (periodic images counted).
    """
    sizes = np.array([g.num_atoms for g in graphs], dtype=np.int64)
    elements: dict[int, list[int]] = {}
    for graph in graphs:
        z, n = np.unique(graph.atomic_numbers.numpy(), return_counts=True)
        for zi, ni in zip(z.tolist(), n.tolist()):
            atoms_frames = elements.setdefault(zi, [0, 0])
            atoms_frames[0] += ni
            atoms_frames[1] += 1
    forces = [g.forces.numpy() for g in graphs if bool(g.has_forces)]
    neighbours = neighbour_counts(graphs, r_max)
    return {
        "frames": len(graphs),
        "atoms": {
            "total": int(sizes.sum()),
            "min": int(sizes.min()) if len(sizes) else 0,
            "max": int(sizes.max()) if len(sizes) else 0,
        },
        "elements": {symbols([z])[0]: {"atoms": a, "frames": f} for z, (a, f) in sorted(elements.items())},
        "labels": {name: int(sum(bool(g[spec.mask]) for g in graphs)) for name, spec in FITTED_LABELS.items()},
        "inputs": {name: int(sum(bool(g[spec.mask]) for g in graphs)) for name, spec in INPUTS.items()},
        "force_rms": float(np.sqrt(np.mean(np.concatenate(forces) ** 2))) if forces else None,
        "neighbours": {
            "r_max": float(r_max),
            "mean": float(neighbours.mean()) if neighbours.size else 0.0,
            "min": int(neighbours.min()) if neighbours.size else 0,
            "max": int(neighbours.max()) if neighbours.size else 0,
        },
    }


def _structure_hash(graph: AtomicGraph, decimals: int) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(graph.atomic_numbers.numpy().astype(np.int64).tobytes())
    for array in (graph.pos.numpy(), graph.cell.numpy()):
        digest.update((np.round(array.astype(np.float64), decimals) + 0.0).tobytes())  # + 0.0: -0.0 and 0.0 alike
    digest.update(graph.pbc.numpy().astype(bool).tobytes())
    return digest.digest()


def _where(graph: AtomicGraph) -> tuple[str, int | None]:
    """(file, frame) a graph was read from (``("?", None)`` for one built in memory)."""
    frame = getattr(graph, "source_frame", None)
    return str(getattr(graph, "source_path", None) or "?"), None if frame is None else int(frame.reshape(-1)[0])
