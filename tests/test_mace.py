"""MACE model: construction, presets, parameter counts, dtypes, rebuild, edge tensor product, physics."""

from __future__ import annotations

import physics
import pytest
import torch
from conftest import make_molecule, make_triclinic_crystal, make_water
from e3nn import o3

from mpnn_ip.models import build_model
from mpnn_ip.models.mace import MACE, PRESETS
from mpnn_ip.nn import MACEInteraction
from mpnn_ip.nn import tensor_product_paths as message_paths

SPECIES_3BPA = ["H", "C", "N", "O"]
TINY = dict(num_interactions=2, hidden_irreps="8x0e+8x1o", max_ell=2, correlation=3, radial_mlp=[16], num_bessel=4)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_matched_preset_has_the_expected_parameter_count():
    """mace-torch 0.3.16 (mace-s of the benchmark) has 219,984 parameters at this size on 3BPA. Every
    block matches except: the symmetric contraction's symmetric basis needs 42 instead of 114
    weights per species and channel, and the first layer has no skip (64 x 4 x 64 weights)."""
    torch.manual_seed(0)
    model = build_model("mace", species=SPECIES_3BPA, r_max=5.0, **PRESETS["small"])
    assert _count(model) == 219_984 - (114 - 42) * 4 * 64 - 64 * 4 * 64 == 185_168
    assert sum(p.numel() for p in model.products.parameters()) == 23_040
    assert sum(p.numel() for p in model.interactions.parameters()) == 160_768


def test_defaults_build_and_run():
    torch.manual_seed(0)
    model = MACE(species=["H", "O"])
    assert model.config["hidden_irreps"] == "64x0e+64x1o" and model.config["cutoff_p"] == 5
    out = model(physics.model_inputs(make_water()), compute_forces=True)
    assert torch.isfinite(out["energy"]).all() and out["forces"].shape == (3, 3)


def test_config_rebuilds_the_same_model():
    torch.manual_seed(0)
    model = build_model(
        "mace",
        species=["H", "C", "O"],
        r_max=4.0,
        e0s={"H": -1.0},
        avg_num_neighbors=7.5,
        correlation=[3, 2],
        **{k: v for k, v in TINY.items() if k != "correlation"},
    )
    rebuilt = type(model)(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    inputs = physics.model_inputs(make_molecule())
    torch.testing.assert_close(rebuilt(inputs)["energy"], model(inputs)["energy"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_runs_in_float32_and_float64(dtype):
    torch.manual_seed(0)
    model = build_model("mace", species=["C", "O", "H", "Cu", "Au"], r_max=4.0, **TINY).to(dtype)
    out = model(physics.model_inputs([make_molecule(), make_triclinic_crystal()]), compute_stress=True)
    assert out["energy"].dtype == dtype and out["forces"].dtype == dtype
    assert torch.isfinite(out["stress"]).all()


def test_energy_is_rotation_invariant_and_forces_match_finite_differences():
    torch.manual_seed(0)
    model = build_model("mace", species=["C", "O", "H", "Cu", "Au"], r_max=4.0, **TINY).to(torch.float64).eval()
    physics.check_rotation_equivariance(model, make_triclinic_crystal())
    physics.check_forces_finite_differences(model, make_molecule())


MACE_TORCH_OPTIONS = [
    dict(first_interaction_skip="residual", shift_every_atom=True, energy_shift=0.3),
    dict(
        first_interaction_skip="species_linear",
        radial_type="gaussian",
        distance_transform="agnesi",
        pair_repulsion=True,
    ),
    dict(distance_transform="soft", pair_repulsion=True, shift_every_atom=True),
]


@pytest.mark.parametrize("options", MACE_TORCH_OPTIONS, ids=["residual_first", "gaussian_agnesi_zbl", "soft_zbl"])
def test_mace_torch_options_are_invariant_with_exact_forces_and_rebuild(options):
    """The options that reproduce mace-torch models (for mpnn-import) keep the physics: rotation
    invariance, forces = -dE/dx, and a rebuild from the config (stress: the parity tests of tests/test_interop_mace.py)."""
    torch.manual_seed(0)
    model = (
        build_model("mace", species=["C", "O", "H", "Cu", "Au"], r_max=4.0, **TINY, **options).to(torch.float64).eval()
    )
    physics.check_rotation_equivariance(model, make_triclinic_crystal())
    physics.check_forces_finite_differences(model, make_molecule())
    rebuilt = type(model)(**model.config).to(torch.float64)
    rebuilt.load_state_dict(model.state_dict())
    inputs = physics.model_inputs(make_molecule())
    torch.testing.assert_close(rebuilt(inputs)["energy"], model(inputs)["energy"])


@pytest.mark.parametrize("node_irreps", ["0e", "0e+1o"])
def test_edge_tensor_product_matches_e3nn(node_irreps):
    """Per-edge messages equal ``o3.TensorProduct`` with MACE's "uvu" instructions and radial weights."""
    torch.manual_seed(0)
    channels, n_atoms, n_edges = 3, 5, 9
    irreps_node = o3.Irreps([(channels, ir) for _, ir in o3.Irreps(node_irreps)])
    dim_node = sum(ir.dim for _, ir in irreps_node)
    irreps_sh = o3.Irreps.spherical_harmonics(3)
    irreps_target = o3.Irreps([(channels, ir) for _, ir in irreps_sh])
    block = MACEInteraction(irreps_node, irreps_sh, irreps_target, f"{channels}x0e", 2, 4, [8]).to(torch.float64)
    paths = message_paths(irreps_node, irreps_sh, irreps_target)
    instructions = [(i, j, k, "uvu", True) for k, (i, j, _) in enumerate(paths)]
    irreps_mid = o3.Irreps([(channels, ir) for _, _, ir in paths])
    reference = o3.TensorProduct(
        irreps_node, irreps_sh, irreps_mid, instructions, shared_weights=False, internal_weights=False
    ).to(torch.float64)

    generator = torch.Generator().manual_seed(1)
    features = torch.randn(
        n_atoms, dim_node, channels, dtype=torch.float64, generator=generator
    )  # channels-last [n, D, C]
    vectors = torch.randn(n_edges, 3, dtype=torch.float64, generator=generator)
    edge_sh = o3.spherical_harmonics(irreps_sh, vectors, normalize=True, normalization="component")
    weights = torch.randn(n_edges, len(paths), channels, dtype=torch.float64, generator=generator)
    neighbour = torch.randint(0, n_atoms, (n_edges,), generator=generator)

    ours = block.edge_messages(features, edge_sh, weights, neighbour)  # [E, rows, C]
    e3nn_features = torch.cat([features[:, 0, :], features[:, 1:, :].transpose(1, 2).reshape(n_atoms, -1)], dim=-1)
    theirs = reference(e3nn_features[neighbour], edge_sh, weights.reshape(n_edges, -1))
    row_path = block.constants.get(torch.float64, "cpu")["row_path"]
    start = 0
    for p, (_, _, ir) in enumerate(paths):
        expected = theirs[:, start : start + channels * ir.dim].reshape(n_edges, channels, ir.dim).transpose(1, 2)
        start += channels * ir.dim
        # e3nn builds its coefficients in the default dtype (float32), hence ~1e-8 differences
        torch.testing.assert_close(ours[:, row_path == p, :], expected, rtol=1e-6, atol=1e-6)


def test_last_layer_keeps_only_scalars_and_presets_scale():
    torch.manual_seed(0)
    counts = {}
    for name in ("small", "medium", "large"):
        model = MACE(species=SPECIES_3BPA, **PRESETS[name])
        assert model.products[-1].irreps_out == o3.Irreps(model.config["hidden_irreps"].split("+")[0])
        counts[name] = _count(model)
    assert counts["small"] < counts["medium"] < counts["large"]


def test_bad_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="hidden_irreps"):
        MACE(species=["H"], hidden_irreps="8x0e+4x1o")
    with pytest.raises(ValueError, match="correlation"):
        MACE(species=["H"], correlation=4)
