"""The physics suite (tests/physics.py, the tests of tests/test_physics.py run here on these fixtures) with
the terms beyond the cutoff switched on.

NequIP and MACE with latent-charge electrostatics (LES, plus the charge/spin embedding), and NequIP with
D3(BJ) dispersion inside the model. The checks that assume locality (zero force beyond the cutoff,
separated molecules additive) are replaced by their long-range counterparts: the energy of two molecules
farther apart than the cutoff still depends on their distance. Slabs are refused by the Ewald sum (a clear
ValueError), so the structures here are the molecule, the triclinic crystal and the small cell.
"""

from __future__ import annotations

import copy

import physics
import pytest
import torch
from conftest import E0S, SPECIES, make_molecule, make_slab, make_small_cell, make_triclinic_crystal, make_water
from test_physics import (  # noqa: F401  (collected here, with this module's fixtures)
    test_atomic_virials_sum_to_the_virial_and_are_equivariant,
    test_batch_equals_frames_one_by_one,
    test_float32_batch_equals_frames_one_by_one,
    test_float32_matches_float64,
    test_float32_rotation_and_reflection_equivariance,
    test_float32_translation_and_permutation,
    test_forces_match_finite_differences,
    test_no_gradient_between_frames,
    test_outputs_are_not_trivial,
    test_periodic_images_and_wrapping,
    test_permutation_equivariance,
    test_rotation_and_reflection_equivariance,
    test_stress_and_virial_match_finite_differences,
    test_supercell_is_extensive,
    test_translation_invariance,
)

from mpnn_ip.models.mace import MACE
from mpnn_ip.models.nequip import NequIP
from mpnn_ip.nn.dispersion import D3Dispersion

R_MAX = 4.0
NEQUIP = dict(num_layers=2, num_features=8, l_max=2, radial_mlp=[16], num_bessel=4)
MACE_KWARGS = dict(
    num_interactions=2, hidden_irreps="8x0e+8x1o", max_ell=2, correlation=3, radial_mlp=[16], num_bessel=4
)
LES = dict(long_range="les", long_range_options={"sigma": 1.0, "real_space_cutoff": 4.0})
VARIANTS = {
    "nequip[les]": (NequIP, {**NEQUIP, **LES}),
    "mace[les+charge_spin]": (MACE, {**MACE_KWARGS, **LES, "charge_spin_embedding": True}),
    "nequip[d3]": (NequIP, {**NEQUIP, "dispersion": "d3bj:pbe"}),
}
#: D3 pairs within 6 Å in these tests (the default 21 Å makes finite differences of small cells slow)
D3_TEST_CUTOFF = 6.0


def build_long_range_model(name: str, *, e0s=None, perturb: bool = True, seed: int = 0):
    cls, kwargs = VARIANTS[name]
    torch.manual_seed(seed)
    model = cls(species=SPECIES, r_max=R_MAX, e0s=e0s, **kwargs)
    if model.dispersion is not None:
        model.dispersion = D3Dispersion("pbe", cutoff=D3_TEST_CUTOFF, cn_cutoff=D3_TEST_CUTOFF)
    model = model.to(torch.float64).eval()
    return physics.perturb_parameters(model, seed + 1) if perturb else model


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request):
    return build_long_range_model(request.param)


@pytest.fixture(scope="module")
def model32(model):
    return copy.deepcopy(model).to(torch.float32)


@pytest.fixture(params=["molecule", "triclinic_crystal", "small_cell"])
def structure(request):
    return {"molecule": make_molecule, "triclinic_crystal": make_triclinic_crystal, "small_cell": make_small_cell}[
        request.param
    ]()


@pytest.fixture(params=["triclinic_crystal", "small_cell"])
def periodic_structure(request):
    return {"triclinic_crystal": make_triclinic_crystal, "small_cell": make_small_cell}[request.param]()


def frames():
    return [make_molecule(), make_triclinic_crystal(), make_small_cell()]


@pytest.fixture
def mixed_batch():
    return frames()


@pytest.fixture
def all_structures():
    return frames()


def test_latent_charges_are_not_trivial(model):
    if model.latent_ewald is not None:
        assert float(physics.evaluate(model, frames())["charges"].abs().max()) > 1e-3


@pytest.mark.parametrize("name", list(VARIANTS))
def test_isolated_atom_energy_is_e0(name):
    physics.check_isolated_atoms(build_long_range_model(name, e0s=E0S, perturb=False), E0S)


def test_two_molecules_beyond_the_cutoff_still_interact(model):
    """Unlike a local model (tests/test_physics.py: separated molecules are additive), the energy of two
    molecules farther apart than r_max = 4 Å differs with their distance (within the test's D3 cutoff)."""
    energies = []
    for gap in (5.2, 5.8):
        pair = make_molecule() + make_water()
        first = len(make_molecule())
        pair.positions[first:] += (gap, 0.0, 0.0)
        closest = min(pair.get_distances(i, range(first, len(pair))).min() for i in range(first))
        assert R_MAX < closest < D3_TEST_CUTOFF
        energies.append(float(physics.evaluate(model, [pair])["energy"][0]))
    assert abs(energies[0] - energies[1]) > 1e-6


def test_slabs_are_refused_by_the_ewald_sum():
    model = build_long_range_model("nequip[les]")
    with pytest.raises(ValueError, match="slabs"):
        physics.evaluate(model, [make_slab()])


@pytest.mark.parametrize("name", ["nequip[les]", "mace[les+charge_spin]"])
def test_latent_charges_sum_to_the_frames_charge_and_the_dipole_is_a_vector(name):
    """Charges sum to 0 (no input) or to the given total charge; a neutral molecule's dipole does not move
    with the origin and rotates with the molecule; periodic frames report no dipole."""
    from mpnn_ip.data.atomic_graph import AtomicGraph, collate, to_inputs

    model = build_long_range_model(name)
    molecule, crystal = make_molecule(), make_triclinic_crystal()
    inputs = to_inputs(collate([AtomicGraph.from_atoms(molecule), AtomicGraph.from_atoms(crystal)]))
    out = model(inputs)
    sums = torch.zeros(2, dtype=torch.float64).index_add(0, inputs["batch"], out["charges"].detach())
    torch.testing.assert_close(sums, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(out["dipole"][0].norm()) > 1e-4 and float(out["dipole"][1].abs().max()) == 0.0

    charged = dict(inputs, charge=torch.tensor([1.0, -2.0], dtype=torch.float64))
    sums = torch.zeros(2, dtype=torch.float64).index_add(0, inputs["batch"], model(charged)["charges"].detach())
    torch.testing.assert_close(sums, torch.tensor([1.0, -2.0], dtype=torch.float64), atol=1e-12, rtol=0)

    rotation = torch.tensor(physics.random_orthogonal_matrices(seed=2)[0][1], dtype=torch.float64)
    moved = molecule.copy()
    moved.positions = molecule.positions @ rotation.numpy().T + (3.0, -1.0, 7.0)
    first = model(to_inputs(AtomicGraph.from_atoms(molecule)))["dipole"][0].detach()
    second = model(to_inputs(AtomicGraph.from_atoms(moved)))["dipole"][0].detach()
    torch.testing.assert_close(second, rotation @ first, atol=1e-10, rtol=1e-10)
