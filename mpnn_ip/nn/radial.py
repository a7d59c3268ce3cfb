"""Radial functions of edge length: Bessel basis and the polynomial cutoff envelope."""

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


class RadialEmbedding(torch.nn.Module):
    """Bessel basis times the cutoff envelope: lengths [E] (Å) -> [E, num_basis], zero beyond r_max."""

    def __init__(self, r_max: float, num_basis: int = 8, cutoff_p: float = 6, trainable: bool = False):
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis, trainable)
        self.cutoff = PolynomialCutoff(r_max, cutoff_p)
        self.num_basis = int(num_basis)

    def forward(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.basis(lengths) * self.cutoff(lengths).unsqueeze(-1)
