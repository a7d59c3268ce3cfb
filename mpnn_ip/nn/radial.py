"""Radial functions of the edge length, for every model family: bases and cutoff functions.

All take ``lengths: [n_edges]`` in Å. Bases return ``[n_edges, num_basis]``, cutoff functions
``[n_edges]`` (1 at r = 0, exactly 0 from ``r_max`` on).

- :class:`BesselBasis` (NequIP, MACE) and :class:`GaussianBasis` (SchNet; :func:`gaussians` is its
  formula, also SOAP's radial functions);
- :class:`PolynomialCutoff` (NequIP, MACE, ZBL; ``p`` continuous derivatives at r_max) and
  :func:`cosine_cutoff` (Behler's, for SchNet, BPNN and SOAP);
- :class:`RadialEmbedding`: Bessel basis times polynomial cutoff, the input of the radial MLPs.
"""

from __future__ import annotations

import math

import torch


class BesselBasis(torch.nn.Module):
    """sqrt(2/r_max) sin(n π r / r_max) / r for n = 1..num_basis.

    Args:
        r_max: cutoff (Å).
        num_basis: number of Bessel functions.
        trainable: learn the frequencies nπ/r_max.
    Input lengths [E] (Å) -> [E, num_basis].
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False):
        super().__init__()
        self.r_max = float(r_max)
        self.num_basis = int(num_basis)
        frequencies = math.pi / self.r_max * torch.arange(1, self.num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.frequencies = torch.nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)
        self.prefactor = math.sqrt(2.0 / self.r_max)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        r = lengths.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies * r) / r


def gaussians(lengths: torch.Tensor, centres: torch.Tensor, width: float) -> torch.Tensor:
    """``exp(-(r - μ_k)² / (2 w²))``: ``lengths [n]`` Å, ``centres [K]`` Å (cast to the lengths' dtype), width w Å -> ``[n, K]``."""
    return torch.exp(-0.5 * ((lengths.unsqueeze(-1) - centres.to(lengths.dtype)) / width) ** 2)


class GaussianBasis(torch.nn.Module):
    """:func:`gaussians` with ``num_basis`` centres μ_k evenly in [0, r_max] and w their spacing (SchNet).

    ``lengths: [n_edges]`` Å -> ``[n_edges, num_basis]``.
    """

    def __init__(self, r_max: float, num_basis: int = 50):
        super().__init__()
        if num_basis < 2:
            raise ValueError(f"GaussianBasis needs num_basis >= 2, got {num_basis}")
        centres = torch.linspace(0.0, float(r_max), int(num_basis), dtype=torch.float64)
        self.register_buffer("centres", centres)
        self.width = float(r_max) / (num_basis - 1)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        return gaussians(lengths, self.centres, self.width)


class PolynomialCutoff(torch.nn.Module):
    """Smooth envelope u(r) that is 1 at r = 0 and goes to 0 at r_max with p continuous derivatives.

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / r_max; 0 beyond r_max.
    Input lengths [E] (Å) -> [E].
    """

    def __init__(self, r_max: float, p: float = 6):
        super().__init__()
        self.r_max = float(r_max)
        self.p = float(p)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        x = lengths / self.r_max
        p = self.p
        envelope = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - p * (p + 1.0) / 2.0 * torch.pow(x, p + 2.0)
        )
        return envelope * (x < 1.0)


def cosine_cutoff(lengths: torch.Tensor, r_max: float) -> torch.Tensor:
    """Behler's cutoff ``0.5 (cos(π r / r_max) + 1)`` for r < r_max, else 0; value and slope vanish at r_max.

    ``lengths: [n_edges]`` Å -> ``[n_edges]``.
    """
    inside = lengths < r_max
    safe = torch.where(inside, lengths, torch.zeros_like(lengths))
    return torch.where(inside, 0.5 * (torch.cos(math.pi * safe / r_max) + 1.0), torch.zeros_like(lengths))


class RadialEmbedding(torch.nn.Module):
    """Bessel basis times the cutoff envelope: lengths [E] (Å) -> [E, num_basis], zero beyond r_max."""

    def __init__(self, r_max: float, num_basis: int = 8, cutoff_p: float = 6, trainable: bool = False):
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis, trainable)
        self.cutoff = PolynomialCutoff(r_max, cutoff_p)
        self.num_basis = int(num_basis)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.basis(lengths) * self.cutoff(lengths).unsqueeze(-1)
