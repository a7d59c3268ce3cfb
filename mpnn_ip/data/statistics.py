"""Statistics of a training split that set a model's hyperparameters (stored in checkpoints).

Everything returned is a plain python value (int, float, str, list, dict) so it can go into a
checkpoint loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.neighborlist import neighbor_list

from mpnn_ip.data.atomic_graph import AtomicGraph
from mpnn_ip.errors import DataError


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
            counted (``ase.neighborlist.neighbor_list``).
        num_frames, num_atoms, num_frames_with_energy, num_frames_with_forces,
        num_frames_with_stress: counts; r_max: the cutoff (Å).
    """
    if len(graphs) == 0:
        raise DataError("cannot compute statistics of an empty training set")
    numbers = [g.atomic_numbers.numpy() for g in graphs]
    species = sorted({int(z) for n in numbers for z in np.unique(n)} | {int(z) for z in species or ()})
    has_energy = np.array([bool(g.has_energy.item()) for g in graphs])
    energies = np.array([float(g.energy.item()) for g in graphs])
    counts = np.array([[np.count_nonzero(n == z) for z in species] for n in numbers], dtype=np.float64)

    e0s, e0s_source = _fit_e0s(species, counts[has_energy], energies[has_energy], isolated_atom_energies)
    e0_vector = np.array([e0s[z] for z in species])
    num_atoms = counts.sum(axis=1)
    per_atom = (energies[has_energy] - counts[has_energy] @ e0_vector) / num_atoms[has_energy]

    energy_shifts = _fit_energy_shifts(species, counts[has_energy], per_atom)

    forces = [g.forces.numpy() for g in graphs if bool(g.has_forces.item())]
    if forces:
        force_rms, force_rms_source = float(np.sqrt(np.mean(np.concatenate(forces) ** 2))), "data"
    else:
        force_rms, force_rms_source = 1.0, "default 1.0: no frame of the training data has forces"

    return {
        "species": species,
        "e0s": e0s,
        "e0s_source": e0s_source,
        "force_rms": force_rms,
        "force_rms_source": force_rms_source,
        "energy_per_atom_mean_after_e0": float(per_atom.mean()) if per_atom.size else 0.0,
        "energy_per_atom_rms_after_e0": float(np.sqrt(np.mean(per_atom**2))) if per_atom.size else 0.0,
        "energy_shifts": energy_shifts,
        "avg_num_neighbors": average_num_neighbors(graphs, r_max),
        "num_frames": len(graphs),
        "num_atoms": int(num_atoms.sum()),
        "num_frames_with_energy": int(has_energy.sum()),
        "num_frames_with_forces": len(forces),
        "num_frames_with_stress": int(sum(bool(g.has_stress.item()) for g in graphs)),
        "r_max": float(r_max),
    }


def average_num_neighbors(graphs: Sequence[AtomicGraph], r_max: float) -> float:
    """Mean number of neighbours within ``r_max`` (Å) per atom over all frames, periodic images included."""
    total_edges = total_atoms = 0
    for g in graphs:
        atoms = Atoms(numbers=g.atomic_numbers.numpy(), positions=g.pos.numpy(), cell=g.cell[0].numpy(), pbc=g.pbc[0].numpy())
        total_edges += len(neighbor_list("i", atoms, float(r_max)))
        total_atoms += len(atoms)
    return float(total_edges / total_atoms)


def _fit_e0s(species, counts, energies, isolated_atom_energies):
    if isolated_atom_energies is not None:
        given = {int(z): float(e) for z, e in isolated_atom_energies.items()}
        missing = [z for z in species if z not in given]
        if missing:
            raise DataError(f"isolated-atom energies are missing for atomic numbers {missing} (given: {sorted(given)})")
        return {z: given[z] for z in species}, "isolated_atoms"
    if len(energies) == 0:
        return {z: 0.0 for z in species}, "none (no energies)"
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {z: float(e) for z, e in zip(species, solution)}, "least_squares"


def _fit_energy_shifts(species, counts, per_atom):
    """``{Z: eV}``: mean of ``per_atom`` ([F] eV/atom after E0) plus the least-squares correction per species."""
    if per_atom.size == 0:
        return {z: 0.0 for z in species}
    mean = float(per_atom.mean())
    fractions = counts / counts.sum(axis=1, keepdims=True)
    # minimum norm: a direction the compositions cannot resolve keeps the common mean
    correction, *_ = np.linalg.lstsq(fractions, per_atom - mean, rcond=None)
    return {z: mean + float(c) for z, c in zip(species, correction)}
