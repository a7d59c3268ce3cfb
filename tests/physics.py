"""Physics checks written once and applied to every potential (see tests/test_physics.py).

Each ``check_*`` takes a model (a :class:`mpnn_ip.models.base.Potential` in eval mode) and ASE
``Atoms``, returns nothing and raises ``AssertionError`` naming the property, the structure
(``atoms.info["name"]`` or the formula) and the error. Computations run in the model's dtype;
comparisons in float64. Randomness (rotations, permutations, displacements) is seeded.

Relative errors are ``max|actual - expected| / max(scale, floor)`` where ``scale`` is the largest
magnitude of the expected quantity in that structure (eV, eV/Å, eV/Å³) and ``floor`` keeps
the ratio defined when a quantity vanishes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms

from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs

#: Quantities below this magnitude (eV, eV/Å, eV/Å³) are treated as zero when scaling errors.
FLOOR = 1e-8


def structure_name(atoms: Atoms) -> str:
    """The name tests gave a structure (``atoms.info["name"]``), else its chemical formula."""
    return str(atoms.info.get("name", atoms.get_chemical_formula()))


def model_inputs(structures: Atoms | Sequence[Atoms]) -> dict[str, torch.Tensor]:
    """One or more ASE structures -> the batched dict of tensors a model reads."""
    frames = [structures] if isinstance(structures, Atoms) else list(structures)
    return to_inputs(collate([AtomicGraph.from_atoms(a) for a in frames]))


def evaluate(
    model, structures: Atoms | Sequence[Atoms], *, compute_forces: bool = True, compute_stress: bool = True
) -> dict[str, torch.Tensor]:
    """Model outputs (energy [B], node_energy [N], forces [N,3], stress/virial [B,3,3]) as detached float64."""
    out = model(model_inputs(structures), compute_forces=compute_forces, compute_stress=compute_stress)
    return {key: value.detach().to(torch.float64) for key, value in out.items()}


def energy(model, atoms: Atoms) -> float:
    """Total energy (eV) of one structure, without derivatives."""
    return float(evaluate(model, atoms, compute_forces=False, compute_stress=False)["energy"][0])


def relative_error(actual, expected, floor: float = FLOOR) -> float:
    """max|actual - expected| / max(max|expected|, floor)."""
    actual = torch.as_tensor(actual).detach().to(torch.float64)
    expected = torch.as_tensor(expected).detach().to(torch.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape mismatch: {tuple(actual.shape)} vs expected {tuple(expected.shape)}")
    if expected.numel() == 0:
        return 0.0
    scale = max(float(expected.abs().max()), floor)
    return float((actual - expected).abs().max()) / scale


def assert_close(actual, expected, *, rtol: float, what: str, structure: str, floor: float = FLOOR) -> None:
    """Raise AssertionError naming ``what`` and ``structure`` when the relative error exceeds ``rtol``."""
    error = relative_error(actual, expected, floor)
    if not error <= rtol:
        raise AssertionError(f"{what} of structure {structure!r}: relative error {error:.3e} > tolerance {rtol:.1e}")


def assert_outputs_close(
    actual: dict, expected: dict, *, rtol: float, what: str, structure: str, floor: float = FLOOR
) -> None:
    """Compare energy (scaled by Σ|node energies|), node energies, forces, and stress/virial where present."""
    energy_scale = max(float(expected["node_energy"].abs().sum()), floor)
    assert_close(
        actual["energy"],
        expected["energy"],
        rtol=rtol,
        what=f"energy ({what})",
        structure=structure,
        floor=energy_scale,
    )
    assert_close(
        actual["node_energy"],
        expected["node_energy"],
        rtol=rtol,
        what=f"node energies ({what})",
        structure=structure,
        floor=floor,
    )
    for key in ("forces", "stress", "virial"):
        if key in expected:
            assert_close(
                actual[key], expected[key], rtol=rtol, what=f"{key} ({what})", structure=structure, floor=floor
            )


def random_orthogonal_matrices(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Seeded O(3) elements: two proper rotations, an inversion-rotation and a mirror-rotation."""
    rng = np.random.default_rng(seed)
    rotations = []
    for _ in range(3):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        rotations.append(q if np.linalg.det(q) > 0 else -q)
    mirror = np.diag([1.0, 1.0, -1.0])
    return [
        ("rotation", rotations[0]),
        ("rotation", rotations[1]),
        ("inversion-rotation", -rotations[2]),
        ("mirror-rotation", mirror @ rotations[0]),
    ]


def _transformed(atoms: Atoms, matrix: np.ndarray) -> Atoms:
    """Positions and cell rows mapped by the orthogonal matrix ``matrix`` (row vectors: x -> x Rᵀ)."""
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
    out.positions = atoms.positions @ matrix.T
    return out


def check_rotation_equivariance(
    model, atoms: Atoms, *, rtol: float = 1e-10, seed: int = 0, floor: float = FLOOR
) -> None:
    """Energy invariant, forces F Rᵀ, stress and virial R S Rᵀ under proper and improper rotations of positions and cell."""
    name = structure_name(atoms)
    reference = evaluate(model, atoms)
    for kind, matrix in random_orthogonal_matrices(seed):
        r = torch.as_tensor(matrix)
        out = evaluate(model, _transformed(atoms, matrix))
        expected = dict(reference)
        expected["forces"] = reference["forces"] @ r.T
        expected["stress"] = r @ reference["stress"] @ r.T
        expected["virial"] = r @ reference["virial"] @ r.T
        assert_outputs_close(
            out,
            expected,
            rtol=rtol,
            what=f"under {kind} (det {np.linalg.det(matrix):+.0f})",
            structure=name,
            floor=floor,
        )


def check_translation_invariance(
    model, atoms: Atoms, *, rtol: float = 1e-10, seed: int = 0, floor: float = FLOOR
) -> None:
    """Translating every atom by one random vector (no wrapping) changes no output."""
    shifted = atoms.copy()
    shifted.positions = atoms.positions + np.random.default_rng(seed).normal(scale=3.0, size=3)
    assert_outputs_close(
        evaluate(model, shifted),
        evaluate(model, atoms),
        rtol=rtol,
        what="under translation",
        structure=structure_name(atoms),
        floor=floor,
    )


def check_permutation_equivariance(
    model, atoms: Atoms, *, rtol: float = 1e-10, seed: int = 0, floor: float = FLOOR
) -> None:
    """Reordering the atoms reorders node energies and forces; energy and stress are unchanged."""
    permutation = np.random.default_rng(seed).permutation(len(atoms))
    if len(atoms) > 1 and np.all(permutation == np.arange(len(atoms))):
        permutation = np.roll(permutation, 1)
    reference = evaluate(model, atoms)
    expected = dict(
        reference, node_energy=reference["node_energy"][permutation], forces=reference["forces"][permutation]
    )
    out = evaluate(model, atoms[permutation])
    assert_outputs_close(
        out, expected, rtol=rtol, what="under permutation of atoms", structure=structure_name(atoms), floor=floor
    )


#: 4th-order central stencil: dE/dt ≈ Σ_k w_k E(k h) / h.
_STENCIL = ((-2, 1.0 / 12.0), (-1, -8.0 / 12.0), (1, 8.0 / 12.0), (2, -1.0 / 12.0))


def _energies_of_copies(model, atoms: Atoms, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Energies [K] (eV, float64) of K deformed copies of ``atoms``: pos [K,N,3] Å, cell [K,3,3] Å.

    The copies go through the model as one batch; validation of ``AtomicGraph.from_atoms`` runs once.
    """
    single = model_inputs(atoms)
    copies, n = pos.shape[0], pos.shape[1]
    inputs = {
        "pos": pos.reshape(-1, 3),
        "cell": cell.reshape(-1, 3, 3),
        "pbc": single["pbc"].reshape(1, 3).repeat(copies, 1),
        "atomic_numbers": single["atomic_numbers"].repeat(copies),
        "batch": torch.arange(copies).repeat_interleave(n),
        "ptr": torch.arange(copies + 1) * n,
    }
    with torch.no_grad():
        return model(inputs, compute_forces=False, compute_stress=False)["energy"].to(torch.float64)


def _central_differences(model, atoms: Atoms, deformations: Sequence, step: float) -> np.ndarray:
    """dE/dt (eV per unit t) at t = 0 for each ``deformation(t) -> (pos [N,3], cell [3,3])``, 4th-order stencil."""
    pos, cell = [], []
    for deformation in deformations:
        for k, _ in _STENCIL:
            p, c = deformation(k * step)
            pos.append(p)
            cell.append(c)
    energies = _energies_of_copies(model, atoms, torch.stack(pos), torch.stack(cell)).reshape(
        len(deformations), len(_STENCIL)
    )
    weights = torch.tensor([w for _, w in _STENCIL], dtype=torch.float64)
    return ((energies * weights).sum(-1) / step).numpy()


def check_forces_finite_differences(
    model, atoms: Atoms, *, num_components: int = 6, step: float = 1e-4, rtol: float = 1e-6, seed: int = 0
) -> None:
    """Forces = −dE/dpos by central finite differences on ``num_components`` random (atom, axis) pairs.

    The error is relative to the largest force component of the structure (eV/Å).
    """
    name = structure_name(atoms)
    forces = evaluate(model, atoms, compute_stress=False)["forces"]
    scale = max(float(forces.abs().max()), FLOOR)
    pos0 = torch.as_tensor(atoms.positions, dtype=torch.float64)
    cell0 = torch.as_tensor(atoms.cell.array, dtype=torch.float64)
    chosen = [
        divmod(int(flat), 3)
        for flat in np.random.default_rng(seed).choice(
            3 * len(atoms), size=min(num_components, 3 * len(atoms)), replace=False
        )
    ]

    def displacement(atom: int, axis: int):
        def deformation(t: float):
            pos = pos0.clone()
            pos[atom, axis] += t
            return pos, cell0

        return deformation

    numerical = -_central_differences(model, atoms, [displacement(a, x) for a, x in chosen], step)
    for (atom, axis), value in zip(chosen, numerical):
        error = abs(value - float(forces[atom, axis])) / scale
        if not error <= rtol:
            raise AssertionError(
                f"forces of structure {name!r}, atom {atom} axis {'xyz'[axis]}: model {float(forces[atom, axis]):.10e} "
                f"vs finite difference {value:.10e} eV/Å, relative error {error:.3e} > {rtol:.1e}"
            )


def check_stress_finite_differences(model, atoms: Atoms, *, step: float = 1e-4, rtol: float = 1e-6) -> None:
    """Virial = −dE/dε and stress = (1/V) dE/dε (ASE sign) for symmetric strains ε applied to positions and cell.

    The strain maps x -> x (I + ε). Stress is checked where the cell has a volume; the virial always.
    """
    name = structure_name(atoms)
    out = evaluate(model, atoms)
    virial, stress = out["virial"][0], out["stress"][0]
    volume = abs(np.linalg.det(atoms.cell.array))
    virial_scale = max(float(virial.abs().max()), FLOOR)
    stress_scale = max(float(stress.abs().max()), FLOOR)
    pos0 = torch.as_tensor(atoms.positions, dtype=torch.float64)
    cell0 = torch.as_tensor(atoms.cell.array, dtype=torch.float64)
    components = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))

    def strain(i: int, j: int):
        direction = torch.zeros(3, 3, dtype=torch.float64)
        direction[i, j] += 0.5
        direction[j, i] += 0.5

        def deformation(t: float):
            matrix = torch.eye(3, dtype=torch.float64) + t * direction
            return pos0 @ matrix, cell0 @ matrix

        return deformation

    derivatives = _central_differences(model, atoms, [strain(i, j) for i, j in components], step)
    for (i, j), derivative in zip(components, derivatives):
        component = f"{'xyz'[i]}{'xyz'[j]}"
        error = abs(-derivative - float(virial[i, j])) / virial_scale
        if not error <= rtol:
            raise AssertionError(
                f"virial of structure {name!r}, component {component}: model {float(virial[i, j]):.10e} vs "
                f"−dE/dε {-derivative:.10e} eV, relative error {error:.3e} > {rtol:.1e}"
            )
        if volume > 0:
            error = abs(derivative / volume - float(stress[i, j])) / stress_scale
            if not error <= rtol:
                raise AssertionError(
                    f"stress of structure {name!r}, component {component}: model {float(stress[i, j]):.10e} vs "
                    f"(1/V) dE/dε {derivative / volume:.10e} eV/Å³, relative error {error:.3e} > {rtol:.1e}"
                )


def _dimer(a: str, b: str, distance: float) -> Atoms:
    """Two atoms on the x axis, so that the distance is exact in floating point."""
    return Atoms(
        f"{a}{b}", positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]], info={"name": f"{a}-{b} dimer at {distance!r} Å"}
    )


def check_cutoff_smoothness(
    model,
    pairs: Sequence[tuple[str, str]],
    *,
    deltas: Sequence[float] = (1e-2, 1e-3, 1e-4),
    zero_tolerance: float = 1e-12,
    decay_ratio: float = 0.5,
) -> None:
    """Dimers at and beyond ``model.r_max``: interaction energy and forces vanish; approaching r_max they go to 0 smoothly.

    Interaction energy = E(dimer) − E(atom a alone) − E(atom b alone) (eV). At r_max and beyond, it
    and the forces must be zero (|x| <= ``zero_tolerance``). At r_max − δ for the decreasing
    ``deltas``, both |interaction energy| and |force| must shrink by at least ``decay_ratio`` per
    step (continuity of the energy and of its derivative) once they are above ``zero_tolerance``.
    """
    r_max = float(model.r_max)
    for a, b in pairs:
        alone = energy(model, Atoms(a)) + energy(model, Atoms(b))

        def interaction(distance: float) -> tuple[float, float]:
            out = evaluate(model, _dimer(a, b, distance), compute_stress=False)
            return float(out["energy"][0]) - alone, float(out["forces"].abs().max())

        for distance in (r_max, np.nextafter(r_max, np.inf), r_max + 1e-6, 1.5 * r_max):
            e, f = interaction(distance)
            if not (abs(e) <= zero_tolerance and f <= zero_tolerance):
                raise AssertionError(
                    f"cutoff: {a}-{b} dimer at {distance!r} Å (r_max = {r_max} Å) has interaction energy {e:.3e} eV "
                    f"and max |force| {f:.3e} eV/Å; both must be 0 at and beyond r_max"
                )
        previous = None
        for delta in deltas:
            current = interaction(r_max - delta)
            if previous is not None:
                for label, now, before in zip(("interaction energy", "force"), current, previous[1]):
                    if abs(before) > zero_tolerance and not abs(now) <= decay_ratio * abs(before):
                        raise AssertionError(
                            f"cutoff: {a}-{b} dimer {label} does not go to 0 smoothly at r_max = {r_max} Å: "
                            f"|{label}| = {abs(before):.3e} at r_max − {previous[0]:g} Å and {abs(now):.3e} at "
                            f"r_max − {delta:g} Å (discontinuous {'energy' if label != 'force' else 'derivative'})"
                        )
            previous = (delta, current)


def _split(out: dict, sizes: Sequence[int]) -> list[dict]:
    """Batched outputs -> one dict per frame."""
    pieces = [dict() for _ in sizes]
    node_slices = np.cumsum([0, *sizes])
    for b, piece in enumerate(pieces):
        for key, value in out.items():
            if key in ("node_energy", "forces"):
                piece[key] = value[node_slices[b] : node_slices[b + 1]]
            else:
                piece[key] = value[b : b + 1]
    return pieces


def check_batch_consistency(model, structures: Sequence[Atoms], *, rtol: float = 1e-10, floor: float = FLOOR) -> None:
    """A batch of frames gives the same energy, node energies, forces, stress and virial as each frame alone."""
    batched = _split(evaluate(model, structures), [len(a) for a in structures])
    for atoms, out in zip(structures, batched):
        assert_outputs_close(
            out,
            evaluate(model, atoms),
            rtol=rtol,
            what="in a batch vs alone",
            structure=structure_name(atoms),
            floor=floor,
        )


def check_no_gradient_between_frames(model, structures: Sequence[Atoms], *, seed: int = 0, rtol: float = 1e-12) -> None:
    """dE_A/dpos_B is exactly 0 for frames A ≠ B of a batch, and moving frame B's atoms leaves frame A's forces unchanged."""
    names = [structure_name(a) for a in structures]
    sizes = [len(a) for a in structures]
    starts = np.cumsum([0, *sizes])
    inputs = model_inputs(structures)
    pos = inputs["pos"].to(model.dtype).detach().requires_grad_(True)
    energies = model(dict(inputs, pos=pos), compute_forces=False, compute_stress=False)["energy"]
    for a in range(len(structures)):
        (gradient,) = torch.autograd.grad(energies[a], pos, retain_graph=True, allow_unused=True)
        if gradient is None:
            continue
        outside = torch.cat([gradient[: starts[a]], gradient[starts[a + 1] :]])
        if bool((outside != 0).any()):
            raise AssertionError(
                f"frames of a batch are not independent: energy of {names[a]!r} has a gradient of up to "
                f"{float(outside.abs().max()):.3e} eV/Å with respect to atoms of other frames"
            )
    reference = _split(evaluate(model, structures), sizes)
    rng = np.random.default_rng(seed)
    for b in sorted({0, len(structures) - 1}):
        moved_frames = [a.copy() for a in structures]
        moved_frames[b].positions += rng.normal(scale=0.05, size=(sizes[b], 3))
        moved = _split(evaluate(model, moved_frames), sizes)
        for a in range(len(structures)):
            if a != b:
                assert_close(
                    moved[a]["forces"],
                    reference[a]["forces"],
                    rtol=rtol,
                    structure=names[a],
                    what=f"forces when the atoms of another frame ({names[b]!r}) move",
                )


def _integer_lattice_shifts(atoms: Atoms, rng: np.random.Generator) -> np.ndarray:
    """[N, 3] random integer multiples of the periodic lattice vectors (at least one per atom non-zero)."""
    multiples = rng.integers(-2, 3, size=(len(atoms), 3)) * atoms.pbc
    periodic = int(np.flatnonzero(atoms.pbc)[0])
    multiples[np.all(multiples == 0, axis=1), periodic] = 1
    return multiples @ atoms.cell.array


def check_periodic_image_invariance(
    model, atoms: Atoms, *, rtol: float = 1e-10, seed: int = 0, floor: float = FLOOR
) -> None:
    """Wrapping atoms into the cell, or moving atoms by lattice vectors, changes no output."""
    if not atoms.pbc.any():
        raise ValueError(f"structure {structure_name(atoms)!r} has no periodic direction")
    name = structure_name(atoms)
    reference = evaluate(model, atoms)
    rng = np.random.default_rng(seed)
    one_moved = atoms.copy()
    one_moved.positions[0] += _integer_lattice_shifts(atoms, rng)[0]
    all_moved = atoms.copy()
    all_moved.positions += _integer_lattice_shifts(atoms, rng)
    wrapped = all_moved.copy()
    wrapped.wrap()
    for label, variant in (
        ("one atom moved by a lattice vector", one_moved),
        ("every atom moved by lattice vectors", all_moved),
        ("atoms wrapped into the cell", wrapped),
    ):
        assert_outputs_close(evaluate(model, variant), reference, rtol=rtol, what=label, structure=name, floor=floor)


def check_supercell_extensivity(model, atoms: Atoms, *, rtol: float = 1e-10, floor: float = FLOOR) -> None:
    """A 2× supercell along a periodic direction has twice the energy, the same per-atom forces and the same stress."""
    if not atoms.pbc.any():
        raise ValueError(f"structure {structure_name(atoms)!r} has no periodic direction")
    repeat = [1, 1, 1]
    repeat[int(np.flatnonzero(atoms.pbc)[0])] = 2
    reference = evaluate(model, atoms)
    expected = {
        "energy": 2 * reference["energy"],
        "node_energy": reference["node_energy"].repeat(2),
        "forces": reference["forces"].repeat(2, 1),
        "stress": reference["stress"],
        "virial": 2 * reference["virial"],
    }
    out = evaluate(model, atoms.repeat(repeat))
    assert_outputs_close(
        out, expected, rtol=rtol, what=f"of the {tuple(repeat)} supercell", structure=structure_name(atoms), floor=floor
    )


def check_separated_molecules_additive(
    model, first: Atoms, second: Atoms, *, distance: float = 30.0, rtol: float = 1e-10, floor: float = FLOOR
) -> None:
    """Two molecules ``distance`` Å apart: energy, node energies and forces are those of each alone."""
    if first.pbc.any() or second.pbc.any():
        raise ValueError("separated-molecule check needs non-periodic structures")
    far = second.copy()
    far.positions += first.positions.mean(axis=0) - second.positions.mean(axis=0) + np.array([distance, 0.0, 0.0])
    together = first + far
    a, b = evaluate(model, first), evaluate(model, far)
    expected = {
        "energy": a["energy"] + b["energy"],
        "node_energy": torch.cat([a["node_energy"], b["node_energy"]]),
        "forces": torch.cat([a["forces"], b["forces"]]),
        "virial": a["virial"] + b["virial"],
    }
    name = f"{structure_name(first)} + {structure_name(second)} {distance} Å apart"
    assert_outputs_close(
        evaluate(model, together), expected, rtol=rtol, what="vs the sum of each alone", structure=name, floor=floor
    )


def check_isolated_atoms(model, e0s: dict[str, float], *, rtol: float = 1e-10, zero_tolerance: float = 1e-12) -> None:
    """A lone atom of each species in ``e0s`` has energy E0 (eV; the model was built with these e0s) and zero force."""
    for symbol, e0 in e0s.items():
        out = evaluate(model, Atoms(symbol, positions=[[0.3, -0.2, 0.1]]))
        e, f = float(out["energy"][0]), float(out["forces"].abs().max())
        if not abs(e - e0) <= rtol * max(abs(e0), 1.0):
            raise AssertionError(
                f"lone {symbol} atom: energy {e:.12g} eV differs from its E0 {e0:.12g} eV by {e - e0:.3e} eV"
            )
        if not f <= zero_tolerance:
            raise AssertionError(f"lone {symbol} atom: force {f:.3e} eV/Å, expected 0")


def check_float32_matches_float64(
    model64, model32, structures: Sequence[Atoms], *, rtol: float = 1e-4, floor: float = 1e-6
) -> None:
    """The same model in float32 (``model32``) reproduces its float64 outputs (``model64``) within ``rtol``."""
    if model64.dtype != torch.float64 or model32.dtype != torch.float32:
        raise ValueError(f"expected a float64 and a float32 model, got {model64.dtype} and {model32.dtype}")
    for atoms in structures:
        out32 = model32(model_inputs(atoms), compute_forces=True, compute_stress=True)
        wrong = {key: value.dtype for key, value in out32.items() if value.dtype != torch.float32}
        if wrong:
            raise AssertionError(f"float32 model returned {wrong} for structure {structure_name(atoms)!r}")
        out32 = {key: value.detach().to(torch.float64) for key, value in out32.items()}
        assert_outputs_close(
            out32,
            evaluate(model64, atoms),
            rtol=rtol,
            what="float32 vs float64",
            structure=structure_name(atoms),
            floor=floor,
        )


def check_atomic_virials(model, atoms: Atoms, *, rtol: float = 1e-10, seed: int = 0, floor: float = FLOOR) -> None:
    """Per-atom virials (``compute_atomic_virial=True``) sum to the virial -dE/dstrain, leave energy,
    forces, stress and virial unchanged, and transform per atom: R W Rᵀ under rotations and
    reflections, reordered under permutations."""
    name = structure_name(atoms)

    def atomic(structure: Atoms) -> dict[str, torch.Tensor]:
        out = model(model_inputs(structure), compute_forces=True, compute_stress=True, compute_atomic_virial=True)
        return {key: value.detach().to(torch.float64) for key, value in out.items()}

    out = atomic(atoms)
    assert_outputs_close(
        out, evaluate(model, atoms), rtol=rtol, what="with atomic virials on", structure=name, floor=floor
    )
    assert_close(
        out["atomic_virial"].sum(dim=0),
        out["virial"][0],
        rtol=rtol,
        what="sum of atomic virials vs virial",
        structure=name,
        floor=floor,
    )
    for kind, matrix in random_orthogonal_matrices(seed):
        r = torch.as_tensor(matrix)
        rotated = atomic(_transformed(atoms, matrix))["atomic_virial"]
        assert_close(
            rotated,
            r @ out["atomic_virial"] @ r.T,
            rtol=rtol,
            what=f"atomic virials under {kind}",
            structure=name,
            floor=floor,
        )
    permutation = np.random.default_rng(seed).permutation(len(atoms))
    permuted = atomic(atoms[permutation])["atomic_virial"]
    assert_close(
        permuted,
        out["atomic_virial"][permutation],
        rtol=rtol,
        what="atomic virials under permutation",
        structure=name,
        floor=floor,
    )


def perturb_parameters(model: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """``model`` (float64) with seeded Gaussian noise of ``scale`` added to every parameter, so that no
    zero-initialised layer lets a check pass vacuously."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(
                scale * torch.randn(parameter.shape, generator=generator, dtype=torch.float64).to(parameter.dtype)
            )
    return model
