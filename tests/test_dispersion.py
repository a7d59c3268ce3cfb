"""DFT-D3(BJ) dispersion (mpnn_ip.nn.dispersion) against the reference implementation, simple-dftd3.

Energies, forces (autograd of our energy) and stress (strain derivative over the volume, ASE's sign) of
a molecular dimer, a slab, a triclinic crystal and a cell smaller than the cutoffs, with and without the
three-body term, against ``dftd3.ase.DFTD3`` with the same cutoffs; then batching, invariances, dtypes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.units import Bohr
from conftest import make_slab, make_small_cell, make_triclinic_crystal

from mpnn_ip.errors import ConfigError
from mpnn_ip.nn.d3_parameters import D3BJ_FUNCTIONALS
from mpnn_ip.nn.dispersion import D3Dispersion, parse_dispersion

pytest.importorskip("torch_dftd")  # the reference C6 table
dftd3_ase = pytest.importorskip("dftd3.ase")

ENERGY_TOLERANCE = 1e-6  # eV/atom
FORCE_TOLERANCE = 1e-5  # eV/Å
STRESS_TOLERANCE = 1e-6  # eV/Å³
#: Three-body cutoff of the periodic comparisons (Å): the default 40 bohr costs ~10^7 triangles per cell.
PERIODIC_THREE_BODY_CUTOFF = 9.0


def make_dimer() -> Atoms:
    """Benzene above ethanol (21 atoms, H C O), no periodicity."""
    atoms = molecule("C6H6")
    ethanol = molecule("CH3CH2OH")
    ethanol.translate([0.3, -0.2, 3.6])
    atoms += ethanol
    atoms.rattle(stdev=0.02, seed=5)
    atoms.info["name"] = "benzene-ethanol dimer"
    return atoms


def evaluate(module: D3Dispersion, frames: list[Atoms], dtype=torch.float64):
    """Energies [B] eV, forces [N, 3] eV/Å and stress [B, 3, 3] eV/Å³ (zeros without a volume) of ``frames``
    as one batch, all by autograd through a zero strain as mpnn_ip.models.derivatives does."""
    pos = torch.tensor(np.concatenate([a.positions for a in frames]), dtype=dtype, requires_grad=True)
    cell = torch.tensor(np.stack([a.cell[:] for a in frames]), dtype=dtype)
    pbc = torch.tensor(np.stack([a.pbc for a in frames]))
    batch = torch.cat([torch.full((len(a),), n, dtype=torch.long) for n, a in enumerate(frames)])
    numbers = torch.tensor(np.concatenate([a.numbers for a in frames]))
    strain = torch.zeros(len(frames), 3, 3, dtype=dtype, requires_grad=True)
    deformation = torch.eye(3, dtype=dtype) + strain
    strained_pos = torch.einsum("ni,nij->nj", pos, deformation[batch])
    atomic = module(strained_pos, numbers, cell @ deformation, pbc, batch)
    energy = torch.zeros(len(frames), dtype=dtype).index_add(0, batch, atomic)
    pos_grad, strain_grad = torch.autograd.grad(energy.sum(), [pos, strain])
    volume = torch.tensor([abs(np.linalg.det(a.cell[:])) if a.pbc.all() else 0.0 for a in frames], dtype=dtype)
    stress = torch.where(volume.view(-1, 1, 1) > 0, strain_grad / volume.clamp(min=1e-30).view(-1, 1, 1), 0.0)
    return energy.detach().double(), -pos_grad.double(), stress.detach().double()


def reference(atoms: Atoms, three_body: bool, three_body_cutoff: float = 40 * Bohr, functional: str = "pbe"):
    """Energy (eV), forces (eV/Å) and 3x3 stress (eV/Å³, None unless 3D periodic) from simple-dftd3."""
    s6, s8, a1, a2 = D3BJ_FUNCTIONALS[functional]
    atoms = atoms.copy()
    atoms.calc = dftd3_ase.DFTD3(
        damping="d3bj",
        params_tweaks={"s6": s6, "s8": s8, "a1": a1, "a2": a2, "s9": 1.0 if three_body else 0.0},
        realspace_cutoff={"disp2": 40 * Bohr, "disp3": three_body_cutoff, "cn": 40 * Bohr},
    )
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    return energy, forces, stress


STRUCTURES = {
    "dimer": make_dimer,
    "slab": make_slab,
    "triclinic": make_triclinic_crystal,
    "small_cell": make_small_cell,
}


@pytest.mark.parametrize("three_body", [False, True], ids=["two_body", "three_body"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_energy_forces_stress_match_dftd3(name, three_body):
    atoms = STRUCTURES[name]()
    three_body_cutoff = 40 * Bohr if not atoms.pbc.any() else PERIODIC_THREE_BODY_CUTOFF
    module = D3Dispersion("pbe", three_body=three_body, three_body_cutoff=three_body_cutoff)
    energy, forces, stress = evaluate(module, [atoms])
    ref_energy, ref_forces, ref_stress = reference(atoms, three_body, three_body_cutoff)
    n = len(atoms)
    assert abs(float(energy[0]) - ref_energy) / n < ENERGY_TOLERANCE, (name, float(energy[0]), ref_energy)
    assert np.abs(forces.numpy() - ref_forces).max() < FORCE_TOLERANCE, name
    if ref_stress is not None:
        assert np.abs(stress[0].numpy() - ref_stress).max() < STRESS_TOLERANCE, name
    assert abs(ref_energy) / n > 1e-3, "the comparison must not be trivial"


def test_parse_dispersion_is_dftd3_d3bj_pbe_with_40_bohr_cutoffs():
    """``d3bj:pbe`` with no further arguments is simple-dftd3's D3(BJ)-PBE without ATM, pairs and coordination
    numbers within 40 bohr (the issue's default; simple-dftd3's own pair cutoff is 60 bohr)."""
    atoms = make_triclinic_crystal()
    module = parse_dispersion("d3bj:PBE")
    assert module.cutoff == pytest.approx(40 * Bohr) and module.cn_cutoff == pytest.approx(40 * Bohr)
    energy, forces, stress = evaluate(module, [atoms])
    atoms.calc = dftd3_ase.DFTD3(method="pbe", damping="d3bj", realspace_cutoff={"disp2": 40 * Bohr, "cn": 40 * Bohr})
    assert abs(float(energy[0]) - atoms.get_potential_energy()) / len(atoms) < ENERGY_TOLERANCE
    assert np.abs(forces.numpy() - atoms.get_forces()).max() < FORCE_TOLERANCE
    assert np.abs(stress[0].numpy() - atoms.get_stress(voigt=False)).max() < STRESS_TOLERANCE


def test_other_functional_matches_dftd3():
    atoms = make_slab()
    module = D3Dispersion("b3lyp")
    energy, forces, _ = evaluate(module, [atoms])
    ref_energy, ref_forces, _ = reference(atoms, False, functional="b3lyp")
    assert abs(float(energy[0]) - ref_energy) / len(atoms) < ENERGY_TOLERANCE
    assert np.abs(forces.numpy() - ref_forces).max() < FORCE_TOLERANCE


def test_functional_parameters_match_dftd3_parameter_file():
    tomllib = pytest.importorskip("tomllib")
    from importlib.resources import files

    table = tomllib.loads(files("dftd3").joinpath("parameters.toml").read_text())
    defaults = table["default"]["parameter"]["d3"]["bj"]
    for functional, (s6, s8, a1, a2) in D3BJ_FUNCTIONALS.items():
        published = {**defaults, **table["parameter"][functional]["d3"]["bj"]}
        assert (s6, s8, a1, a2) == (published["s6"], published["s8"], published["a1"], published["a2"]), functional


def test_batch_equals_each_frame_alone():
    frames = [make_dimer(), make_slab(), make_triclinic_crystal(), make_small_cell()]
    module = D3Dispersion(three_body=True, three_body_cutoff=6.0)
    energy, forces, stress = evaluate(module, frames)
    offset = 0
    for n, atoms in enumerate(frames):
        alone_energy, alone_forces, alone_stress = evaluate(module, [atoms])
        assert torch.allclose(energy[n], alone_energy[0], rtol=0, atol=1e-10)
        assert torch.allclose(forces[offset : offset + len(atoms)], alone_forces, rtol=0, atol=1e-10)
        assert torch.allclose(stress[n], alone_stress[0], rtol=0, atol=1e-12)
        offset += len(atoms)


def test_energy_invariant_under_translation_and_rotation():
    module = D3Dispersion(three_body=True, three_body_cutoff=6.0)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    for atoms in (make_dimer(), make_triclinic_crystal(), make_slab()):
        energy, forces, _ = evaluate(module, [atoms])
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.numpy().T + np.array([0.7, -1.3, 2.1])
        if atoms.pbc.any():
            moved.cell = atoms.cell[:] @ rotation.numpy().T
        moved_energy, moved_forces, _ = evaluate(module, [moved])
        assert abs(float(moved_energy[0] - energy[0])) < 1e-9, atoms.info["name"]
        assert torch.allclose(moved_forces, forces @ rotation.T, rtol=0, atol=1e-9), atoms.info["name"]


def test_wrapped_and_unwrapped_positions_agree():
    atoms = make_triclinic_crystal()
    unwrapped = atoms.copy()
    unwrapped.positions += np.array([2, -1, 3]) @ atoms.cell[:]
    unwrapped.positions[1] -= 2 * atoms.cell[0]
    module = D3Dispersion(three_body=True, three_body_cutoff=6.0)
    energy, forces, stress = evaluate(module, [atoms])
    moved_energy, moved_forces, moved_stress = evaluate(module, [unwrapped])
    assert abs(float(moved_energy[0] - energy[0])) < 1e-10
    assert torch.allclose(moved_forces, forces, rtol=0, atol=1e-10)
    assert torch.allclose(moved_stress, stress, rtol=0, atol=1e-12)


def test_float32_close_to_float64():
    frames = [make_dimer(), make_triclinic_crystal()]
    module = D3Dispersion(three_body=True, three_body_cutoff=6.0)
    energy, forces, stress = evaluate(module, frames)
    energy32, forces32, stress32 = evaluate(module, frames, dtype=torch.float32)
    assert torch.allclose(energy32, energy, rtol=1e-5, atol=0)
    assert (forces32 - forces).abs().max() < 1e-5 * max(float(forces.abs().max()), 1.0)
    # float32 sums some 10^5 pair terms per cell: relative 1e-4 of the stress
    assert (stress32 - stress).abs().max() < 1e-4 * float(stress.abs().max())


def test_three_body_chunks_and_second_derivatives():
    """Chunked triangles give the same energy and forces, and forces can be differentiated again
    (training on forces): the derivative of ``F . u`` matches finite differences."""
    atoms = make_dimer()
    whole = D3Dispersion(three_body=True)
    chunked = D3Dispersion(three_body=True, max_triplets_per_chunk=300)
    energy, forces, _ = evaluate(whole, [atoms])
    chunked_energy, chunked_forces, _ = evaluate(chunked, [atoms])
    assert abs(float(chunked_energy[0] - energy[0])) < 1e-12
    assert torch.allclose(chunked_forces, forces, rtol=0, atol=1e-12)

    numbers, cell = torch.tensor(atoms.numbers), torch.zeros(1, 3, 3, dtype=torch.float64)
    pbc, batch = torch.zeros(1, 3, dtype=torch.bool), torch.zeros(len(atoms), dtype=torch.long)
    direction = torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def forces_along(pos, create_graph):
        pos = pos.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(chunked(pos, numbers, cell, pbc, batch).sum(), pos, create_graph=create_graph)
        return pos, -(grad * direction).sum()

    pos0 = torch.tensor(atoms.positions, dtype=torch.float64)
    pos, projected = forces_along(pos0, create_graph=True)
    (analytic,) = torch.autograd.grad(projected, pos)
    step = 1e-4
    for atom, axis in ((0, 2), (7, 0), (15, 1)):
        shift = torch.zeros_like(pos0)
        shift[atom, axis] = step
        numeric = (forces_along(pos0 + shift, False)[1] - forces_along(pos0 - shift, False)[1]) / (2 * step)
        assert math.isclose(float(analytic[atom, axis]), float(numeric), rel_tol=1e-5, abs_tol=1e-8)


def test_unknown_functional_and_kind_refused():
    with pytest.raises(ConfigError, match="known: .*pbe"):
        D3Dispersion("pbe-typo")
    with pytest.raises(ConfigError, match="d3bj"):
        parse_dispersion("d4:pbe")
    with pytest.raises(ConfigError, match="pbe0"):
        parse_dispersion("d3bj:nonsense")
    with pytest.raises(ConfigError, match="d3bj"):
        parse_dispersion("d3bj")
    assert parse_dispersion(None) is None and parse_dispersion("none") is None


def test_unsupported_element_refused():
    module = D3Dispersion()
    pos = torch.zeros(2, 3, dtype=torch.float64)
    pos[1, 0] = 3.0
    with pytest.raises(ValueError, match="1..94"):
        module(
            pos,
            torch.tensor([1, 95]),
            torch.zeros(1, 3, 3, dtype=torch.float64),
            torch.zeros(1, 3, dtype=torch.bool),
            torch.zeros(2, dtype=torch.long),
        )
