"""Unit tests of the building blocks in mpnn_ip.nn: irreps wiring, equivariance, the scalar maths."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from mpnn_ip.nn import (
    ChannelwiseTensorProduct,
    EquivariantGate,
    LinearReadout,
    MLPReadout,
    PerSpeciesScaleShift,
    RadialEmbedding,
    RadialMLP,
    SpeciesEmbedding,
    SpeciesSelfInteraction,
    TensorProductConvolution,
    ZBLRepulsion,
    check_same_irreps,
    convolution_paths,
    neighbour_gate,
)

IRREPS_SH = o3.Irreps.spherical_harmonics(2)
IRREPS_HIDDEN = o3.Irreps("4x0e+4x0o+4x1o+4x1e+4x2e+4x2o")


def _random_graph(n_atoms=6, n_edges=20, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, n_atoms, (2, n_edges), generator=g)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    vectors = torch.randn(edge_index.shape[1], 3, generator=g, dtype=dtype) * 1.5
    return edge_index, vectors


# e3nn builds its Wigner D matrices from float32 constants, so D_from_matrix is exact only to ~1e-6
# even in float64; the equivariance checks below use that tolerance.
EQUIVARIANCE_TOL = dict(rtol=1e-5, atol=1e-5)


def _rotation(dtype=torch.float64):
    torch.manual_seed(3)
    return o3.rand_matrix(dtype=dtype)


def test_species_embedding_equals_linear_of_one_hot():
    torch.manual_seed(0)
    embedding = SpeciesEmbedding(num_species=3, num_features=5)
    linear = o3.Linear("3x0e", "5x0e")
    with torch.no_grad():
        linear.weight.copy_(embedding.weight.reshape(-1))
    species = torch.tensor([2, 0, 1, 1])
    assert embedding.irreps_out == o3.Irreps("5x0e")
    torch.testing.assert_close(embedding(species), linear(embedding.one_hot(species)))


def test_radial_mlp_output_vanishes_at_cutoff():
    torch.manual_seed(0)
    radial = RadialEmbedding(r_max=4.0, num_basis=8)
    mlp = RadialMLP(num_basis=8, hidden=[16, 16], num_out=7)
    lengths = torch.tensor([0.8, 2.0, 3.99, 4.0, 4.5])
    weights = mlp(radial(lengths))
    assert weights.shape == (5, 7)
    assert torch.all(weights[3:] == 0)
    assert torch.all(weights[:2].abs().sum(-1) > 0)


def test_radial_mlp_columns_are_those_of_the_full_output_in_the_order_asked():
    torch.manual_seed(0)
    mlp = RadialMLP(num_basis=8, hidden=[16, 16], num_out=7).double()
    embedding = torch.randn(5, 8, dtype=torch.float64)
    columns = torch.tensor([6, 0, 3, 3, 1])
    torch.testing.assert_close(mlp(embedding, columns), mlp(embedding)[:, columns], rtol=1e-13, atol=1e-14)


def _convolution(irreps_in="4x0e+4x0o+4x1o+4x2e", irreps_out=IRREPS_HIDDEN, **kwargs):
    torch.manual_seed(0)
    return TensorProductConvolution(irreps_in, IRREPS_SH, irreps_out, num_basis=8, radial_mlp=[16], **kwargs).double()


def test_convolution_is_rotation_equivariant():
    conv = _convolution()
    radial = RadialEmbedding(r_max=5.0, num_basis=8).double()
    sh = o3.SphericalHarmonics(IRREPS_SH, normalize=True, normalization="component")
    edge_index, vectors = _random_graph()
    x = conv.irreps_in.randn(6, -1, dtype=torch.float64)
    rot = _rotation()
    d_in = conv.irreps_in.D_from_matrix(rot)
    d_out = conv.irreps_out.D_from_matrix(rot)
    lengths = vectors.norm(dim=-1)

    out = conv(x, sh(vectors), radial(lengths), edge_index)
    out_rotated_inputs = conv(x @ d_in.T, sh(vectors @ rot.T), radial(lengths), edge_index)
    torch.testing.assert_close(out_rotated_inputs, out @ d_out.T, **EQUIVARIANCE_TOL)
    assert out.abs().max() > 1e-3


def test_convolution_is_parity_equivariant():
    conv = _convolution()
    radial = RadialEmbedding(r_max=5.0, num_basis=8).double()
    sh = o3.SphericalHarmonics(IRREPS_SH, normalize=True, normalization="component")
    edge_index, vectors = _random_graph()
    x = conv.irreps_in.randn(6, -1, dtype=torch.float64)
    inversion = -torch.eye(3, dtype=torch.float64)
    lengths = vectors.norm(dim=-1)
    out = conv(x, sh(vectors), radial(lengths), edge_index)
    out_inverted = conv(x @ conv.irreps_in.D_from_matrix(inversion).T, sh(-vectors), radial(lengths), edge_index)
    torch.testing.assert_close(out_inverted, out @ conv.irreps_out.D_from_matrix(inversion).T, **EQUIVARIANCE_TOL)


def test_convolution_neighbor_normalization_divides_by_sqrt_or_mean():
    edge_index, vectors = _random_graph()
    radial = RadialEmbedding(r_max=5.0, num_basis=8).double()(vectors.norm(dim=-1))
    sh = o3.SphericalHarmonics(IRREPS_SH, normalize=True, normalization="component")(vectors)
    x = o3.Irreps("4x0e+4x1o").randn(6, -1, dtype=torch.float64)
    outs = {}
    for name, avg, norm in [("one", 1.0, "sqrt"), ("sqrt", 9.0, "sqrt"), ("linear", 9.0, "linear")]:
        conv = _convolution("4x0e+4x1o", "4x0e+4x1o", avg_num_neighbors=avg, neighbor_normalization=norm)
        outs[name] = conv(x, sh, radial, edge_index)
    torch.testing.assert_close(outs["sqrt"], outs["one"] / 3.0)
    torch.testing.assert_close(outs["linear"], outs["one"] / 9.0)


@pytest.mark.parametrize(
    "irreps_in, irreps_target",
    [("3x0e+2x1o+2x2e", str(IRREPS_HIDDEN)), (str(IRREPS_HIDDEN), "4x0e")],
)
def test_channelwise_tensor_product_equals_e3nn_tensor_product(irreps_in, irreps_target):
    irreps_mid, instructions = convolution_paths(irreps_in, IRREPS_SH, irreps_target)
    reference = o3.TensorProduct(
        irreps_in, IRREPS_SH, irreps_mid, instructions, shared_weights=False, internal_weights=False
    )
    fused = ChannelwiseTensorProduct(irreps_in, IRREPS_SH, irreps_mid, instructions).double()
    assert fused.weight_numel == reference.weight_numel and fused.irreps_out == reference.irreps_out
    torch.manual_seed(0)
    x = o3.Irreps(irreps_in).randn(9, -1, dtype=torch.float64)
    sh = o3.SphericalHarmonics(IRREPS_SH, normalize=True, normalization="component")(
        torch.randn(9, 3, dtype=torch.float64)
    )
    weights = torch.randn(9, reference.weight_numel, dtype=torch.float64)
    # e3nn keeps its Clebsch-Gordan coefficients in float32
    torch.testing.assert_close(fused(x, sh, weights), reference.double()(x, sh, weights), rtol=1e-5, atol=1e-5)
    edge_index = torch.tensor([[0, 0, 1, 2, 2, 2, 3, 4, 4], [1, 2, 0, 0, 1, 3, 2, 3, 0]])
    summed = fused.sum_messages(x[:5], sh, weights[:, fused.weight_columns()], edge_index)
    expected = torch.zeros(5, fused.irreps_out.dim, dtype=torch.float64).index_add_(
        0, edge_index[0], fused(x[edge_index[1]], sh, weights)
    )
    torch.testing.assert_close(summed, expected)


def test_channelwise_tensor_product_is_exact_in_float64_after_a_float32_build():
    """Built in float32 and moved to float64, the coefficients are float64's, not float32's rounded (1e-8)."""
    irreps_in, irreps_sh = o3.Irreps("2x1o"), o3.Irreps("1x1o")
    irreps_mid, instructions = convolution_paths(irreps_in, irreps_sh, "2x0e+2x2e")
    fused = ChannelwiseTensorProduct(irreps_in, irreps_sh, irreps_mid, instructions).to(torch.float32).to(torch.float64)
    torch.manual_seed(0)
    x, sh = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    weights = torch.randn(5, fused.weight_numel, dtype=torch.float64)
    out = fused(x.reshape(5, 6), sh, weights)
    start = 0
    for (_, ir_out), path in zip(irreps_mid, range(len(instructions))):
        cg = o3.wigner_3j(1, 1, ir_out.l, dtype=torch.float64) * (2 * ir_out.l + 1) ** 0.5
        expected = torch.einsum("eui,ej,ijk->euk", x, sh, cg) * weights[:, 2 * path : 2 * path + 2, None]
        torch.testing.assert_close(
            out[:, start : start + 2 * ir_out.dim], expected.reshape(5, -1), rtol=1e-14, atol=1e-14
        )
        start += 2 * ir_out.dim


def test_channelwise_tensor_product_loads_state_dicts_that_stored_its_coefficients():
    irreps_mid, instructions = convolution_paths("2x0e+2x1o", IRREPS_SH, "2x0e+2x1o")
    fused = ChannelwiseTensorProduct("2x0e+2x1o", IRREPS_SH, irreps_mid, instructions)
    assert fused.state_dict() == {}
    fused.load_state_dict(
        {"coupling_0": torch.zeros(1), "weight_index_0": torch.zeros(1), "permutation": torch.zeros(1)}
    )


def test_convolution_rejects_unreachable_output_irreps_naming_both():
    with pytest.raises(ValueError, match=r"3o.*4x0e"):
        TensorProductConvolution("4x0e", IRREPS_SH, "4x0e+4x3o", num_basis=8)


def test_gate_is_rotation_equivariant_and_states_irreps():
    gate = EquivariantGate("4x0e+4x0o", "4x1o+4x2e", "0e")
    assert gate.irreps_in == o3.Irreps("4x0o+12x0e+4x1o+4x2e")  # e3nn sorts and merges the input
    assert gate.irreps_out == o3.Irreps("4x0e+4x0o+4x1o+4x2e")
    x = gate.irreps_in.randn(5, -1, dtype=torch.float64)
    rot = _rotation()
    torch.testing.assert_close(
        gate(x @ gate.irreps_in.D_from_matrix(rot).T),
        gate(x) @ gate.irreps_out.D_from_matrix(rot).T,
        **EQUIVARIANCE_TOL,
    )


def test_gate_rejects_even_activation_on_odd_scalars():
    with pytest.raises(ValueError):
        EquivariantGate("4x0o", "4x1o", "0e", nonlinearity_scalars={"e": "silu", "o": "silu"})
    with pytest.raises(ValueError, match="l > 0"):
        EquivariantGate("4x0e", "4x0e")


def test_self_interaction_equals_one_hot_tensor_product():
    torch.manual_seed(0)
    irreps_in, irreps_out, num_species = o3.Irreps("3x0e+2x1o+2x2e"), o3.Irreps("4x0e+3x1o+2x1e"), 3
    fast = SpeciesSelfInteraction(irreps_in, num_species, irreps_out).double()
    reference = o3.FullyConnectedTensorProduct(irreps_in, f"{num_species}x0e", irreps_out).double()
    # copy the per-species weights [mul_in, S, mul_out] of each path into the stacked linear
    with torch.no_grad():
        for ins_ref, w_ref in zip(reference.instructions, reference.weight_views(yield_instruction=False)):
            for ins_fast, w_fast in zip(fast.linear.instructions, fast.linear.weight_views(yield_instruction=False)):
                if ins_fast.i_in == ins_ref.i_in1 and ins_fast.i_out == ins_ref.i_out:
                    w_fast.copy_(w_ref.reshape(w_fast.shape))
    species = torch.tensor([0, 2, 1, 2, 0])
    x = irreps_in.randn(5, -1, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(species, num_species).double()
    torch.testing.assert_close(fast(x, species), reference(x, one_hot))


def test_self_interaction_rejects_disjoint_irreps():
    with pytest.raises(ValueError, match=r"1e.*0e"):
        SpeciesSelfInteraction("4x0e", 2, "4x1e")


def test_wiring_errors_name_both_irreps():
    with pytest.raises(ValueError, match=r"4x0e\+4x1o.*4x0e\+4x1e"):
        check_same_irreps("4x0e+4x1o", "4x0e+4x1e", "layer 1", "layer 2")
    with pytest.raises(ValueError, match=r"1x0e.*4x1o"):
        LinearReadout("4x1o", "1x0e")


def test_readouts_are_invariant_scalars():
    torch.manual_seed(0)
    irreps = o3.Irreps("8x0e+4x1o")
    x = irreps.randn(7, -1, dtype=torch.float64)
    rot = irreps.D_from_matrix(_rotation())
    for readout in (LinearReadout(irreps).double(), MLPReadout(irreps, "16x0e").double()):
        out = readout(x)
        assert out.shape == (7, 1)
        torch.testing.assert_close(readout(x @ rot.T), out, **EQUIVARIANCE_TOL)


def test_scale_shift_is_affine_per_species():
    scale_shift = PerSpeciesScaleShift(3, scale=[1.0, 2.0, 3.0], shift=[0.0, -1.0, 5.0])
    species = torch.tensor([0, 1, 2, 1])
    energy = torch.tensor([1.0, 1.0, 2.0, -1.0])
    with_neighbours = torch.ones(4)
    torch.testing.assert_close(scale_shift(energy, species, with_neighbours), torch.tensor([1.0, 1.0, 11.0, -3.0]))
    torch.testing.assert_close(scale_shift(energy, species, torch.zeros(4)), torch.tensor([1.0, 2.0, 6.0, -2.0]))
    assert sum(p.numel() for p in scale_shift.parameters()) == 6
    fixed = PerSpeciesScaleShift(3, 2.0, 0.5, trainable=False)
    assert not list(fixed.parameters())
    torch.testing.assert_close(fixed(energy, species, with_neighbours), 2.0 * energy + 0.5)
    with pytest.raises(ValueError, match="one per species"):
        PerSpeciesScaleShift(3, scale=[1.0, 2.0])
    by_element = PerSpeciesScaleShift([1, 8], shift={"O": -2.0, 1: -0.5}, trainable=False)
    torch.testing.assert_close(by_element.shift, torch.tensor([-0.5, -2.0]))
    with pytest.raises(ValueError, match="not among the model's species"):
        PerSpeciesScaleShift([1, 8], shift={"C": -1.0})


def test_neighbour_gate_is_zero_alone_one_with_a_near_neighbour_and_smooth_at_the_cutoff():
    r_max = 5.0
    lengths = torch.tensor([1.0, 1.0, 4.99, 4.99], dtype=torch.float64)
    centres = torch.tensor([0, 1, 2, 3])
    gate = neighbour_gate(lengths, centres, 5, r_max)
    torch.testing.assert_close(gate, torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64), atol=1e-9, rtol=0)
    r = torch.linspace(0.5, 5.5, 201, dtype=torch.float64, requires_grad=True)
    values = neighbour_gate(r, torch.arange(201), 201, r_max)
    (slope,) = torch.autograd.grad(values.sum(), r)
    assert bool((values >= 0).all() and (values <= 1).all())
    assert float(values.detach()[r.detach() >= r_max].abs().max()) == 0.0
    assert float(slope.abs()[(r.detach() > r_max - 0.05)].max()) < 1e-9


def _zbl_dimer_energy(zbl, r):
    species = torch.tensor([0, 1])
    edge_index = torch.tensor([[0, 1], [1, 0]])
    return zbl(species, edge_index, r.reshape(1).repeat(2)).sum()


def test_zbl_is_repulsive_smooth_and_zero_beyond_cutoff():
    zbl = ZBLRepulsion([1, 6], p=6, r_max=5.0).double()
    cutoff = float(zbl.pair_cutoff[0, 1])
    radii = torch.linspace(0.2, cutoff + 0.5, 200, dtype=torch.float64)
    energies = torch.stack([_zbl_dimer_energy(zbl, r) for r in radii])
    inside = radii < cutoff
    assert torch.all(energies[inside] > 0)
    assert torch.all(energies[~inside] == 0)
    assert torch.all(torch.diff(energies[inside]) < 0)
    # the force goes continuously to zero at the cutoff
    r = torch.tensor(cutoff - 1e-5, dtype=torch.float64, requires_grad=True)
    (force,) = torch.autograd.grad(_zbl_dimer_energy(zbl, r), r)
    assert abs(float(force)) < 1e-6
    # bare Coulomb limit at short range: V -> 14.4 Z1 Z2 / r
    r_small = torch.tensor(1e-4, dtype=torch.float64)
    assert abs(float(_zbl_dimer_energy(zbl, r_small)) / (14.399645 * 6 / 1e-4) - 1.0) < 1e-2
