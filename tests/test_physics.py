"""Every physics check of tests/physics.py applied to every model (and to the reference potential).

A registered model whose module cannot be imported yet is skipped ("not implemented yet"), so
it lights up when it lands. Models are small, float64 unless stated, and their parameters are
randomly perturbed (seeded) so that no zero-initialised layer makes a check pass vacuously.
"""

from __future__ import annotations

import copy

import physics
import pytest
import torch
from conftest import E0S, SPECIES
from reference_potentials import PairThreeBodyPotential

from mpnn_ip.models import MODEL_REGISTRY, model_class

#: Cutoff (Å) of every test model: small structures still have many edges and periodic images.
R_MAX = 4.0

#: Small hyperparameters per model (on top of species, r_max, e0s); registered models missing
#: here are built with the constructor contract's arguments alone.
MODEL_KWARGS = {
    "reference": {},
    "nequip": dict(num_layers=2, num_features=8, l_max=2, radial_mlp=[16], num_bessel=4),
    "mace": dict(
        num_interactions=2, hidden_irreps="8x0e+8x1o", max_ell=2, correlation=3, radial_mlp=[16], num_bessel=4
    ),
    "schnet": {},
    "bpnn": {},
    "gap": {},
}
MODEL_NAMES = list(dict.fromkeys([*MODEL_KWARGS, *MODEL_REGISTRY]))

#: Models whose convolutions sum over edges in chunks with recomputation (mpnn_ip.nn.edge_chunks):
#: the physics suite runs again with chunks of a few edges, so every test graph is chunked.
CHUNKED = {"nequip[edge_chunks]": "nequip", "mace[edge_chunks]": "mace"}
TEST_EDGE_CHUNK_SIZE = 5

STRUCTURES = ["molecule", "triclinic_crystal", "slab", "small_cell"]
PERIODIC_STRUCTURES = ["triclinic_crystal", "slab", "small_cell"]
DIMERS = [("H", "O"), ("Cu", "Au")]

#: Looser tolerances for float32 models (relative error; floor in eV, eV/Å, eV/Å³).
FLOAT32 = dict(rtol=1e-4, floor=1e-5)


def _model_class_or_skip(name: str):
    if name == "reference":
        return PairThreeBodyPotential
    if name not in MODEL_REGISTRY:
        pytest.skip(f"{name}: not implemented yet (not in MODEL_REGISTRY)")
    module = MODEL_REGISTRY[name].split(":")[0]
    try:
        return model_class(name)
    except ModuleNotFoundError as error:
        if error.name == module:
            pytest.skip(f"{name}: not implemented yet ({module} cannot be imported)")
        raise


def build_test_model(name: str, *, e0s=None, perturb: bool = True, seed: int = 0) -> torch.nn.Module:
    """The small float64 model ``name`` in eval mode; ``perturb`` adds seeded noise (0.1) to every parameter.

    A name of :data:`CHUNKED` is that model with edge chunks of :data:`TEST_EDGE_CHUNK_SIZE` edges.
    """
    if name in CHUNKED:
        return build_test_model(CHUNKED[name], e0s=e0s, perturb=perturb, seed=seed).set_edge_chunk_size(
            TEST_EDGE_CHUNK_SIZE
        )
    cls = _model_class_or_skip(name)
    torch.manual_seed(seed)
    model = cls(species=SPECIES, r_max=R_MAX, e0s=e0s, **MODEL_KWARGS.get(name, {}))
    model = model.to(torch.float64).eval()
    return physics.perturb_parameters(model, seed + 1) if perturb else model


@pytest.fixture(scope="module", params=MODEL_NAMES + list(CHUNKED))
def model(request):
    return build_test_model(request.param)


@pytest.fixture(scope="module")
def model32(model):
    return copy.deepcopy(model).to(torch.float32)


@pytest.fixture(params=STRUCTURES)
def structure(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(params=PERIODIC_STRUCTURES)
def periodic_structure(request):
    return request.getfixturevalue(request.param)


def test_outputs_are_not_trivial(model, all_structures):
    """Guards every other test against passing vacuously on a model whose forces vanish."""
    out = physics.evaluate(model, all_structures)
    assert float(out["forces"].abs().max()) > 1e-4, "forces are all ~0: the physics checks would pass vacuously"
    assert len(set(out["energy"].tolist())) == len(all_structures)


def test_rotation_and_reflection_equivariance(model, structure):
    physics.check_rotation_equivariance(model, structure)


def test_translation_invariance(model, structure):
    physics.check_translation_invariance(model, structure)


def test_permutation_equivariance(model, structure):
    physics.check_permutation_equivariance(model, structure)


def test_forces_match_finite_differences(model, structure):
    physics.check_forces_finite_differences(model, structure)


def test_stress_and_virial_match_finite_differences(model, structure):
    physics.check_stress_finite_differences(model, structure)


def test_atomic_virials_sum_to_the_virial_and_are_equivariant(model, structure):
    physics.check_atomic_virials(model, structure)


def test_cutoff_is_smooth(model):
    physics.check_cutoff_smoothness(model, DIMERS)


def test_batch_equals_frames_one_by_one(model, mixed_batch):
    physics.check_batch_consistency(model, mixed_batch)


def test_no_gradient_between_frames(model, mixed_batch):
    physics.check_no_gradient_between_frames(model, mixed_batch)


def test_periodic_images_and_wrapping(model, periodic_structure):
    physics.check_periodic_image_invariance(model, periodic_structure)


def test_supercell_is_extensive(model, periodic_structure):
    physics.check_supercell_extensivity(model, periodic_structure)


def test_separated_molecules_are_additive(model, molecule, water):
    physics.check_separated_molecules_additive(model, molecule, water)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_isolated_atom_energy_is_e0(name):
    """Built with e0s and default (unperturbed) initialisation, so energy_shift is its default 0."""
    physics.check_isolated_atoms(build_test_model(name, e0s=E0S, perturb=False), E0S)


def test_float32_rotation_and_reflection_equivariance(model32, structure):
    physics.check_rotation_equivariance(model32, structure, **FLOAT32)


def test_float32_translation_and_permutation(model32, structure):
    physics.check_translation_invariance(model32, structure, **FLOAT32)
    physics.check_permutation_equivariance(model32, structure, **FLOAT32)


def test_float32_batch_equals_frames_one_by_one(model32, mixed_batch):
    physics.check_batch_consistency(model32, mixed_batch, **FLOAT32)


def test_float32_matches_float64(model, model32, all_structures):
    physics.check_float32_matches_float64(model, model32, all_structures)
