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
