"""Training-split statistics in one streaming pass: the same dict as :func:`~mpnn_ip.data.compute_statistics`.

Frames enter as per-frame summaries (:func:`frame_summary`: atoms per species, energy, sum of
squared forces, neighbour counts within each cutoff), alone or as arrays of many
(:meth:`StatisticsAccumulator.add`), so an on-disk store keeps one small summary row per frame
and any split's statistics are a pass over those rows, never over the graphs.

Least squares from accumulated normal equations: with ``A`` [frames, species] the atom counts and
``b`` the energies, ``AᵀA`` and ``Aᵀb`` are sums over frames; the minimum-norm solution
``pinv(AᵀA) Aᵀb`` equals ``pinv(A) b``, what ``numpy.linalg.lstsq(A, b)`` returns. The per-atom
remainders after E0 (mean, RMS, per-species ``energy_shifts``) are quadratic forms in E0 of sums
accumulated in the same pass (``Σu``, ``Σu²``, ``Σu v``, ``Σv vᵀ`` with ``u = E/N``,
``v = counts/N``). All sums run over arrays indexed by atomic number, so nothing depends on which
species come first.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from mpnn_ip.data.statistics import _fit_e0s
from mpnn_ip.errors import DataError

#: Atomic numbers 0..118 index the accumulated sums.
_NUM_Z = 119
#: Relative cut-off on the singular values of a normal matrix (their squares are ``A``'s): directions
#: the data cannot resolve (a fixed composition) get no component, as ``lstsq`` of ``A`` gives them.
_NORMAL_RCOND = 1e-12


def num_edges(graph, r_max: float) -> int:
    """Directed neighbour pairs within ``r_max`` (Å) of one frame, periodic images counted (ASE, as in ``compute_statistics``)."""
    atoms = Atoms(numbers=graph.atomic_numbers.numpy(), positions=graph.pos.numpy(), cell=graph.cell[0].numpy(), pbc=graph.pbc[0].numpy())
    return len(neighbor_list("i", atoms, float(r_max)))


def frame_summary(graph, r_max_values: Sequence[float]) -> dict:
    """One frame's row of the summary arrays that :meth:`StatisticsAccumulator.add` takes.

    ``num_edges``: ``{r_max: directed pairs within r_max}`` for each cutoff of ``r_max_values``.
    """
    numbers = graph.atomic_numbers.numpy()
    species, counts = np.unique(numbers, return_counts=True)
    has_forces = bool(graph.has_forces.item())
    return {
        "species": species.astype(np.int64),
        "counts": counts.reshape(1, -1).astype(np.int64),
        "energy": np.array([float(graph.energy.item())]),
        "has_energy": np.array([bool(graph.has_energy.item())]),
        "has_forces": np.array([has_forces]),
        "force_sq_sum": np.array([float(np.sum(graph.forces.numpy() ** 2)) if has_forces else 0.0]),
        "has_stress": np.array([bool(graph.has_stress.item())]),
        "num_edges": {float(r): np.array([num_edges(graph, r)], dtype=np.int64) for r in r_max_values},
    }


class StatisticsAccumulator:
    """Sums over frames from which :meth:`result` gives the statistics of ``compute_statistics``.

    Args:
        r_max: cutoff (Å) of the mean neighbour count; every added summary must count it.
    """

    def __init__(self, r_max: float):
        self.r_max = float(r_max)
        self.num_frames = self.num_atoms = self.num_edges = 0
        self.num_with_energy = self.num_with_forces = self.num_with_stress = 0
        self.force_sq_sum, self.force_components = 0.0, 0
        self.atoms_per_species = np.zeros(_NUM_Z, dtype=np.int64)
        self.counts_gram = np.zeros((_NUM_Z, _NUM_Z))  # AᵀA over frames with energy
        self.counts_energy = np.zeros(_NUM_Z)  # Aᵀb
        self.sum_u = self.sum_u2 = 0.0  # u = E/N
        self.sum_v = np.zeros(_NUM_Z)  # v = counts/N
        self.sum_uv = np.zeros(_NUM_Z)
        self.sum_vv = np.zeros((_NUM_Z, _NUM_Z))

    def add_graph(self, graph) -> None:
        """Add one :class:`~mpnn_ip.data.AtomicGraph` (its neighbours are counted here)."""
        self.add(frame_summary(graph, [self.r_max]))

    def add(self, summary: Mapping, rows: np.ndarray | None = None) -> None:
        """Add the frames of ``summary`` (arrays as :func:`frame_summary` returns, any number of rows).

        ``rows``: a boolean mask or indices of the rows to add; ``None`` = all.
        """
        select = (lambda a: a) if rows is None else (lambda a: a[rows])
        if self.r_max not in summary["num_edges"]:
            raise DataError(f"the frame summaries count neighbours within {sorted(summary['num_edges'])} Å, not r_max={self.r_max:g} Å")
        species = np.asarray(summary["species"], dtype=np.int64)
        counts = np.zeros((len(summary["energy"]), _NUM_Z))
        counts[:, species] = summary["counts"]
        counts = select(counts)
        energy, has_energy = select(np.asarray(summary["energy"])), select(np.asarray(summary["has_energy"], dtype=bool))
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
        u, v = b / atoms[has_energy], a / atoms[has_energy, None]
        self.num_with_energy += len(b)
        self.counts_gram += a.T @ a
        self.counts_energy += a.T @ b
        self.sum_u += float(u.sum())
        self.sum_u2 += float(u @ u)
        self.sum_v += v.sum(axis=0)
        self.sum_uv += v.T @ u
        self.sum_vv += v.T @ v

    def result(self, isolated_atom_energies: Mapping[int, float] | None = None, *, species: Iterable[int] | None = None) -> dict:
        """The statistics dict of :func:`~mpnn_ip.data.compute_statistics` (same keys, equal values)."""
        if self.num_frames == 0:
            raise DataError("cannot compute statistics of an empty training set")
        seen = {int(z) for z in np.flatnonzero(self.atoms_per_species)}
        zs = sorted(seen | {int(z) for z in species or ()})
        e0s, e0s_source = self._e0s(zs, isolated_atom_energies)
        e0 = np.array([e0s[z] for z in zs])
        mean, rms, shifts = self._remainders(zs, e0)
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
        if isolated_atom_energies is not None or self.num_with_energy == 0:  # no fit: compute_statistics' own rules
            return _fit_e0s(zs, np.zeros((0, len(zs))), np.zeros(0), isolated_atom_energies)
        solution = _min_norm_solve(self.counts_gram[np.ix_(zs, zs)], self.counts_energy[zs])
        return {z: float(e) for z, e in zip(zs, solution)}, "least_squares"

    def _remainders(self, zs: list[int], e0: np.ndarray) -> tuple[float, float, dict]:
        """Mean and RMS of the energy per atom after E0, and the per-species shifts (``compute_statistics``'s)."""
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
