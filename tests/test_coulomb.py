"""Coulomb energy of Gaussian charges (mpnn_ip.nn.coulomb): Ewald sums against known lattice sums, the direct sum
against its closed form, derivatives against finite differences, invariances, batching and dtypes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mpnn_ip.errors import ConfigError
from mpnn_ip.nn.coulomb import GaussianCoulomb, dipole
from mpnn_ip.nn.zbl import COULOMB_EV_ANGSTROM

#: Madelung constants per ion pair referred to the nearest-neighbour distance, and the Wigner constant of a
#: simple cubic lattice of charges in a neutralising background, E = -xi k q² / (2 L) per charge.
MADELUNG_ROCK_SALT = 1.747564594633
MADELUNG_CESIUM_CHLORIDE = 1.762674773070
WIGNER_SIMPLE_CUBIC = 2.837297479


def frames_as_batch(frames: list[Atoms], charges: list[np.ndarray], dtype=torch.float64):
    """(charges [N], pos [N, 3], cell [B, 3, 3], pbc [B, 3], batch [N]) of ``frames`` as one batch."""
    return (
        torch.tensor(np.concatenate(charges), dtype=dtype),
        torch.tensor(np.concatenate([a.positions for a in frames]), dtype=dtype),
        torch.tensor(np.stack([a.cell[:] for a in frames]), dtype=dtype),
        torch.tensor(np.stack([a.pbc for a in frames])),
        torch.cat([torch.full((len(a),), n, dtype=torch.long) for n, a in enumerate(frames)]),
    )


def frame_energies(module, frames, charges, dtype=torch.float64) -> torch.Tensor:
    """Energy of each frame [B] eV."""
    q, pos, cell, pbc, batch = frames_as_batch(frames, charges, dtype)
    return torch.zeros(len(frames), dtype=dtype).index_add(0, batch, module(q, pos, cell, pbc, batch))


def energy_forces_stress(module, atoms: Atoms, q: np.ndarray):
    """Energy (eV), forces [N, 3] (eV/Å) and stress [3, 3] (eV/Å³, ASE's sign) by autograd through a zero strain."""
    charges, pos, cell, pbc, batch = frames_as_batch([atoms], [q])
    pos.requires_grad_(True)
    strain = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    deformation = torch.eye(3, dtype=torch.float64) + strain
    energy = module(charges, pos @ deformation, cell @ deformation, pbc, batch).sum()
    pos_grad, strain_grad = torch.autograd.grad(energy, [pos, strain])
    volume = abs(np.linalg.det(atoms.cell[:])) if atoms.pbc.all() else math.nan
    return float(energy.detach()), -pos_grad.numpy(), strain_grad.numpy() / volume


def rock_salt(a: float = 5.64, cubic: bool = True) -> tuple[Atoms, np.ndarray]:
    atoms = bulk("NaCl", "rocksalt", a=a, cubic=cubic)
    return atoms, np.where(atoms.numbers == 11, 1.0, -1.0)


def random_ionic_cell(seed: int = 0, repeat: int = 1, neutral: bool = True) -> tuple[Atoms, np.ndarray]:
    """Rattled, slightly sheared rock-salt cell with random charges."""
    atoms = bulk("NaCl", "rocksalt", a=5.0, cubic=True).repeat(repeat)
    atoms.set_cell(atoms.cell[:] + np.array([[0.0, 0.3, 0.1], [0.0, 0.0, -0.2], [0.25, 0.0, 0.0]]), scale_atoms=True)
    atoms.rattle(0.15, seed=seed)
    q = np.random.default_rng(seed).normal(size=len(atoms))
    return atoms, q - q.mean() if neutral else q


def water_like(offset=(0.0, 0.0, 0.0)) -> tuple[Atoms, np.ndarray]:
    atoms = Atoms("OH2", positions=[[0.0, 0.0, 0.1], [0.76, 0.0, -0.5], [-0.7, 0.1, -0.45]])
    atoms.translate(offset)
    return atoms, np.array([-0.82, 0.43, 0.39])


@pytest.mark.parametrize("kspace", ["ewald", "pme"])
@pytest.mark.parametrize("cubic", [True, False], ids=["conventional", "primitive"])
@pytest.mark.parametrize("sigma", [0.0, 0.2])
def test_rock_salt_madelung_energy(kspace, cubic, sigma):
    """Point charges ±1 (or Gaussians narrow against the 2.82 Å ion distance) give -M k q² / r0 per ion pair."""
    atoms, q = rock_salt(cubic=cubic)
    energy = float(frame_energies(GaussianCoulomb(sigma=sigma, kspace=kspace), [atoms], [q])[0])
    expected = -MADELUNG_ROCK_SALT * COULOMB_EV_ANGSTROM / (5.64 / 2) * len(atoms) / 2
    assert energy == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kspace", ["ewald", "pme"])
def test_cesium_chloride_madelung_energy(kspace):
    a = 4.12
    atoms = Atoms("CsCl", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[a, a, a], pbc=True)
    energy = float(frame_energies(GaussianCoulomb(sigma=0.0, kspace=kspace), [atoms], [np.array([1.0, -1.0])])[0])
    assert energy == pytest.approx(-MADELUNG_CESIUM_CHLORIDE * COULOMB_EV_ANGSTROM / (a * math.sqrt(3) / 2), rel=1e-6)


@pytest.mark.parametrize("kspace", ["ewald", "pme"])
def test_charged_cell_with_background_is_wigner_lattice(kspace):
    """One charge per cubic cell plus the neutralising background: the Wigner lattice sum."""
    length = 3.0
    atoms = Atoms("H", positions=[[0.3, 0.2, 0.1]], cell=[length] * 3, pbc=True)
    energy = float(frame_energies(GaussianCoulomb(sigma=0.0, kspace=kspace), [atoms], [np.array([1.0])])[0])
    assert energy == pytest.approx(-WIGNER_SIMPLE_CUBIC * COULOMB_EV_ANGSTROM / (2 * length), rel=1e-6)


@pytest.mark.parametrize("neutral", [True, False])
def test_energy_independent_of_splitting_and_kspace_method(neutral):
    """Different real-space cutoffs (hence splitting widths, k_max) and both k-space methods agree."""
    atoms, q = random_ionic_cell(seed=1, neutral=neutral)
    energies = [
        float(frame_energies(GaussianCoulomb(sigma=0.5, real_space_cutoff=cutoff, kspace=kspace), [atoms], [q])[0])
        for cutoff in (3.0, 6.0, 9.0)
        for kspace in ("ewald", "pme")
    ]
    scale = COULOMB_EV_ANGSTROM * float(np.sum(q**2))  # ~ the size of the terms that cancel
    assert np.ptp(energies) < 2e-6 * scale


def test_supercell_energy_is_extensive():
    atoms, q = random_ionic_cell(seed=2)
    module = GaussianCoulomb(sigma=1.0, kspace="ewald")
    single = float(frame_energies(module, [atoms], [q])[0])
    double = float(frame_energies(module, [atoms.repeat((2, 1, 2))], [np.tile(q, 4)])[0])
    assert double == pytest.approx(4 * single, rel=1e-7)


def test_molecule_in_growing_box_approaches_direct_sum():
    """Tin-foil Ewald differs from the isolated molecule by -2 pi k p² / (3 V) (+ O(L^-5)): that shrinks as the box
    grows, and after adding it back the two agree to 2e-6 eV in a 40 Å box (seen: 7e-7)."""
    molecule, q = water_like()
    module = GaussianCoulomb(sigma=1.0)
    isolated = float(frame_energies(module, [molecule], [q])[0])
    moment = (q[:, None] * molecule.positions).sum(axis=0)
    differences = []
    for length in (12.0, 20.0, 40.0):
        boxed = molecule.copy()
        boxed.set_cell([length] * 3)
        boxed.pbc = True
        periodic = float(frame_energies(module, [boxed], [q])[0])
        dipole_term = 2 * math.pi * COULOMB_EV_ANGSTROM * float(moment @ moment) / (3 * length**3)
        differences.append((abs(periodic - isolated), abs(periodic + dipole_term - isolated)))
    raw = [d[0] for d in differences]
    assert raw[0] > raw[1] > raw[2]
    assert differences[-1][1] < 2e-6


def test_direct_sum_of_two_gaussian_charges_is_erf_over_r():
    pair = Atoms("HH", positions=[[0, 0, 0], [0.3, 1.1, -0.4]])
    r = float(np.linalg.norm(pair.positions[1]))
    for sigma in (0.0, 0.7, 2.0):
        energy = float(frame_energies(GaussianCoulomb(sigma=sigma), [pair], [np.array([0.8, -1.3])])[0])
        shape = 1.0 if sigma == 0.0 else math.erf(r / (math.sqrt(2) * sigma))
        assert energy == pytest.approx(COULOMB_EV_ANGSTROM * 0.8 * -1.3 * shape / r, rel=1e-12)


def _mixed_frames():
    crystal, q_crystal = random_ionic_cell(seed=3)
    molecule, q_molecule = water_like(offset=(1.0, -2.0, 0.5))
    return [crystal, molecule], [q_crystal, q_molecule]


@pytest.mark.parametrize("kspace", ["ewald", "pme"])
def test_forces_match_finite_differences(kspace):
    module = GaussianCoulomb(sigma=0.6, kspace=kspace)
    for atoms, q in zip(*_mixed_frames()):
        _, forces, _ = energy_forces_stress(module, atoms, q)
        step = 1e-4
        for atom, direction in ((0, 0), (1, 2), (len(atoms) - 1, 1)):
            moved = [atoms.copy(), atoms.copy()]
            moved[0].positions[atom, direction] += step
            moved[1].positions[atom, direction] -= step
            plus, minus = frame_energies(module, moved, [q, q]).tolist()
            assert forces[atom, direction] == pytest.approx(-(plus - minus) / (2 * step), abs=1e-6)


@pytest.mark.parametrize("kspace", ["ewald", "pme"])
def test_stress_matches_strain_finite_differences(kspace):
    atoms, q = random_ionic_cell(seed=4)
    module = GaussianCoulomb(sigma=0.6, kspace=kspace)
    _, _, stress = energy_forces_stress(module, atoms, q)
    step, volume = 1e-5, atoms.get_volume()
    for i, j in ((0, 0), (1, 2), (2, 0)):
        energies = []
        for sign in (1, -1):
            strained = atoms.copy()
            deformation = np.eye(3)
            deformation[i, j] += sign * step
            strained.set_cell(atoms.cell[:] @ deformation, scale_atoms=True)
            energies.append(float(frame_energies(module, [strained], [q])[0]))
        assert stress[i, j] == pytest.approx((energies[0] - energies[1]) / (2 * step) / volume, abs=1e-7)


@pytest.mark.parametrize("kspace,tolerance", [("ewald", 1e-10), ("pme", 1e-7)])
def test_rotation_and_translation_invariance(kspace, tolerance):
    frames, charges = _mixed_frames()
    module = GaussianCoulomb(sigma=0.8, kspace=kspace)
    reference = frame_energies(module, frames, charges)
    rotation = torch.linalg.qr(torch.tensor(np.random.default_rng(0).normal(size=(3, 3))))[0].numpy()
    moved = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.positions = atoms.positions @ rotation.T + np.array([0.37, -1.2, 2.9])
        atoms.set_cell(atoms.cell[:] @ rotation.T)
        moved.append(atoms)
    scale = COULOMB_EV_ANGSTROM * max(float(np.sum(q**2)) for q in charges)
    assert torch.allclose(frame_energies(module, moved, charges), reference, atol=tolerance * scale, rtol=0)


def test_batch_equals_frames_alone():
    frames, charges = _mixed_frames()
    second_crystal, q_second = random_ionic_cell(seed=5, neutral=False)
    frames, charges = [frames[0], frames[1], second_crystal], [charges[0], charges[1], q_second]
    module = GaussianCoulomb(sigma=1.0)
    together = frame_energies(module, frames, charges)
    alone = torch.cat([frame_energies(module, [a], [q]) for a, q in zip(frames, charges)])
    assert torch.allclose(together, alone, rtol=1e-12, atol=1e-12)


def test_second_derivatives_for_force_training():
    """d(forces)/d(charges) by double backward equals the finite difference of the forces."""
    atoms, q = random_ionic_cell(seed=6)
    module = GaussianCoulomb(sigma=0.6)

    def forces(charges: torch.Tensor) -> torch.Tensor:
        _, pos, cell, pbc, batch = frames_as_batch([atoms], [q])
        pos.requires_grad_(True)
        energy = module(charges, pos, cell, pbc, batch).sum()
        return -torch.autograd.grad(energy, pos, create_graph=True)[0]

    charges = torch.tensor(q, requires_grad=True)
    (gradient,) = torch.autograd.grad(forces(charges)[0, 1], charges)
    step = 1e-5
    for atom in (0, 5):
        shifted = [
            torch.tensor(q).index_add(0, torch.tensor([atom]), torch.tensor([s], dtype=torch.float64))
            for s in (step, -step)
        ]
        difference = (forces(shifted[0])[0, 1] - forces(shifted[1])[0, 1]) / (2 * step)
        assert float(gradient[atom]) == pytest.approx(float(difference.detach()), abs=1e-6)


@pytest.mark.parametrize("kspace", ["ewald", "pme"])
def test_float32_matches_float64(kspace):
    frames, charges = _mixed_frames()
    module = GaussianCoulomb(sigma=1.0, kspace=kspace)
    single = frame_energies(module, frames, charges, dtype=torch.float32)
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), frame_energies(module, frames, charges), rtol=1e-5, atol=1e-4)


def test_dipole_of_a_charge_pair():
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.5], [5.0, 1.0, 0.0], [5.0, 3.0, 0.0]])
    moments = dipole(torch.tensor([0.5, -0.5, -1.0, 1.0]), pos, torch.tensor([0, 0, 1, 1]), 2)
    assert torch.allclose(moments, torch.tensor([[0.0, 0.0, -0.75], [0.0, 2.0, 0.0]]))


def test_slab_and_bad_arguments_are_refused():
    slab, q = water_like()
    slab.set_cell([10.0, 10.0, 10.0])
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match="not for slabs or wires"):
        frame_energies(GaussianCoulomb(), [slab], [q])
    for arguments in ({"sigma": -1.0}, {"accuracy": 2.0}, {"kspace": "p3m"}, {"pme_order": 5}):
        with pytest.raises(ConfigError):
            GaussianCoulomb(**arguments)


def strain_and_atomic_virials(module, frames, charges, dtype=torch.float64):
    """(-dE/dstrain [B, 3, 3] by autograd through a zero strain per frame at fixed charges, atomic_virials
    [N, 3, 3] under no_grad, batch [N])."""
    q, pos, cell, pbc, batch = frames_as_batch(frames, charges, dtype)
    strain = torch.zeros(len(frames), 3, 3, dtype=dtype, requires_grad=True)
    deformation = torch.eye(3, dtype=dtype) + strain
    energy = module(q, torch.einsum("na,nab->nb", pos, deformation[batch]), cell @ deformation, pbc, batch).sum()
    (strain_grad,) = torch.autograd.grad(energy, strain)
    with torch.no_grad():
        atomic = module.atomic_virials(q, pos, cell, pbc, batch)
    return -strain_grad, atomic, batch


def frame_sums(atomic: torch.Tensor, batch: torch.Tensor, n_frames: int) -> torch.Tensor:
    return torch.zeros(n_frames, 3, 3, dtype=atomic.dtype).index_add(0, batch, atomic)


def triclinic_cell() -> tuple[Atoms, np.ndarray]:
    """Six random charges (net charge 0.3 e) in a strongly oblique cell."""
    cell = np.array([[4.8, 0.0, 0.0], [1.9, 4.4, 0.0], [-1.3, 1.7, 5.1]])
    scaled = np.random.default_rng(7).uniform(size=(6, 3))
    q = np.random.default_rng(8).normal(size=6)
    return Atoms("H6", scaled_positions=scaled, cell=cell, pbc=True), q - q.mean() + 0.05


VIRIAL_CASES = {
    "molecule": (water_like, "auto"),
    "rock_salt": (rock_salt, "ewald"),
    "neutral_crystal": (lambda: random_ionic_cell(seed=1), "ewald"),
    "charged_crystal": (lambda: random_ionic_cell(seed=1, neutral=False), "ewald"),
    "primitive": (lambda: rock_salt(cubic=False), "ewald"),
    "triclinic": (triclinic_cell, "ewald"),
    "neutral_crystal_pme": (lambda: random_ionic_cell(seed=2, repeat=2), "pme"),
    "charged_crystal_pme": (lambda: random_ionic_cell(seed=1, neutral=False), "pme"),
    "triclinic_pme": (triclinic_cell, "pme"),
}


@pytest.mark.parametrize("sigma", [0.0, 0.7, 2.5])  # 2.5 Å > the splitting width: no real-space part
@pytest.mark.parametrize("case", list(VIRIAL_CASES))
def test_atomic_virials_sum_to_strain_derivative(case, sigma):
    """Summed per frame, the closed-form per-atom virials are -dE/dstrain to rounding (seen: up to 5e-15 relative, PME
    too: the mesh energy depends on the strain only through its kernel, whose derivative is the closed form)."""
    build, kspace = VIRIAL_CASES[case]
    atoms, q = build()
    reference, atomic, batch = strain_and_atomic_virials(GaussianCoulomb(sigma=sigma, kspace=kspace), [atoms], [q])
    assert atomic.shape == (len(atoms), 3, 3) and not atomic.requires_grad
    assert torch.allclose(frame_sums(atomic, batch, 1), reference, rtol=0, atol=1e-10 * float(reference.abs().max()))
    assert torch.allclose(atomic, atomic.transpose(1, 2), rtol=0, atol=1e-12 * float(reference.abs().max()))


@pytest.mark.parametrize("kspace,tolerance", [("ewald", 1e-9), ("pme", 2e-6)])
def test_point_charge_virial_trace_is_the_energy(kspace, tolerance):
    """Point charges: E is homogeneous of degree -1 in lengths, so tr W = E, net-charged cells included (their
    background share too); one charge per cubic cell (the Wigner lattice) has W = E delta / 3. Only for the exact
    sum: the truncation (fixed a and k_max) is not scale-free, hence accuracy=1e-12 (seen: 3e-11 relative); the
    mesh's interpolation error is not either (seen: 4e-7)."""
    module = GaussianCoulomb(sigma=0.0, accuracy=1e-12, kspace=kspace)
    wigner = Atoms("H", positions=[[0.3, 0.2, 0.1]], cell=[3.0] * 3, pbc=True), np.array([1.0])
    frames, charges = map(list, zip(rock_salt(), random_ionic_cell(seed=3, neutral=False), wigner))
    q, pos, cell, pbc, batch = frames_as_batch(frames, charges)
    totals = frame_sums(module.atomic_virials(q, pos, cell, pbc, batch), batch, len(frames))
    energies = frame_energies(module, frames, charges)
    traces = totals.diagonal(dim1=1, dim2=2).sum(dim=1)
    assert torch.allclose(traces, energies, rtol=tolerance, atol=0)
    wigner = energies[2] / 3 * torch.eye(3, dtype=torch.float64)
    assert torch.allclose(totals[2], wigner, rtol=0, atol=tolerance * float(energies[2].abs()))


@pytest.mark.parametrize("sigma", [0.0, 0.9])
def test_molecule_atomic_virials_are_pair_halves(sigma):
    """Each pair's -r_ij ⊗ dE_ij/dr_ij (the gradient by autograd of the pair's own energy), half to each end."""
    atoms, q = water_like(offset=(0.4, -1.0, 2.0))
    atoms += Atoms("NaCl", positions=[[2.0, 1.0, 0.0], [-1.5, 2.2, 1.1]])
    q = np.concatenate([q, [0.6, -0.45]])
    expected = torch.zeros(len(atoms), 3, 3, dtype=torch.float64)
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            r = torch.tensor(atoms.positions[j] - atoms.positions[i], requires_grad=True)
            length = torch.linalg.vector_norm(r)
            shape = 1.0 if sigma == 0.0 else torch.erf(length / (math.sqrt(2) * sigma))
            energy = COULOMB_EV_ANGSTROM * q[i] * q[j] * shape / length
            (gradient,) = torch.autograd.grad(energy, r)
            pair = -torch.outer(r.detach(), gradient)
            expected[i] += 0.5 * pair
            expected[j] += 0.5 * pair
    charges, pos, cell, pbc, batch = frames_as_batch([atoms], [q])
    atomic = GaussianCoulomb(sigma=sigma).atomic_virials(charges, pos, cell, pbc, batch)
    assert torch.allclose(atomic, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kspace", ["ewald", "pme"])
def test_atomic_virials_of_a_batch_equal_frames_alone(kspace):
    frames, charges = _mixed_frames()
    second_crystal, q_second = random_ionic_cell(seed=5, neutral=False)
    frames, charges = [frames[1], frames[0], second_crystal], [charges[1], charges[0], q_second]
    module = GaussianCoulomb(sigma=0.8, kspace=kspace)
    together = module.atomic_virials(*frames_as_batch(frames, charges))
    alone = torch.cat([module.atomic_virials(*frames_as_batch([a], [q])) for a, q in zip(frames, charges)])
    assert torch.allclose(together, alone, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kspace,tolerance", [("ewald", 1e-11), ("pme", 1e-6)])
def test_atomic_virials_translation_invariant(kspace, tolerance):
    """Exact for the k sum and the direct sum; the mesh to its interpolation error (seen: 7e-8 of the largest)."""
    frames, charges = _mixed_frames()
    second_crystal, q_second = random_ionic_cell(seed=5, neutral=False)
    frames, charges = frames + [second_crystal], charges + [q_second]
    module = GaussianCoulomb(sigma=0.6, kspace=kspace)
    reference = module.atomic_virials(*frames_as_batch(frames, charges))
    moved = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.positions += np.array([0.37, -1.2, 2.9])
        moved.append(atoms)
    shifted = module.atomic_virials(*frames_as_batch(moved, charges))
    assert torch.allclose(shifted, reference, rtol=0, atol=tolerance * float(reference.abs().max()))


@pytest.mark.parametrize("kspace", ["ewald", "pme"])
def test_atomic_virials_float32_and_differentiable(kspace):
    frames, charges = _mixed_frames()
    module = GaussianCoulomb(sigma=0.8, kspace=kspace)
    double = module.atomic_virials(*frames_as_batch(frames, charges))
    single = module.atomic_virials(*frames_as_batch(frames, charges, dtype=torch.float32))
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), double, rtol=0, atol=1e-5 * float(double.abs().max()))

    atoms, q = random_ionic_cell(seed=9, neutral=False)
    charges, pos, cell, pbc, batch = frames_as_batch([atoms], [q])
    inputs = (charges.requires_grad_(True), pos.requires_grad_(True), cell.requires_grad_(True))
    weights = torch.tensor(np.random.default_rng(9).normal(size=(len(atoms), 3, 3)))  # one backward pass, not 72
    assert torch.autograd.gradcheck(
        lambda q_, r_, c_: (weights * module.atomic_virials(q_, r_, c_, pbc, batch)).sum(), inputs, atol=1e-5
    )
