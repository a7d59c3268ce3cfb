"""Symmetric contraction (MACE product basis): basis, equivariance, correlation orders, species."""

from __future__ import annotations

import itertools

import pytest
import torch
from e3nn import o3

from mpnn_ip.nn import SymmetricContraction, symmetric_coupling_basis

A_IRREPS = "0e+1o+2e+3o"


def _rotation(seed: int = 0, improper: bool = True) -> torch.Tensor:
    torch.manual_seed(seed)
    rotation = o3.rand_matrix(dtype=torch.float64)
    return -rotation if improper else rotation


def _wigner_from_harmonics(irreps, rotation) -> torch.Tensor:
    """Block-diagonal D(R) fitted from float64 spherical harmonics (exact to ~1e-14).

    e3nn's ``Irreps.D_from_matrix`` is accurate to only ~1e-7 in float64 (it uses stored
    float32 generators), too coarse for a 1e-10 check; every irrep here has the
    spherical-harmonic parity (-1)^l, so Y_l(R x) = D_l(R) Y_l(x) holds for improper R too.
    """
    points = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    blocks = []
    for mul, ir in o3.Irreps(irreps):
        assert ir.p == (-1) ** ir.l
        y = o3.spherical_harmonics(ir.l, points, normalize=True)
        y_rotated = o3.spherical_harmonics(ir.l, points @ rotation.T, normalize=True)
        blocks += [torch.linalg.lstsq(y, y_rotated).solution.T] * mul
    return torch.block_diag(*blocks)


def _apply(wigner: torch.Tensor, features: torch.Tensor, channels: int) -> torch.Tensor:
    """Rotate channels-last features [n, D * C] by D(R) [D, D]."""
    n = features.shape[0]
    return torch.einsum("ij,njc->nic", wigner, features.reshape(n, -1, channels)).reshape(n, -1)


def _contraction(correlation: int, irreps_out: str, channels: int = 3, num_species: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    irreps_in = o3.Irreps([(channels, ir) for _, ir in o3.Irreps(A_IRREPS)])
    irreps_out = o3.Irreps([(channels, ir) for _, ir in o3.Irreps(irreps_out)])
    return SymmetricContraction(irreps_in, irreps_out, correlation, num_species).to(torch.float64)


@pytest.mark.parametrize("correlation", [1, 2, 3])
@pytest.mark.parametrize("irreps_out", ["0e", "0e+1o"])
def test_contraction_is_o3_equivariant(correlation, irreps_out):
    channels, n = 3, 11
    contraction = _contraction(correlation, irreps_out, channels)
    generator = torch.Generator().manual_seed(1)
    atomic_basis = torch.randn(n, 16 * channels, dtype=torch.float64, generator=generator)
    species = torch.randint(0, 3, (n,), generator=generator)
    rotation = _rotation(correlation)
    out = contraction(atomic_basis, species)
    assert out.abs().max() > 1e-3

    exact_in, exact_out = _wigner_from_harmonics(A_IRREPS, rotation), _wigner_from_harmonics(irreps_out, rotation)
    rotated = contraction(_apply(exact_in, atomic_basis, channels), species)
    torch.testing.assert_close(rotated, _apply(exact_out, out, channels), rtol=1e-10, atol=1e-10)

    # the same with e3nn's D_from_matrix, to its float64 accuracy (~1e-7)
    e3nn_in, e3nn_out = o3.Irreps(A_IRREPS).D_from_matrix(rotation), o3.Irreps(irreps_out).D_from_matrix(rotation)
    rotated = contraction(_apply(e3nn_in, atomic_basis, channels), species)
    torch.testing.assert_close(rotated, _apply(e3nn_out, out, channels), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_contraction_matches_dense_evaluation_of_the_basis(correlation):
    """B_L[c] = Σ_ν Σ_k w[s, k, c] U_k(A_c, ..., A_c), evaluated with the full [D]^ν tensors."""
    channels, n = 2, 5
    contraction = _contraction(correlation, "0e+1o", channels)
    generator = torch.Generator().manual_seed(2)
    atomic_basis = torch.randn(n, 16 * channels, dtype=torch.float64, generator=generator)
    species = torch.tensor([2, 0, 1, 2, 0])
    x = atomic_basis.reshape(n, 16, channels)
    expected = []
    for ir in ["0e", "1o"]:
        total = torch.zeros(n, o3.Irrep(ir).dim, channels, dtype=torch.float64)
        for nu in range(1, correlation + 1):
            basis = symmetric_coupling_basis(A_IRREPS, nu, ir)  # [P, M, D^nu]
            weights = contraction.weights[f"correlation{nu}_{ir}"].detach()[species]  # [n, P, C]
            letters = "ijk"[:nu]
            operands = [x] * nu
            values = torch.einsum(f"pm{letters}," + ",".join(f"n{l}c" for l in letters) + "->npmc", basis, *operands)
            total = total + torch.einsum("npmc,npc->nmc", values, weights)
        expected.append(total)
    expected = torch.cat(expected, dim=1).reshape(n, -1)
    torch.testing.assert_close(contraction(atomic_basis, species), expected, rtol=1e-10, atol=1e-10)


def test_basis_is_symmetric_orthogonal_and_spans_reduced_tensor_products():
    """Same space as e3nn's ReducedTensorProducts with the fully symmetric formula (float32 there)."""
    for formula, nu, irreps in [("ij=ji", 2, A_IRREPS), ("ijk=jik=ikj", 3, "0e+1o")]:
        reduced = o3.ReducedTensorProducts(formula, filter_ir_out=["0e", "1o"], i=irreps)
        start = 0
        for mul, ir in reduced.irreps_out:
            ours = symmetric_coupling_basis(irreps, nu, ir)
            assert ours.shape[0] == mul, (
                f"{ir} at correlation {nu}: {ours.shape[0]} basis maps, ReducedTensorProducts has {mul}"
            )
            for perm in itertools.permutations(range(2, 2 + nu)):
                torch.testing.assert_close(ours.permute(0, 1, *perm), ours, rtol=0, atol=1e-12)
            flat = ours.reshape(mul, ir.dim, -1).transpose(0, 1).reshape(ir.dim * mul, -1)  # rows per m
            gram = ours.reshape(mul, -1) @ ours.reshape(mul, -1).T
            torch.testing.assert_close(gram, ir.dim * torch.eye(mul, dtype=torch.float64), rtol=0, atol=1e-10)
            theirs = reduced.change_of_basis[start : start + mul * ir.dim].to(torch.float64).reshape(mul * ir.dim, -1)
            start += mul * ir.dim
            # every ReducedTensorProducts map lies in our span (per output component m)
            ours_m = ours.reshape(mul, ir.dim, -1)
            theirs_m = theirs.reshape(mul, ir.dim, -1)
            for m in range(ir.dim):
                q, _ = torch.linalg.qr(ours_m[:, m].T)
                residual = theirs_m[:, m].T - q @ (q.T @ theirs_m[:, m].T)
                assert residual.abs().max() < 1e-5, f"{ir} at correlation {nu}, component {m}"
            assert flat.shape[0] == theirs.shape[0]


def test_correlation_one_is_a_species_linear_map_of_matching_irreps():
    channels, n = 4, 6
    contraction = _contraction(1, "0e+1o", channels)
    atomic_basis = torch.randn(n, 16 * channels, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    species = torch.tensor([0, 1, 2, 0, 1, 2])
    x = atomic_basis.reshape(n, 16, channels)
    w_scalar = contraction.weights["correlation1_0e"].detach()[species, 0]  # [n, C]
    w_vector = contraction.weights["correlation1_1o"].detach()[species, 0]
    expected = torch.cat([x[:, 0:1] * w_scalar[:, None], x[:, 1:4] * w_vector[:, None]], dim=1).reshape(n, -1)
    torch.testing.assert_close(contraction(atomic_basis, species), expected, rtol=1e-12, atol=1e-12)


def test_weights_act_per_species():
    channels = 3
    contraction = _contraction(3, "0e+1o", channels)
    atomic_basis = torch.randn(1, 16 * channels, dtype=torch.float64).repeat(3, 1)
    species = torch.tensor([0, 1, 2])
    out = contraction(atomic_basis, species)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    with torch.no_grad():
        for weight in contraction.weights.values():
            weight[1].mul_(2.0)
    changed = contraction(atomic_basis, species)
    torch.testing.assert_close(changed[[0, 2]], out[[0, 2]], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(changed[1], out[1])


def test_unreachable_output_irrep_is_rejected():
    with pytest.raises(ValueError, match="no symmetric coupling"):
        SymmetricContraction("4x0e", "4x1o", 3, 2)
    with pytest.raises(ValueError, match="multiplicity"):
        SymmetricContraction("4x0e+4x1o", "8x0e", 2, 2)


def test_atoms_give_the_same_product_whichever_other_species_share_the_batch():
    """Only the species present are contracted with the basis: an atom's output and its weight gradients
    do not depend on which other species are in the batch, and absent species get zero gradients."""
    torch.manual_seed(3)
    contraction = SymmetricContraction("4x0e+4x1o+4x2e", "4x0e+4x1o", 3, num_species=6).double()
    basis = torch.randn(5, contraction.irreps_in.dim, dtype=torch.float64)
    few = torch.tensor([4, 1, 4, 1, 1])
    alone = contraction(basis, few)
    everyone = torch.cat([basis, torch.randn(6, basis.shape[1], dtype=torch.float64)])
    together = contraction(everyone, torch.cat([few, torch.arange(6)]))[:5]
    torch.testing.assert_close(alone, together, rtol=1e-12, atol=1e-12)
    alone.square().sum().backward()
    for name, weight in contraction.weights.items():
        absent = weight.grad[[0, 2, 3, 5]]
        assert torch.equal(absent, torch.zeros_like(absent)), name
        assert weight.grad[[1, 4]].abs().sum() > 0, name
