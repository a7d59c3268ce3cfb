"""SOAP-like power spectrum (Bartók, Kondor & Csányi, PRB 87, 184115, 2013), in torch.

The neighbour density of atom i, one channel per neighbour species s, is expanded as
``c_{s n l m}(i) = Σ_{j ∈ s} g_n(r_ij) fc(r_ij) Y_lm(r̂_ij)`` with Gaussian radial functions
``g_n(r) = exp(-(r - r_n)² / (2 σ_atom²))`` (centres ``r_n = n r_max / n_max``, σ_atom the
smearing width, Å), Behler's cosine cutoff fc and e3nn's real spherical harmonics
(component normalisation). The centre atom adds ``central_weight · g_n(0)`` to the l = 0
coefficients of its own species channel, so the descriptor of an atom with no neighbours is
not zero and the normalisation below stays smooth when the last neighbour leaves the cutoff.

Power spectrum: ``p_{(s n)(s' n') l} = Σ_m c_{s n l m} c_{s' n' l m}`` for (s n) <= (s' n')
(off-diagonal entries × √2, so that the dot product equals that of the full symmetric
spectrum), then normalised to unit length. Length: ``S n_max (S n_max + 1) / 2 · (l_max + 1)``.
"""

from __future__ import annotations

import torch
from e3nn import o3

from mpnn_ip.nn.radial import cosine_cutoff, gaussians


class PowerSpectrum(torch.nn.Module):
    """Normalised, element-resolved SOAP-like power spectrum.

    Args:
        num_species: S, neighbour species channels.
        r_max: cutoff (Å).
        n_max: radial functions per species.
        l_max: largest angular momentum.
        sigma_atom: Gaussian smearing width of each neighbour (Å).
        central_weight: weight of the centre atom's own Gaussian (> 0).
    Forward: ``species [n_atoms]`` (index), ``edge_index [2, n_edges]``, ``edge_vectors [n_edges, 3]`` Å
    -> ``[n_atoms, num_features]`` unit vectors.
    """

    def __init__(
        self,
        num_species: int,
        r_max: float,
        n_max: int = 6,
        l_max: int = 4,
        sigma_atom: float = 0.5,
        central_weight: float = 1.0,
    ):
        super().__init__()
        if central_weight <= 0:
            raise ValueError(
                f"PowerSpectrum: central_weight must be > 0 (got {central_weight}) to keep the normalisation smooth"
            )
        self.num_species, self.r_max, self.n_max, self.l_max = int(num_species), float(r_max), int(n_max), int(l_max)
        self.sigma_atom, self.central_weight = float(sigma_atom), float(central_weight)
        self.register_buffer("centres", torch.arange(self.n_max, dtype=torch.float64) * self.r_max / self.n_max)
        channels = self.num_species * self.n_max
        upper = torch.triu_indices(channels, channels)
        self.register_buffer("upper", upper, persistent=False)
        weight = torch.where(upper[0] == upper[1], 1.0, 2.0**0.5).to(torch.float64)
        self.register_buffer("pair_weight", weight)
        self.num_features = upper.shape[1] * (self.l_max + 1)

    def radial(self, lengths: torch.Tensor) -> torch.Tensor:
        """``[n] Å -> [n, n_max]`` Gaussians g_n (without cutoff)."""
        return gaussians(lengths, self.centres, self.sigma_atom)

    def expansion(self, species, edge_index, edge_vectors) -> torch.Tensor:
        """Density coefficients ``[n_atoms, S n_max, (l_max + 1)²]``."""
        num_atoms, dtype = species.shape[0], edge_vectors.dtype
        lengths = torch.linalg.norm(edge_vectors, dim=-1)
        radial = self.radial(lengths) * cosine_cutoff(lengths, self.r_max).unsqueeze(-1)
        harmonics = o3.spherical_harmonics(
            list(range(self.l_max + 1)), edge_vectors, normalize=True, normalization="component"
        )
        per_edge = radial.unsqueeze(-1) * harmonics.unsqueeze(1)
        index = edge_index[0] * self.num_species + species[edge_index[1]]
        # index_add rather than scatter_add: its forward-mode derivative (used by the GAP fit) is much faster
        # (measurement: docs/performance.md, "Why the defaults are what they are", SOAP index_add).
        coefficients = per_edge.new_zeros((num_atoms * self.num_species, *per_edge.shape[1:])).index_add(
            0, index, per_edge
        )
        coefficients = coefficients.reshape(num_atoms, self.num_species, self.n_max, -1)
        central = self.central_weight * self.radial(torch.zeros(1, dtype=dtype, device=species.device))[0]
        own = torch.nn.functional.one_hot(species, self.num_species).to(dtype)
        l0 = own.unsqueeze(-1) * central
        coefficients = torch.cat([coefficients[..., :1] + l0.unsqueeze(-1), coefficients[..., 1:]], dim=-1)
        return coefficients.reshape(num_atoms, self.num_species * self.n_max, -1)

    def forward(self, species, edge_index, edge_vectors):
        coefficients = self.expansion(species, edge_index, edge_vectors)
        blocks = []
        for l in range(self.l_max + 1):
            c_l = coefficients[..., l * l : (l + 1) * (l + 1)]
            full = torch.einsum("nam,nbm->nab", c_l, c_l)
            blocks.append(full[:, self.upper[0], self.upper[1]] * self.pair_weight.to(c_l.dtype))
        spectrum = torch.cat(blocks, dim=-1)
        return spectrum / torch.linalg.norm(spectrum, dim=-1, keepdim=True)
