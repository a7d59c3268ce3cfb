"""GAP: SOAP-like descriptors with sparse Gaussian-process regression (Bartók et al., PRL 104, 136403, 2010).

Atomic energy ``e_i = Σ_m α_m k(x_i, x_m) + shift[s_i]`` over sparse (representative) training
environments x_m of the same centre species; x is the normalised power spectrum
(:class:`mpnn_ip.nn.descriptors.soap.PowerSpectrum`). Base kernel ``k0(x, y) = δ² (x·y)^ζ``; the model uses
the kernel of the GP conditioned to vanish at the isolated atom o_s of the species,
``k(x, y) = k0(x, y) - k0(x, o_s) - k0(o_s, y) + k0(o_s, o_s)`` (a valid covariance: that of
f(x) - f(o_s)), so an isolated atom gets exactly ``E0 + shift``.

The weights are fitted in closed form by :meth:`GAP.prepare` (:func:`mpnn_ip.models.gap_fit.fit_gap`;
the class attribute ``fitted_in_closed_form`` tells the training code), never by gradient descent.
Before fitting, the sparse points and weights are seeded random numbers, so that an unfitted
model is a smooth, non-trivial function (like an untrained network).

Uncertainty: the projected-process (DTC) predictive variance of the latent function,
``σ²(x) = k(x, x) - k_xM K_MM⁻¹ k_Mx + φ_x Σ φ_xᵀ`` with ``φ_x = [k_xM, species one-hot]`` and
``Σ = (K_MM ⊕ I/s² + Φ_N Λ⁻¹ Φ_Nᵀ)⁻¹`` the joint posterior covariance of α and the per-species
shifts (prior std s, :data:`mpnn_ip.models.gap_fit.SHIFT_PRIOR_STD`), per atom
(``node_energy_variance``, eV²) and for the frame's total energy (``energy_uncertainty``, eV,
a standard deviation; kernels summed over the frame's atom pairs, φ over its atoms). Stored
as square roots for stability: ``kmm_cholesky`` L (K_MM = L Lᵀ) and ``posterior_root`` R⁻¹
(Σ = R⁻¹ R⁻ᵀ). Before fitting they are I and 0 and the variance is not meaningful.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch_geometric.utils import scatter, to_dense_batch

from mpnn_ip.models.base import Potential
from mpnn_ip.nn import PowerSpectrum

SPARSE_METHODS = ("cur", "fps")


class GAP(Potential):
    """Sparse-GP potential on a SOAP-like power spectrum.

    Args:
        species: chemical symbols or atomic numbers.
        r_max: cutoff (Å).
        n_max, l_max: radial functions per species and largest angular momentum of the descriptor.
        sigma_atom: Gaussian smearing of the neighbour density (Å).
        zeta: kernel exponent ζ (integer).
        delta: prior standard deviation scale δ of the atomic energy (eV).
        num_sparse: sparse points per species (fewer are used when the data has fewer environments).
        sparse_method: ``"cur"`` (largest leverage scores) or ``"fps"`` (farthest-point sampling).
        sigma_energy: expected error of energies (eV/atom; a frame of n atoms gets σ·√n).
        sigma_forces: expected error of force components (eV/Å).
        jitter: added to the diagonal of K_MM (times δ²) for a stable Cholesky.
        central_weight: weight of the centre atom in the neighbour density.
        e0s: per-species isolated-atom energies (eV), subtracted before the fit.
        energy_shift: eV, initial per-species shift (the fit replaces it).
    """

    fitted_in_closed_form = True
    #: kernels of near-identical environments and the Cholesky solve of the fit need float64: in float32 the
    #: energies are too noisy for their own forces (measured in docs/performance.md)
    default_dtype = torch.float64
    extra_outputs = {"node_energy_variance": ("atom", "eV^2"), "energy_uncertainty": ("frame", "eV")}

    def __init__(
        self,
        species: Sequence[int | str],
        r_max: float = 5.0,
        n_max: int = 6,
        l_max: int = 4,
        sigma_atom: float = 0.5,
        zeta: int = 2,
        delta: float = 1.0,
        num_sparse: int = 200,
        sparse_method: str = "cur",
        sigma_energy: float = 0.001,
        sigma_forces: float = 0.05,
        jitter: float = 1e-8,
        central_weight: float = 1.0,
        e0s: Mapping | None = None,
        energy_shift: float = 0.0,
    ):
        super().__init__(species, r_max, e0s)
        if sparse_method not in SPARSE_METHODS:
            raise ValueError(f"GAP: unknown sparse_method {sparse_method!r}; choose one of {SPARSE_METHODS}")
        if int(zeta) != zeta or zeta < 1:
            raise ValueError(f"GAP: zeta must be a positive integer, got {zeta}")
        self.zeta, self.delta = int(zeta), float(delta)
        self.num_sparse, self.sparse_method, self.jitter = int(num_sparse), sparse_method, float(jitter)
        self.sigma_energy, self.sigma_forces = float(sigma_energy), float(sigma_forces)
        self.descriptor = PowerSpectrum(self.num_species, self.r_max, n_max, l_max, sigma_atom, central_weight)
        size = self.num_species * int(num_sparse)
        points = torch.randn(size, self.descriptor.num_features)
        self.register_buffer("sparse_points", points / torch.linalg.norm(points, dim=-1, keepdim=True))
        self.register_buffer("sparse_species", torch.arange(self.num_species).repeat_interleave(int(num_sparse)))
        self.register_buffer("sparse_active", torch.ones(size, dtype=torch.bool))
        self.register_buffer("alpha", 0.1 * torch.randn(size))
        self.register_buffer("species_shift", torch.full((self.num_species,), float(energy_shift)))
        self.register_buffer("kmm_cholesky", torch.eye(size))
        self.register_buffer("posterior_root", torch.zeros(size + self.num_species, size + self.num_species))

    def isolated_descriptors(self) -> torch.Tensor:
        """``[S, D]`` descriptor o_s of an atom of each species with no neighbours."""
        species = torch.arange(self.num_species, device=self.sparse_points.device)
        no_edges = torch.zeros(2, 0, dtype=torch.long, device=species.device)
        return self.descriptor(
            species, no_edges, torch.zeros(0, 3, dtype=self.sparse_points.dtype, device=species.device)
        )

    def _base_kernel(self, dots: torch.Tensor) -> torch.Tensor:
        return self.delta**2 * dots**self.zeta

    def prepare(self, graphs: list) -> dict:
        """Fit in closed form on the training graphs; returns the fit's timings, sizes and train residuals."""
        from mpnn_ip.models.gap_fit import fit_gap

        return fit_gap(self, graphs)

    def kernel(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """``k(x_i, x_m)`` for descriptors ``x [n, D]`` of centre species ``[n]`` and the sparse points -> ``[n, M]``.

        Zero between different centre species and for inactive sparse points.
        """
        isolated = self.isolated_descriptors().to(x.dtype)
        points = self.sparse_points.to(x.dtype)
        to_isolated = self._base_kernel((x * isolated[species]).sum(-1))
        points_to_isolated = self._base_kernel((points * isolated[self.sparse_species]).sum(-1))
        k = self._base_kernel(x @ points.T) - to_isolated.unsqueeze(-1) - points_to_isolated + self.delta**2
        same = (species.unsqueeze(-1) == self.sparse_species) & self.sparse_active
        return torch.where(same, k, torch.zeros_like(k))

    def node_energies(self, species, edge_index, edge_vectors, batch, num_graphs):
        return self.energies_from_descriptors(self.descriptor(species, edge_index, edge_vectors), species)

    def energies_from_descriptors(self, x: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """Atomic energies [n] (eV, without E0) of descriptors ``x [n, D]`` of centre species ``[n]``."""
        return self.kernel(x, species) @ self.alpha.to(x.dtype) + self.species_shift.to(x.dtype)[species]

    def atomic_outputs(self, graph) -> dict[str, torch.Tensor]:
        """Energies plus ``node_energy_variance [N]`` (eV²) and ``energy_uncertainty [B]`` (eV, std)."""
        species = graph["species"]
        x = self.descriptor(species, graph["edge_index"], graph["edge_vectors"])
        node, frame = self.predictive_variance(x.detach(), species, graph["batch"], graph["num_graphs"])
        return {
            "node_energy": self.energies_from_descriptors(x, species),
            "node_energy_variance": node,
            "energy_uncertainty": frame.sqrt(),
        }

    @torch.no_grad()
    def predictive_variance(self, x, species, batch, num_graphs) -> tuple[torch.Tensor, torch.Tensor]:
        """DTC variance (eV²) of the atomic energies ``[n_atoms]`` and of the frame energies ``[B]``."""
        k = self.kernel(x, species)
        counts = torch.nn.functional.one_hot(species, self.num_species).to(x.dtype)
        cholesky, root = self.kmm_cholesky.to(x.dtype), self.posterior_root.to(x.dtype)

        def nystrom(rows):  # k K_MM⁻¹ kᵀ per row
            return torch.linalg.solve_triangular(cholesky, rows.T, upper=False).pow(2).sum(0)

        def posterior(rows):  # φ Σ φᵀ per row
            return (rows @ root).pow(2).sum(-1)

        isolated = self.isolated_descriptors().to(x.dtype)
        to_isolated = self._base_kernel((x * isolated[species]).sum(-1))
        prior = self._base_kernel((x * x).sum(-1)) - 2 * to_isolated + self.delta**2
        node = prior - nystrom(k) + posterior(torch.cat([k, counts], dim=-1))

        dense, valid = to_dense_batch(x, batch, batch_size=num_graphs)
        dense_species, _ = to_dense_batch(species, batch, fill_value=-1, batch_size=num_graphs)
        dense_to_isolated, _ = to_dense_batch(to_isolated, batch, batch_size=num_graphs)
        pair = self._base_kernel(torch.bmm(dense, dense.transpose(1, 2)))
        pair = pair - dense_to_isolated.unsqueeze(-1) - dense_to_isolated.unsqueeze(-2) + self.delta**2
        same = (dense_species.unsqueeze(-1) == dense_species.unsqueeze(-2)) & valid.unsqueeze(-1) & valid.unsqueeze(-2)
        frame_prior = torch.where(same, pair, torch.zeros_like(pair)).sum((1, 2))
        features = scatter(torch.cat([k, counts], dim=-1), batch, dim=0, dim_size=num_graphs, reduce="sum")
        frame = frame_prior - nystrom(features[:, : k.shape[1]]) + posterior(features)
        return node.clamp(min=0), frame.clamp(min=0)
