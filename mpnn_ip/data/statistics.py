"""Statistics of a training split that set a model's hyperparameters (stored in checkpoints).

One implementation for data in memory and in an on-disk store: frames become per-frame summaries
(:func:`frame_summaries`: atoms per species, energy, sum of squared forces, label flags, neighbour
counts within each cutoff), and :class:`StatisticsAccumulator` sums them in one pass. A store keeps
one summary row per frame, so any split's statistics are a pass over those rows, never over graphs;
:func:`compute_statistics` runs the same accumulator over summaries of graphs in memory.

Least squares from accumulated normal equations: with ``A`` [frames, species] the atom counts and
``b`` the energies, ``AᵀA`` and ``Aᵀb`` are sums over frames; the minimum-norm solution
``pinv(AᵀA) Aᵀb`` equals ``pinv(A) b``, what ``numpy.linalg.lstsq(A, b)`` returns. The per-atom
remainders after E0 (mean, RMS, per-species ``energy_shifts``) are quadratic forms in E0 of sums
accumulated in the same pass (``Σu``, ``Σu²``, ``Σu v``, ``Σv vᵀ`` with ``u = E/N``,
``v = counts/N``). All sums run over arrays indexed by atomic number, so nothing depends on which
species come first.

Neighbours are counted by one batched counter (:func:`neighbour_counts`, the radius graph of
:mod:`mpnn_ip.graph`), which ``mpnn-check-data`` and the store use too.

Everything returned is a plain python value (int, float, str, list, dict) so it can go into a
checkpoint loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from mpnn_ip.data.atomic_graph import AtomicGraph, collate
from mpnn_ip.errors import DataError
from mpnn_ip.graph.neighbours import neighbours_per_atom
from mpnn_ip.outputs import FITTED_LABELS

#: Atomic numbers 0..118 index the accumulated sums.
_NUM_Z = 119
#: Relative cut-off on the singular values of a normal matrix (their squares are ``A``'s): directions
#: the data cannot resolve (a fixed composition) get no component, as ``lstsq`` of ``A`` gives them.
_NORMAL_RCOND = 1e-12
#: Atoms per batch of the neighbour counter (bounds its memory).
NEIGHBOUR_CHUNK_ATOMS = 20000


def compute_statistics(
    graphs: Sequence[AtomicGraph],
    r_max: float,
    isolated_atom_energies: Mapping[int, float] | None = None,
    *,
    species: Sequence[int] | None = None,
) -> dict:
    """Per-species E0, force RMS, energy spread and mean neighbour count of ``graphs``.

    Args:
        graphs: the training frames.
        r_max: cutoff (Å) used to count neighbours.
        isolated_atom_energies: ``{Z: eV}``; when given these are the E0s (every species seen
            must have one), otherwise E0s are fitted.
        species: atomic numbers the model must know besides those seen (e.g. the configured
            species); one absent from ``graphs`` gets its isolated-atom energy, or 0.0 from the fit.

    Returns a dict with:
        species: sorted atomic numbers seen, plus ``species`` (list of int).
        e0s: ``{Z: eV}``. Without isolated-atom energies: least squares of total energies on the
            per-species atom counts over frames that have an energy. When that system is
            rank-deficient (e.g. one species at a fixed composition, or two species always in
            the same ratio) the minimum-norm solution of ``numpy.linalg.lstsq`` is used; any
            solution reproduces the fitted energies equally well, the model learns the rest.
            All zeros when no frame has an energy.
        e0s_source: ``"isolated_atoms"``, ``"least_squares"`` or ``"none (no energies)"``.
        force_rms: eV/Å, root mean square of all force components over frames with forces;
            1.0 when no frame has forces (then ``force_rms_source`` says so).
        force_rms_source: ``"data"`` or the reason for the fallback.
        energy_per_atom_mean_after_e0, energy_per_atom_rms_after_e0: eV per atom, mean and root
            mean square of ``(E - sum_i E0[Z_i]) / N`` over frames with energy (0.0 if none).
        energy_shifts: ``{Z: eV}``, per-species energy per atom left after E0 (the models' initial
            ``energy_shift``): the mean of ``(E - sum_i E0[Z_i]) / N`` for every species, plus the
            minimum-norm least-squares per-species correction that the compositions can tell apart
            (rows per frame: atom fractions of each species -> that frame's remainder per atom).
            A single composition therefore gets one shift for all species; near 0 when the E0s
            are themselves the least-squares fit, about the binding energy per atom when they are
            isolated-atom energies. Species without atoms in the data get the mean.
        avg_num_neighbors: mean number of neighbours within ``r_max`` per atom, periodic images
            counted (:func:`neighbour_counts`, the counter ``mpnn-check-data`` and the store use too).
        num_frames, num_atoms, num_frames_with_energy, num_frames_with_forces,
        num_frames_with_stress: counts; r_max: the cutoff (Å).
    """
    if len(graphs) == 0:
        raise DataError("cannot compute statistics of an empty training set")
    accumulator = StatisticsAccumulator(r_max)
    accumulator.add(frame_summaries(graphs, [r_max]))
    return accumulator.result(isolated_atom_energies, species=species)


def neighbour_counts(
    graphs: Sequence[AtomicGraph], r_max: float, chunk_atoms: int = NEIGHBOUR_CHUNK_ATOMS
) -> np.ndarray:
    """Neighbours within ``r_max`` (Å) of every atom of every frame, periodic images counted:
    ``[total atoms]`` int64, frames in order (batches of up to ``chunk_atoms`` atoms)."""
    counts, start = [], 0
    while start < len(graphs):
        stop, atoms = start, 0
        while stop < len(graphs) and (stop == start or atoms + graphs[stop].num_atoms <= chunk_atoms):
            atoms += graphs[stop].num_atoms
            stop += 1
        batch = collate(graphs[start:stop])
        counts.append(neighbours_per_atom(batch.pos, batch.cell, batch.pbc, batch.batch, r_max).numpy())
        start = stop
    return np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, dtype=np.int64)


def edge_counts(graphs: Sequence[AtomicGraph], r_max: float) -> np.ndarray:
    """Directed neighbour pairs within ``r_max`` (Å) of each frame: ``[frames]`` int64."""
    if len(graphs) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum([0] + [g.num_atoms for g in graphs[:-1]])
    return np.add.reduceat(neighbour_counts(graphs, r_max), starts).astype(np.int64)


def frame_summaries(graphs: Sequence[AtomicGraph], r_max_values: Iterable[float]) -> dict:
    """The per-frame summary arrays of ``graphs`` that :meth:`StatisticsAccumulator.add` takes (and a store keeps).

    Keys: ``species [S]`` (atomic numbers present), ``counts [F, S]`` atoms per species,
    ``energy [F]`` eV, the mask of every label (not input) of the table (``has_energy``, ``has_forces``,
    ``has_stress`` ... ``[F]`` bool), ``force_sq_sum [F]`` (eV/Å)², ``num_edges``
    ``{r_max: [F] directed pairs within r_max}`` for each cutoff.
    """
    numbers = [g.atomic_numbers.numpy() for g in graphs]
    species = np.unique(np.concatenate(numbers)).astype(np.int64)
    counts = np.stack([np.count_nonzero(n[:, None] == species[None, :], axis=0) for n in numbers]).astype(np.int64)
    masks = {spec.mask: np.array([bool(g[spec.mask].item()) for g in graphs]) for spec in FITTED_LABELS.values()}
    return {
        "species": species,
        "counts": counts,
        "energy": np.array([float(g.energy.item()) for g in graphs]),
        **masks,
        "force_sq_sum": np.array(
            [float(np.sum(g.forces.numpy() ** 2)) if f else 0.0 for g, f in zip(graphs, masks["has_forces"])]
        ),
        "num_edges": {float(r): edge_counts(graphs, r) for r in r_max_values},
    }


class StatisticsAccumulator:
    """Sums over frames (their summaries) from which :meth:`result` gives the statistics of :func:`compute_statistics`.

    Args:
        r_max: cutoff (Å) of the mean neighbour count; every added summary must count it.
    """

    def __init__(self, r_max: float):
        self.r_max = float(r_max)
        self.num_frames = self.num_atoms = self.num_edges = 0
        self.num_with_energy = self.num_with_forces = self.num_with_stress = 0
        self.force_sq_sum, self.force_components = 0.0, 0
        self.atoms_per_species = np.zeros(_NUM_Z, dtype=np.int64)
        # Energies enter as remainders after a reference E0 (the least-squares fit of the first frames
        # added): the sums then hold remainder-sized numbers, so that the RMS and the fit do not lose
        # the meV of a remainder to the cancellation of energies of thousands of eV.
        self.reference = None  # [_NUM_Z] eV per atom of each species
        self.counts_gram = np.zeros((_NUM_Z, _NUM_Z))  # AᵀA over frames with energy
        self.counts_energy = np.zeros(_NUM_Z)  # Aᵀb, b = E - A·reference
        self.sum_u = self.sum_u2 = 0.0  # u = (E - counts·reference)/N
        self.sum_v = np.zeros(_NUM_Z)  # v = counts/N
        self.sum_uv = np.zeros(_NUM_Z)
        self.sum_vv = np.zeros((_NUM_Z, _NUM_Z))

    def add_graph(self, graph: AtomicGraph) -> None:
        """Add one :class:`~mpnn_ip.data.AtomicGraph` (its neighbours are counted here)."""
        self.add(frame_summaries([graph], [self.r_max]))

    def add(self, summary: Mapping, rows: np.ndarray | None = None) -> None:
        """Add the frames of ``summary`` (arrays as :func:`frame_summaries` returns, any number of rows).

        ``rows``: a boolean mask or indices of the rows to add; ``None`` = all.
        """
        select = (lambda a: a) if rows is None else (lambda a: a[rows])
        if self.r_max not in summary["num_edges"]:
            raise DataError(
                f"the frame summaries count neighbours within {sorted(summary['num_edges'])} Å, not r_max={self.r_max:g} Å"
            )
        species = np.asarray(summary["species"], dtype=np.int64)
        counts = np.zeros((len(summary["energy"]), _NUM_Z))
        counts[:, species] = summary["counts"]
        counts = select(counts)
        energy, has_energy = (
            select(np.asarray(summary["energy"])),
            select(np.asarray(summary["has_energy"], dtype=bool)),
        )
        has_forces = select(np.asarray(summary["has_forces"], dtype=bool))
        atoms = counts.sum(axis=1)
        self.num_frames += len(energy)
        self.num_atoms += int(atoms.sum())
        self.num_edges += int(select(np.asarray(summary["num_edges"][self.r_max])).sum())
        self.atoms_per_species += counts.sum(axis=0).astype(np.int64)
        self.num_with_forces += int(has_forces.sum())
        self.num_with_stress += int(select(np.asarray(summary["has_stress"], dtype=bool)).sum())
        self.force_sq_sum += float(select(np.asarray(summary["force_sq_sum"]))[has_forces].sum())
        self.force_components += int(3 * atoms[has_forces].sum())
        a, b = counts[has_energy], energy[has_energy]
        if self.reference is None and len(b):
            self.reference = np.zeros(_NUM_Z)
            present = np.flatnonzero(a.sum(axis=0))
            self.reference[present] = np.linalg.lstsq(a[:, present], b, rcond=None)[0]
        if self.reference is not None:
            b = b - a @ self.reference
        u, v = b / atoms[has_energy], a / atoms[has_energy, None]
        self.num_with_energy += len(b)
        self.counts_gram += a.T @ a
        self.counts_energy += a.T @ b
        self.sum_u += float(u.sum())
        self.sum_u2 += float(u @ u)
        self.sum_v += v.sum(axis=0)
        self.sum_uv += v.T @ u
        self.sum_vv += v.T @ v

    def result(
        self, isolated_atom_energies: Mapping[int, float] | None = None, *, species: Iterable[int] | None = None
    ) -> dict:
        """The statistics dict described in :func:`compute_statistics`."""
        if self.num_frames == 0:
            raise DataError("cannot compute statistics of an empty training set")
        seen = {int(z) for z in np.flatnonzero(self.atoms_per_species)}
        zs = sorted(seen | {int(z) for z in species or ()})
        e0s, e0s_source = self._e0s(zs, isolated_atom_energies)
        reference = self.reference[zs] if self.reference is not None else np.zeros(len(zs))
        mean, rms, shifts = self._remainders(zs, np.array([e0s[z] for z in zs]) - reference)
        if self.num_with_forces:
            force_rms, force_rms_source = float(np.sqrt(self.force_sq_sum / self.force_components)), "data"
        else:
            force_rms, force_rms_source = 1.0, "default 1.0: no frame of the training data has forces"
        return {
            "species": zs,
            "e0s": e0s,
            "e0s_source": e0s_source,
            "force_rms": force_rms,
            "force_rms_source": force_rms_source,
            "energy_per_atom_mean_after_e0": mean,
            "energy_per_atom_rms_after_e0": rms,
            "energy_shifts": shifts,
            "avg_num_neighbors": float(self.num_edges / self.num_atoms),
            "num_frames": self.num_frames,
            "num_atoms": self.num_atoms,
            "num_frames_with_energy": self.num_with_energy,
            "num_frames_with_forces": self.num_with_forces,
            "num_frames_with_stress": self.num_with_stress,
            "r_max": self.r_max,
        }

    def _e0s(self, zs: list[int], isolated_atom_energies) -> tuple[dict, str]:
        if isolated_atom_energies is not None:
            given = {int(z): float(e) for z, e in isolated_atom_energies.items()}
            missing = [z for z in zs if z not in given]
            if missing:
                raise DataError(
                    f"isolated-atom energies are missing for atomic numbers {missing} (given: {sorted(given)})"
                )
            return {z: given[z] for z in zs}, "isolated_atoms"
        if self.num_with_energy == 0:
            return {z: 0.0 for z in zs}, "none (no energies)"
        correction = _min_norm_solve(self.counts_gram[np.ix_(zs, zs)], self.counts_energy[zs])
        return {z: float(self.reference[z] + c) for z, c in zip(zs, correction)}, "least_squares"

    def _remainders(self, zs: list[int], e0: np.ndarray) -> tuple[float, float, dict]:
        """Mean and RMS of the energy per atom after E0, and the per-species shifts (see :func:`compute_statistics`).

        ``e0``: [len(zs)] eV, the E0s minus the reference the sums were taken after.
        """
        frames = self.num_with_energy
        if frames == 0:
            return 0.0, 0.0, {z: 0.0 for z in zs}
        sum_v, sum_uv, sum_vv = self.sum_v[zs], self.sum_uv[zs], self.sum_vv[np.ix_(zs, zs)]
        mean = (self.sum_u - e0 @ sum_v) / frames
        square = (self.sum_u2 - 2 * e0 @ sum_uv + e0 @ sum_vv @ e0) / frames
        # least squares of the per-atom remainder minus its mean on the atom fractions v
        correction = _min_norm_solve(sum_vv, sum_uv - sum_vv @ e0 - mean * sum_v)
        shifts = {z: float(mean + c) for z, c in zip(zs, correction)}
        return float(mean), float(np.sqrt(max(square, 0.0))), shifts


def _min_norm_solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``pinv(gram) @ rhs``: the minimum-norm least-squares solution of ``A x = b`` from ``AᵀA`` and ``Aᵀb``."""
    solution, *_ = np.linalg.lstsq(gram, rhs, rcond=_NORMAL_RCOND)
    return solution
