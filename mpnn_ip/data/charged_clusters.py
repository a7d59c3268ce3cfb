"""Two ionic clusters farther apart than the cutoff: a synthetic set whose energy is not local.

Each frame holds cluster A, Na3Cl2 (net charge +1 e), and cluster B, Na2Cl3 (net -1 e), 10 atoms, no periodicity
(atoms 0-4 are A, 5-9 are B). Each cluster is its relaxed geometry under the reference potential, rotated at
random and rattled (Gaussian displacements, ``rattle`` Å per component); B's centre of charge lies at
``cluster_distance`` Å from A's along a random direction, drawn uniformly in ``distances``. Frames are redrawn
until the closest atoms of the two clusters are more than ``r_max`` Å apart (default 4 Å), so a model with that
cutoff sees two disconnected graphs and cannot know where the other cluster is.

Reference energy (eV), every pair of the frame once, within and between the clusters::

    E = sum_{i<j} [ A_ij exp(-r_ij / rho) f_c(r_ij)  +  k_e q_i q_j / r_ij ]
    f_c(r) = (1 - (r / r_c)²)² for r < r_c, else 0

``q`` = +1 e (Na), -1 e (Cl), point charges; ``k_e`` = 14.399645 eV Å/e² (ASE's Hartree x Bohr); Born-Mayer
repulsion ``A`` (eV: :data:`BORN_MAYER_PREFACTOR`), ``rho`` = 0.317 Å, smooth cutoff ``r_c`` = 4 Å
(:data:`SHORT_RANGE_CUTOFF`). Since the clusters are more than ``r_max >= r_c`` apart, their interaction is
exactly the Coulomb energy of their charges: ``k_e Q_A Q_B / d`` = -14.4 eV Å / d at large centre distance ``d``.
Forces: ``-dE/dr`` in closed form, float64.

Labels of each frame: a ``SinglePointCalculator`` with energy (eV) and forces ([10, 3] eV/Å);
``info["dipole"]`` ([3] e·Å, ``sum_i q_i r_i`` of the fixed charges; the frame is neutral, so it does not
depend on the origin), ``info["cluster_distance"]`` (Å, between the centres of charge) and
``info["closest_intercluster_distance"]`` (Å).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

#: Coulomb constant k_e = 1 / (4 pi eps0) in eV Å / e² (14.399645).
COULOMB_EV_ANGSTROM = units.Hartree * units.Bohr
#: Fixed ionic charge of each element (e).
IONIC_CHARGE = {"Na": 1.0, "Cl": -1.0}
#: Born-Mayer prefactors A (eV) of each pair of elements, and the decay length rho (Å).
BORN_MAYER_PREFACTOR = {("Na", "Na"): 500.0, ("Na", "Cl"): 1250.0, ("Cl", "Cl"): 3500.0}
BORN_MAYER_LENGTH = 0.317
#: Cutoff of the repulsion (Å); the clusters are always farther apart than this.
SHORT_RANGE_CUTOFF = 4.0
#: Elements of cluster A (net +1 e) and cluster B (net -1 e): three ions around the waist of a trigonal
#: bipyramid, two of the other element at its apices.
CLUSTER_SYMBOLS = (("Na", "Na", "Na", "Cl", "Cl"), ("Cl", "Cl", "Cl", "Na", "Na"))
#: Attempts to place the clusters of one frame before giving up.
MAX_PLACEMENT_ATTEMPTS = 1000


def charged_cluster_frames(
    num_frames: int,
    seed: int = 0,
    distances: tuple[float, float] = (7.0, 14.0),
    r_max: float = 4.0,
    rattle: float = 0.1,
) -> list[Atoms]:
    """``num_frames`` labelled frames of the two clusters (see the module docstring); same seed, same arrays.

    Args:
        num_frames: number of frames.
        seed: seed of the random orientations, displacements and distances.
        distances: (min, max) distance between the clusters' centres of charge (Å) before the rattle, drawn
            uniformly (``info["cluster_distance"]`` is measured after it, so it strays by ~0.3 Å).
        r_max: the closest atoms of the two clusters are more than this apart (Å; >= 4 Å, the repulsion's cutoff).
        rattle: standard deviation of the atoms' displacements from the relaxed clusters (Å per component).

    Raises:
        ValueError: bad arguments, or ``distances`` too short to keep the clusters ``r_max`` apart.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    low, high = (float(d) for d in distances)
    if not 0 < low <= high:
        raise ValueError(f"distances must be (min, max) with 0 < min <= max (Å), got {distances}")
    _check_r_max(r_max)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(num_frames):
        for _attempt in range(MAX_PLACEMENT_ATTEMPTS):
            first = _place(0, _random_rotation(rng), rng.normal(0.0, rattle, (5, 3)), np.zeros(3))
            distance = rng.uniform(low, high)
            offset = distance * _random_direction(rng)
            second = _place(1, _random_rotation(rng), rng.normal(0.0, rattle, (5, 3)), offset)
            if _closest(first, second) > r_max:
                frames.append(_label(first, second))
                break
        else:
            raise ValueError(
                f"charged_cluster_frames: no placement in {MAX_PLACEMENT_ATTEMPTS} attempts keeps the clusters more "
                f"than r_max = {r_max} Å apart at distances {distances}; raise the smallest distance"
            )
    return frames


def cluster_interaction_curve(distances, seed: int = 0, r_max: float = 4.0) -> list[Atoms]:
    """Labelled frames of one fixed pair of relaxed clusters (orientations drawn with ``seed``), B translated
    along the line between the centres of charge to each of ``distances`` (Å, between those centres).

    The interaction energy of the clusters is ``E(d) - E(d_far)``: pure Coulomb beyond ``r_max``.

    Raises:
        ValueError: a distance that brings the closest atoms of the clusters within ``r_max``; the message gives
            the smallest allowed distance (:func:`contact_distance`).
    """
    _check_r_max(r_max)
    first, second = _curve_pair(seed)
    direction = np.array([1.0, 0.0, 0.0])
    smallest = contact_distance(seed, r_max)
    frames = []
    for distance in np.asarray(distances, dtype=np.float64).reshape(-1):
        if distance <= smallest:
            raise ValueError(
                f"cluster_interaction_curve: at {distance:.3f} Å the clusters' closest atoms are within r_max = "
                f"{r_max} Å; give distances above {smallest:.3f} Å"
            )
        frames.append(_label(first, second + distance * direction))
    return frames


def contact_distance(seed: int = 0, r_max: float = 4.0) -> float:
    """The centre distance (Å) of :func:`cluster_interaction_curve`'s pair of ``seed`` beyond which the closest
    atoms of the two clusters are more than ``r_max`` apart.

    B moves along x: atoms ``i`` of A and ``j`` of B, ``c = r_i - r_j`` at distance 0, are ``|c - t x|`` apart at
    distance ``t``, which equals ``r_max`` at ``t = c_x + sqrt(r_max² - c_y² - c_z²)`` at the latest."""
    first, second = _curve_pair(seed)
    offsets = (first[:, None, :] - second[None, :, :]).reshape(-1, 3)
    across = r_max**2 - (offsets[:, 1:] ** 2).sum(axis=1)
    reach = offsets[:, 0] + np.sqrt(np.clip(across, 0.0, None))
    return float(max(reach[across > 0].max(initial=0.0), 0.0))


def ionic_charges(atoms: Atoms) -> np.ndarray:
    """[n_atoms] fixed ionic charges (e) of the reference, from the chemical symbols."""
    return np.array([IONIC_CHARGE[symbol] for symbol in atoms.get_chemical_symbols()])


def reference_energy_and_forces(symbols, positions: np.ndarray) -> tuple[float, np.ndarray]:
    """The reference potential (module docstring) of any Na/Cl structure without periodicity:
    ``(energy eV, forces [n_atoms, 3] eV/Å)`` in float64; ``positions``: [n_atoms, 3] Å."""
    positions = np.asarray(positions, dtype=np.float64)
    charges = np.array([IONIC_CHARGE[s] for s in symbols])
    prefactor = np.array([[_born_mayer(a, b) for b in symbols] for a in symbols])
    vectors = positions[:, None, :] - positions[None, :, :]  # r_i - r_j, [n, n, 3]
    lengths = np.linalg.norm(vectors, axis=-1)
    np.fill_diagonal(lengths, np.inf)
    x = np.minimum(lengths / SHORT_RANGE_CUTOFF, 1.0)
    envelope = (1.0 - x**2) ** 2
    envelope_slope = -4.0 * x * (1.0 - x**2) / SHORT_RANGE_CUTOFF
    repulsion = prefactor * np.exp(-lengths / BORN_MAYER_LENGTH)
    coulomb = COULOMB_EV_ANGSTROM * charges[:, None] * charges[None, :] / lengths
    energy = 0.5 * float((repulsion * envelope + coulomb).sum())
    slope = repulsion * (envelope_slope - envelope / BORN_MAYER_LENGTH) - coulomb / lengths  # dV/dr, [n, n]
    forces = -((slope / lengths)[:, :, None] * vectors).sum(axis=1)
    return energy, forces


def _born_mayer(a: str, b: str) -> float:
    return BORN_MAYER_PREFACTOR.get((a, b), BORN_MAYER_PREFACTOR.get((b, a)))


def _check_r_max(r_max: float) -> None:
    if not r_max >= SHORT_RANGE_CUTOFF:
        raise ValueError(
            f"r_max must be at least the repulsion's cutoff {SHORT_RANGE_CUTOFF} Å (so that the clusters interact "
            f"only by Coulomb), got {r_max}"
        )


@cache
def _relaxed_cluster(which: int) -> np.ndarray:
    """[5, 3] positions (Å) of cluster ``which`` (0: Na3Cl2, 1: Na2Cl3) at a minimum of the reference potential,
    centre of charge at the origin. Starts from a trigonal bipyramid, which keeps its symmetry: the centre of
    charge is its centre and it has no dipole."""
    from scipy.optimize import minimize

    symbols = CLUSTER_SYMBOLS[which]
    angles = 2 * np.pi * np.arange(3) / 3
    waist = np.stack([2.0 * np.cos(angles), 2.0 * np.sin(angles), np.zeros(3)], axis=1)
    start = np.concatenate([waist, [[0.0, 0.0, 1.6], [0.0, 0.0, -1.6]]])

    def energy_and_gradient(flat):
        energy, forces = reference_energy_and_forces(symbols, flat.reshape(5, 3))
        return energy, -forces.reshape(-1)

    result = minimize(energy_and_gradient, start.reshape(-1), jac=True, method="BFGS", options={"gtol": 1e-8})
    positions = result.x.reshape(5, 3)
    charges = np.array([IONIC_CHARGE[s] for s in symbols])
    positions = positions - (charges @ positions) / charges.sum()
    positions.setflags(write=False)  # cached: shared by every caller
    return positions


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly (QR of a Gaussian matrix, signs fixed, reflections turned into rotations)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    vector = rng.normal(size=3)
    return vector / np.linalg.norm(vector)


def _place(which: int, rotation: np.ndarray, displacements: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return _relaxed_cluster(which) @ rotation.T + displacements + centre


def _curve_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The relaxed clusters of :func:`cluster_interaction_curve`, each rotated at random, centres at the origin."""
    rng = np.random.default_rng(seed)
    return _place(0, _random_rotation(rng), 0.0, np.zeros(3)), _place(1, _random_rotation(rng), 0.0, np.zeros(3))


def _closest(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.linalg.norm(first[:, None, :] - second[None, :, :], axis=-1).min())


def _centre_of_charge(positions: np.ndarray, charges: np.ndarray) -> np.ndarray:
    return (charges @ positions) / charges.sum()


def _label(first: np.ndarray, second: np.ndarray) -> Atoms:
    """The frame of clusters A at ``first`` and B at ``second`` ([5, 3] Å each) with its reference labels."""
    symbols = [*CLUSTER_SYMBOLS[0], *CLUSTER_SYMBOLS[1]]
    positions = np.concatenate([first, second])
    atoms = Atoms(symbols, positions=positions, pbc=False)
    charges = ionic_charges(atoms)
    energy, forces = reference_energy_and_forces(symbols, positions)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    centres = [_centre_of_charge(first, charges[:5]), _centre_of_charge(second, charges[5:])]
    atoms.info["config_type"] = "charged_clusters"
    atoms.info["dipole"] = charges @ positions
    atoms.info["cluster_distance"] = float(np.linalg.norm(centres[1] - centres[0]))
    atoms.info["closest_intercluster_distance"] = _closest(first, second)
    return atoms
