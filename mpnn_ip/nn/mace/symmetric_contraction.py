"""Symmetric contraction: MACE's product basis B from the atomic basis A, channel by channel.

For every channel c of an atom, A[:, c] is one copy of the coupling irreps ``V = 0e+1o+2e+3o``
(one component vector of dimension D = 16 for max_ell = 3). The product basis of correlation
order ν is a symmetric polynomial of degree ν in that vector, coupled to an output irrep L:

    B_L[c] = Σ_ν Σ_k w_ν,L[s, k, c] U_ν,L,k(A[:, c], ..., A[:, c])

with U_ν,L,k an orthonormal basis of the *symmetric* equivariant maps Sym^ν(V) -> L and
species-dependent weights w (Batatia et al., NeurIPS 2022, eq. 10-11).

How the basis U is built (float64 matters): ``e3nn.o3.ReducedTensorProducts`` with
the formula ``"ijk=jik=ikj"`` on ``0e+1o+2e+3o`` gives the right space (8x0e + 12x1o for ν = 3)
but is slow to build and works in the default dtype only (float32, 1e-8
errors that break float64 equivariance checks at 1e-10). Here the same space is spanned
exactly in float64 from e3nn's Clebsch-Gordan coefficients (``o3.wigner_3j``): every coupling
path ((l1 ⊗ l2) -> l12) ⊗ l3 -> L is built, symmetrised over the permutations of its ν factors,
and an orthonormal basis of their span is taken from their Gram matrix (faster to build, cached
per process; build times: docs/performance.md, "Why the defaults are what they are",
Symmetric-contraction basis). tests/test_symmetric_contraction.py
checks that the dimensions and spans agree with ReducedTensorProducts.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from e3nn import o3

from mpnn_ip.nn.constants import DtypeConstants
from mpnn_ip.nn.mace.species_groups import SpeciesGroups
from mpnn_ip.nn.tracing import is_tracing


def _irrep_slices(irreps: o3.Irreps) -> list[tuple[o3.Irrep, int, int]]:
    """(irrep, start, stop) of every irrep of a multiplicity-one ``irreps`` in its component vector."""
    out, start = [], 0
    for mul, ir in irreps:
        for _ in range(mul):
            out.append((ir, start, start + ir.dim))
            start += ir.dim
    return out


def _coupling_paths(irreps: o3.Irreps, correlation: int, ir_out: o3.Irrep) -> list[torch.Tensor]:
    """All iterated Clebsch-Gordan couplings V^⊗ν -> ir_out, each ``[ir_out.dim, D, ..., D]`` (ν factors)."""
    slices, dim = _irrep_slices(irreps), irreps.dim
    level: dict[o3.Irrep, list[torch.Tensor]] = {}
    for ir, start, stop in slices:
        embedding = torch.zeros(ir.dim, dim, dtype=torch.float64)
        embedding[:, start:stop] = torch.eye(ir.dim, dtype=torch.float64)
        level.setdefault(ir, []).append(embedding)
    for nu in range(2, correlation + 1):
        last = nu == correlation
        new_level: dict[o3.Irrep, list[torch.Tensor]] = {}
        for ir_mid, tensors in level.items():
            for ir_c, start, stop in slices:
                for ir in ir_mid * ir_c:
                    if last and ir != ir_out:
                        continue
                    cg = o3.wigner_3j(ir_mid.l, ir_c.l, ir.l, dtype=torch.float64)
                    for t in tensors:
                        # t [mid, D^(nu-1)] coupled with factor nu (block of ir_c) -> [out, D^(nu-1), D]
                        coupled = torch.zeros((ir.dim,) + t.shape[1:] + (dim,), dtype=torch.float64)
                        coupled[..., start:stop] = torch.einsum("abo,a...->o...b", cg, t)
                        new_level.setdefault(ir, []).append(coupled)
        level = new_level
    return level.get(ir_out, [])


@functools.cache
def _symmetric_coupling_basis(irreps: str, correlation: int, ir_out: str) -> torch.Tensor:
    irreps_o3, ir = o3.Irreps(irreps), o3.Irrep(ir_out)
    paths = _coupling_paths(irreps_o3, correlation, ir)
    shape = (ir.dim,) + (irreps_o3.dim,) * correlation
    if not paths:
        return torch.zeros((0,) + shape, dtype=torch.float64)
    permutations = list(itertools.permutations(range(1, correlation + 1)))
    symmetric = [sum(t.permute(0, *p) for p in permutations) / len(permutations) for t in paths]
    stacked = torch.stack(symmetric).reshape(len(symmetric), -1)
    # orthonormal basis of the span from the small Gram matrix (faster than an SVD of `stacked`)
    eigenvalues, eigenvectors = torch.linalg.eigh(stacked @ stacked.T)
    keep = torch.flip(torch.nonzero(eigenvalues > 1e-9 * max(float(eigenvalues.max()), 1.0)).flatten(), [0])
    basis = (eigenvectors[:, keep].T @ stacked) / eigenvalues[keep].sqrt().unsqueeze(-1)
    # unit norm per output component: each basis map has Frobenius norm sqrt(2L+1)
    return (basis * math.sqrt(ir.dim)).reshape((len(keep),) + shape)


def symmetric_coupling_basis(irreps, correlation: int, ir_out) -> torch.Tensor:
    """Orthogonal basis of the symmetric equivariant maps Sym^ν(V) -> ``ir_out``, float64.

    Args:
        irreps: the coupling irreps V, multiplicity one each (e.g. ``"0e+1o+2e+3o"``).
        correlation: ν, the polynomial degree (number of factors).
        ir_out: output irrep L.
    Returns: ``[P, 2L+1, D, ..., D]`` (ν axes of size D = V.dim), symmetric in the last ν axes,
    each basis map with Frobenius norm sqrt(2L+1); P = 0 when no symmetric coupling exists.
    Cached per process (keyed by the irreps strings).
    """
    return _symmetric_coupling_basis(str(o3.Irreps(irreps)), int(correlation), str(o3.Irrep(ir_out))).clone()


def _equal_multiplicity(irreps: o3.Irreps, who: str) -> int:
    muls = {mul for mul, _ in irreps}
    if len(muls) != 1 or len(irreps) != len({ir for _, ir in irreps}):
        raise ValueError(
            f"{who}: irreps {irreps} must list each irrep once with one common multiplicity (e.g. '64x0e+64x1o')"
        )
    return muls.pop()


class SymmetricContraction(torch.nn.Module):
    """Species-weighted symmetric tensor powers of the atomic basis, up to ``correlation`` (ν <= 3).

    Evaluated as ``B = Σ_i A_i (W1_i + Σ_{j<=k} W3_{i,jk} A_j A_k) + Σ_{j<=k} W2_jk A_j A_k`` per
    atom and channel, with the W's contracted from the basis and the species' weights first
    (MACE's recursive ``Contraction`` order: highest order with the weights, then multiply by A
    and reduce). The quadratic monomials ``A_j A_k`` (j <= k: 136 for D = 16) enter one batched
    matmul per species, so memory stays O(n_atoms x C x D^2) and no [D, D, D] tensor per atom
    is formed.

    Args:
        irreps_in: atomic basis A, ``C x (0e+1o+2e+3o...)`` (one multiplicity C for all irreps).
        irreps_out: product basis irreps, same C, e.g. ``"64x0e+64x1o"``.
        correlation: ν, 1 to 3.
        num_species: S; the weights ``w[s, k, c]`` depend on the species of the atom.
    Layout "channels last": features ``[n_atoms, irreps.dim]`` stored per irrep as
    ``[2l+1, C]`` blocks, i.e. ``[n_atoms, D, C]``.
    Forward: ``atomic_basis [n_atoms, D_in * C]``, ``species [n_atoms]`` ->
    ``[n_atoms, D_out * C]``.
    """

    def __init__(self, irreps_in, irreps_out, correlation: int, num_species: int):
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.correlation = int(correlation)
        self.num_species = int(num_species)
        if not 1 <= self.correlation <= 3:
            raise ValueError(f"SymmetricContraction: correlation must be 1, 2 or 3, got {correlation}")
        channels = _equal_multiplicity(self.irreps_in, "SymmetricContraction irreps_in")
        if _equal_multiplicity(self.irreps_out, "SymmetricContraction irreps_out") != channels:
            raise ValueError(
                f"SymmetricContraction: irreps_out {self.irreps_out} must have the multiplicity {channels} of irreps_in {self.irreps_in}"
            )
        self.num_channels = channels
        self.coupling_irreps = o3.Irreps([(1, ir) for _, ir in self.irreps_in])
        # D as an int: forward must not touch e3nn Irrep objects (dynamo's guards call len() on them,
        # which e3nn's Irrep refuses, and torch.compile then fails)
        self.dim_coupling = dim = self.coupling_irreps.dim
        self.dim_out = sum(ir.dim for _, ir in self.irreps_out)
        pair_j, pair_k = torch.triu_indices(dim, dim)
        multiplicity = torch.where(pair_j == pair_k, 1.0, 2.0).to(torch.float64)

        self.weights = torch.nn.ParameterDict()
        self._outputs: list[tuple[int, dict[int, str]]] = []  # (2L+1, {nu: weight key}) per output irrep
        constants: dict[str, torch.Tensor] = {}
        for _, ir in self.irreps_out:
            keys = {}
            for nu in range(1, self.correlation + 1):
                basis = symmetric_coupling_basis(self.coupling_irreps, nu, ir)  # [P, M, D^nu]
                if basis.shape[0] == 0:
                    continue
                key = keys[nu] = f"correlation{nu}_{ir}"
                if nu == 1:
                    constants[key] = basis.permute(2, 1, 0)  # [i, M, P]
                elif nu == 2:
                    constants[key] = (basis[:, :, pair_j, pair_k] * multiplicity).permute(2, 1, 0)  # [jk, M, P]
                else:
                    pairs = basis[:, :, :, pair_j, pair_k] * multiplicity  # [P, M, i, jk]
                    constants[key] = pairs.permute(3, 2, 1, 0)  # [jk, i, M, P]
                # MACE's initialisation: N(0, 1) / number of basis elements
                self.weights[key] = torch.nn.Parameter(
                    torch.randn(self.num_species, basis.shape[0], channels) / basis.shape[0]
                )
            if not keys:
                raise ValueError(
                    f"SymmetricContraction: no symmetric coupling of {self.coupling_irreps} up to correlation "
                    f"{self.correlation} gives output irrep {ir}"
                )
            self._outputs.append((ir.dim, keys))
        constants["pair_j"], constants["pair_k"] = pair_j, pair_k
        self.constants = DtypeConstants(constants)

    def _contracted_weights(self, dtype, device, present: torch.Tensor | None = None):
        """Basis x species weights: linear ``[C, S, D, M]`` and pair ``[C, S, J, cols]`` (None for ν = 1).

        ``cols`` = D*M (cubic, ν = 3) + M (quadratic); J = D(D+1)/2 monomials A_j A_k, j <= k.
        ``present``: the species to contract, sorted (S = their number); None: all species.
        """
        c = self.constants.get(dtype, device)
        S = self.num_species if present is None else int(present.shape[0])
        C, D = self.num_channels, self.dim_coupling
        J = c["pair_j"].shape[0]
        linear, quadratic, cubic = [], [], []
        for width, keys in self._outputs:

            def part(nu, equation, shape):
                if nu in keys:
                    weights = self.weights[keys[nu]]
                    weights = weights if present is None else weights.index_select(0, present)
                    return torch.einsum(equation, c[keys[nu]], weights)
                return torch.zeros(shape + (width,), dtype=dtype, device=device)

            linear.append(part(1, "imp,spc->csim", (C, S, D)))
            if self.correlation >= 2:
                quadratic.append(part(2, "jmp,spc->csjm", (C, S, J)))
            if self.correlation >= 3:
                cubic.append(part(3, "jimp,spc->csjim", (C, S, J, D)))
        linear = torch.cat(linear, dim=-1)
        if self.correlation == 1:
            return linear, None
        quadratic = torch.cat(quadratic, dim=-1)
        if self.correlation == 2:
            return linear, quadratic
        cubic = torch.cat(cubic, dim=-1)
        return linear, torch.cat([cubic.reshape(C, S, J, D * self.dim_out), quadratic], dim=-1)

    def floats_per_atom(self) -> int:
        """Estimated floats per atom autograd keeps: the sorted basis, the gathered linear
        coefficients and their product with it (C·D·M each), and for ν >= 2 the monomials (C·J)
        and their contraction (C·(D·M + M))."""
        C, D, M = self.num_channels, self.dim_coupling, self.dim_out
        floats = C * D + 2 * C * D * M + C * M
        if self.correlation >= 2:
            floats += C * (D * (D + 1) // 2) + C * (D * M + M)
        return floats

    def forward(self, atomic_basis: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        n_atoms = atomic_basis.shape[0]
        C, D, M = self.num_channels, self.dim_coupling, self.dim_out
        # contract the weights of the species present only: a model of 89 elements on a Cu cell would
        # otherwise contract (and differentiate) 89 species' weights per call
        present = None
        if self.num_species > 1 and not is_tracing():
            present = torch.unique(species)
            if present.shape[0] == self.num_species:
                present = None
        if present is not None:
            species = torch.searchsorted(present, species)
        linear, pair = self._contracted_weights(atomic_basis.dtype, atomic_basis.device, present)
        groups = SpeciesGroups(species, self.num_species if present is None else int(present.shape[0]))
        x = groups.sort(atomic_basis.reshape(n_atoms, D, C)).permute(2, 0, 1)  # [C, N, D], atoms by species
        coefficient = linear[:, groups.sorted_species]  # [C, N, D, M]
        quadratic = None
        if pair is not None:
            c = self.constants.get(atomic_basis.dtype, atomic_basis.device)
            # index_select, not x[..., index]: its backward is an index_add, not an accumulating index_put
            monomials = x.index_select(-1, c["pair_j"]) * x.index_select(-1, c["pair_k"])  # [C, N, J]
            contracted = groups.batched_matmul(monomials, pair)  # [C, N, cols]
            quadratic = contracted[..., D * M :] if self.correlation == 3 else contracted
            if self.correlation == 3:
                coefficient = coefficient + contracted[..., : D * M].reshape(C, n_atoms, D, M)
        product = (coefficient * x.unsqueeze(-1)).sum(2)  # [C, N, M]
        if quadratic is not None:
            product = product + quadratic
        return groups.unsort(product.permute(1, 2, 0)).reshape(n_atoms, M * C)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} -> {self.irreps_out}, correlation={self.correlation}, num_species={self.num_species}"
